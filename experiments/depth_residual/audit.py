"""The depth and residual study in the audit: EXP-06 (★R1, Fixup against He + BN).

`check_EXP_06` reads <studies>/depth_residual/results.json and restates the study's own verdict
(`report.claim_exp06`, computed from the stored per-seed accuracies when the study ran), with the
paired-t interval of (Fixup - He + BN) at the deepest depth where Fixup, He + BN and He without
a norm all ran. The lead registers it (experiments/audit/checks/cnn_studies.py).
"""

from __future__ import annotations

from experiments.audit.core import Context, Finding, not_run
from experiments.depth_residual import report

STUDY = "depth_residual"
COMMAND = ("python -m experiments.depth_residual --config=experiments/configs/depth_residual.py "
           "--workdir=checkpoints/depth_residual --config.data.data_dir=../shared/data/mnist")


def check_EXP_06(ctx: Context) -> Finding:
    """EXP-06: Fixup within 0.5 pt of He + BN, and He without a norm unstable or worse."""
    res = ctx.results(STUDY)
    if res is None:
        return not_run(STUDY, COMMAND, ctx)
    if "cells" not in res or "comparisons" not in res:
        return Finding("inconclusive", "-", f"read {ctx.path(STUDY)}", artefact=ctx.path(STUDY),
                       note=f"results.json has no cells / comparisons; rerun: {COMMAND}")
    # Recomputed from the stored cells and comparisons, so a results.json written by an older
    # report gets today's rule.
    claim = report.claim_exp06(res)
    if claim["verdict"] == "not run":
        return Finding("not run", claim["measured"], f"read {ctx.path(STUDY)}",
                       artefact=ctx.path(STUDY), note=f"run: {COMMAND}")
    data = res.get("dataset", {})
    cfg = res.get("config", {})
    model = cfg.get("model", {}) if isinstance(cfg, dict) else {}
    train = cfg.get("train", {}) if isinstance(cfg, dict) else {}
    ran = (f"study depth_residual: CIFAR ResNet-{claim['depth']} (width "
           f"x{model.get('width_multiplier', '?')}) on {data.get('name', '?')} "
           f"({data.get('num_train', '?')} train images, {train.get('num_epochs', '?')} epochs, "
           f"{len(res.get('seeds', []))} paired seeds): Fixup vs He + BN vs He without a norm")
    low, high = claim["ci"]
    return Finding(
        claim["verdict"], claim["measured"], ran, ci=(float(low), float(high)),
        artefact=ctx.path(STUDY),
        note=("Criterion: " + claim["rule"] + " The ledger's proxy was a 20-block residual MLP; "
              "this is the residual CNN itself, at CPU size (not CIFAR-10, not the bottleneck "
              "ResNet-50, short training): experiments/depth_residual's analysis.md says what "
              "that covers."))
