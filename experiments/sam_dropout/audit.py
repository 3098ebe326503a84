"""The audit's study check of EXP-07 (★R2), read from the SAM x dropout study's results.json.

The verdict is the ledger's pass criterion, "the top Hessian eigenvalue (power iteration) is
lower with SAM", re-derived from the stored paired-t intervals by `rows.flatter_verdict`; the
answer to "does SAM reduce the need for dropout?" (`rows.need_verdict`, also re-derived) and the
test accuracies are stated next to it. Foret et al. (2021). Not registered here:
experiments/audit/checks/cnn_studies.py wires it in.
"""

from __future__ import annotations

import math

from experiments.audit.core import Context, Finding, not_run
from experiments.sam_dropout import rows

STUDY_DIR = "sam_dropout"
COMMAND = ("python -m experiments.sam_dropout --config=experiments/configs/sam_dropout.py "
           "--workdir=checkpoints/sam_dropout --config.data.data_dir=../shared/data/mnist")


def _ci(comps, name) -> tuple[float, float]:
    t = comps.get(name, {}).get("inference", {}).get("t")
    return (float(t["low"]), float(t["high"])) if t else (-math.inf, math.inf)


def _text(comps, name, scale, unit) -> str:
    t = comps.get(name, {}).get("inference", {}).get("t")
    if not t:
        return f"{name}: not run"
    return (f"{name} {scale * t['mean']:+.3g}{unit} [{scale * t['low']:+.3g}, "
            f"{scale * t['high']:+.3g}]")


def check_EXP_07(ctx: Context) -> Finding:
    """EXP-07: SAM finds flatter minima (lower λ_max) and may reduce the need for dropout."""
    res = ctx.results(STUDY_DIR)
    if res is None:
        return not_run(STUDY_DIR, COMMAND, ctx)
    comps = res.get("comparisons", {})
    if "lambda: sam - sgd" not in comps:
        return Finding("not run", "-", f"{ctx.path(STUDY_DIR)} has no SAM - SGD comparison",
                       note=f"run: {COMMAND}")
    lam0, lam1 = _ci(comps, "lambda: sam - sgd"), _ci(comps, "lambda: sam_dropout - sgd_dropout")
    flat = rows.flatter_verdict(lam0, lam1)
    need = rows.need_verdict(_ci(comps, "acc: dropout under sgd"), _ci(comps, "acc: interaction"),
                             _ci(comps, "acc: sam - sgd_dropout"))
    n = comps["lambda: sam - sgd"]["inference"].get("n")
    measured = ("λ_max (power), paired, 95 % CI: "
                + "; ".join(_text(comps, k, 1.0, "") for k in
                            ("lambda: sam - sgd", "lambda: sam_dropout - sgd_dropout"))
                + ". Test accuracy, pp: "
                + "; ".join(_text(comps, k, 100.0, "") for k in
                            ("acc: sam - sgd", "acc: dropout under sgd",
                             "acc: dropout under sam", "acc: interaction",
                             "acc: sam - sgd_dropout"))
                + f" ({n} seeds)")
    d = res.get("dataset", {})
    return Finding(
        flat, measured,
        f"experiments.sam_dropout: {res.get('model', '?')} on {d.get('name', '?')} "
        f"({d.get('num_train', '?')} training images), SGD / SAM x dropout, seeds paired",
        ci=lam0, artefact=ctx.path(STUDY_DIR),
        note=("Pass (ledger): λ_max lower with SAM, with and without dropout (both CIs below 0; "
              "either above 0 refutes). \"Reduces the need for dropout\" "
              f"(rows.need_verdict, margin {100 * rows.MARGIN:g} pp): {need}."))
