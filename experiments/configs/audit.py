"""The chapter audit (experiments/audit): every claim of the ledger, checked, into AUDIT.md.

Run:
  python -m experiments.audit --config=experiments/configs/audit.py --workdir=checkpoints/audit
  Regenerate the repository's AUDIT.md (after running the studies into checkpoints/<study>):
  python -m experiments.audit --config=experiments/configs/audit.py --workdir=checkpoints/audit \
      --config.audit_md=AUDIT.md

  Update only some rows of it (e.g. after running one study):
  python -m experiments.audit --config=experiments/configs/audit.py --workdir=checkpoints/audit \
      --config.audit_md=AUDIT.md --config.only=BN-16 --config.update_rows=true

The quick checks take about a minute on a 2-core CPU; study checks read results.json files.
"""

from experiments.audit.main import AuditConfig
from ml_practical import config


def get_config():
    cfg = config.study_defaults(AuditConfig)
    cfg.studies = "checkpoints"      # the directory holding each study's workdir (<study>/results.json)
    cfg.only = ""                    # "" = every claim; or ids / id prefixes: "INIT,BN-05"
    cfg.seed = 0                     # the key of the quick checks' own random draws
    cfg.audit_md = ""                # also write AUDIT.md here (e.g. "AUDIT.md" at the repo root)
    # True: replace only the rows of the claims checked (with `only`) in the existing audit_md,
    # keeping every other row as it was measured, and recount the summary.
    cfg.update_rows = False
    return cfg
