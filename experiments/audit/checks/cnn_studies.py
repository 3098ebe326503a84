"""The normalization, depth and residual studies on CNNs (issue 15) in the audit.

Each study writes `experiments/<study>/audit.py` with one `check_<ID>` per claim it measures.
Where the ledger's claim already has a quick proxy here (a digits MLP in seconds), the study at
the claim's own scale supersedes it once its results.json exists (`Registry.superseded_by`): the
proxy stays a test, and AUDIT.md shows the study. Where the claim was untestable for want of the
library piece (ghost BatchNorm, the ResNet depth study) or read another study, the study's check
replaces it (`Registry.replace_with_study`).

`experiments/lab_cnn` (the lab's table on a CNN) has no row of its own in the ledger (EXP-03 is
the MLP's lab), so it is not registered here; `experiments.lab_cnn.audit.check_lab_cnn` states
its finding for a Context all the same.
"""

from __future__ import annotations

import importlib

from experiments.audit.core import REGISTRY as R

# claim id -> (study directory, its audit module, how the study enters the audit)
STUDIES = {
    "BN-10": ("bn_lr", "supersede"),
    "BN-11": ("batch_norm_batch", "replace"),
    "BN-12": ("bn_init", "supersede"),
    "BN-13": ("bn_placement", "supersede"),
    "BN-14": ("bn_placement", "replace"),
    "BN-16": ("batch_norm_batch", "supersede"),
    "EXP-06": ("depth_residual", "replace"),
    "EXP-07": ("sam_dropout", "replace"),
}


def _wire():
    for claim_id, (study, how) in STUDIES.items():
        module = importlib.import_module(f"experiments.{study}.audit")
        fn = getattr(module, "check_" + claim_id.replace("-", "_"))
        if how == "supersede":
            R.superseded_by(claim_id, study, fn)
        else:
            R.replace_with_study(claim_id, fn)


_wire()
