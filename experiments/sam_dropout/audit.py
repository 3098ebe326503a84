"""The audit's study check of EXP-07 (★R2), read from the SAM x dropout studies' results.json.

Two setups: the CNN (`sam_dropout`, required) and the MLP where dropout helps
(`sam_dropout_mlp`, read when it has run). Per setup, the verdict is the ledger's pass criterion, "the top Hessian eigenvalue (power iteration) is
lower with SAM", re-derived from the stored paired-t intervals by `rows.flatter_verdict`; the
answer to "does SAM reduce the need for dropout?" (`rows.need_verdict`, also re-derived) and the
test accuracies are stated next to it; the setups combine by `rows.combined_verdict`. Foret et
al. (2021). Not registered here:
experiments/audit/checks/cnn_studies.py wires it in.
"""

from __future__ import annotations

import math

from experiments.audit.core import Context, Finding, not_run
from experiments.sam_dropout import rows

STUDY_DIR = "sam_dropout"           # the CNN, dropout before the head
MLP_STUDY_DIR = "sam_dropout_mlp"   # the MLP, dropout after every hidden layer
COMMAND = ("python -m experiments.sam_dropout --config=experiments/configs/sam_dropout.py "
           "--workdir=checkpoints/sam_dropout --config.data.data_dir=../shared/data/mnist")
MLP_COMMAND = ("python -m experiments.sam_dropout --config=experiments/configs/sam_dropout_mlp.py "
               "--workdir=checkpoints/sam_dropout_mlp --config.data.data_dir=../shared/data/mnist")


def _ci(comps, name) -> tuple[float, float]:
    t = comps.get(name, {}).get("inference", {}).get("t")
    return (float(t["low"]), float(t["high"])) if t else (-math.inf, math.inf)


def _text(comps, name, scale, unit) -> str:
    t = comps.get(name, {}).get("inference", {}).get("t")
    if not t:
        return f"{name}: not run"
    return (f"{name} {scale * t['mean']:+.3g}{unit} [{scale * t['low']:+.3g}, "
            f"{scale * t['high']:+.3g}]")


def setup_verdicts(res) -> tuple[str, str, str]:
    """(EXP-07a verdict, EXP-07b verdict, measured text) of one setup's results.json."""
    comps = res.get("comparisons", {})
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
    return flat, need, measured


def check_EXP_07(ctx: Context) -> Finding:
    """EXP-07: SAM finds flatter minima (lower λ_max) and may reduce the need for dropout.

    Over the setups that have run: the CNN study (required) and the MLP one (where dropout
    helps), combined by `rows.combined_verdict`.
    """
    res = ctx.results(STUDY_DIR)
    if res is None:
        return not_run(STUDY_DIR, COMMAND, ctx)
    if "lambda: sam - sgd" not in res.get("comparisons", {}):
        return Finding("not run", "-", f"{ctx.path(STUDY_DIR)} has no SAM - SGD comparison",
                       note=f"run: {COMMAND}")
    setups = [("CNN", STUDY_DIR, res)]
    mlp = ctx.results(MLP_STUDY_DIR)
    if mlp is not None and "lambda: sam - sgd" in mlp.get("comparisons", {}):
        setups.append(("MLP", MLP_STUDY_DIR, mlp))
    found = [(name, d, r, *setup_verdicts(r)) for name, d, r in setups]
    flat = rows.combined_verdict(f[3] for f in found)
    need = rows.combined_verdict(f[4] for f in found)
    measured = " ".join(f"{name}: {text}." for name, _, _, _, _, text in found)
    ran = "; ".join(
        f"experiments.sam_dropout ({name}): {r.get('model', '?')} on "
        f"{r.get('dataset', {}).get('name', '?')} ({r.get('dataset', {}).get('num_train', '?')} "
        "training images), SGD / SAM x dropout, seeds paired" for name, _, r, *_ in found)
    per_setup = ", ".join(f"{name} {f_} / {n_}" for name, _, _, f_, n_, _ in found)
    missing = "" if mlp is not None else f" The MLP setup has not run: {MLP_COMMAND}."
    return Finding(
        flat, measured, ran, ci=_ci(res["comparisons"], "lambda: sam - sgd"),
        artefact=", ".join(ctx.path(d) for _, d, *_ in found),
        note=("Pass (ledger): λ_max lower with SAM, with and without dropout (both CIs below 0; "
              "either above 0 refutes), per setup, combined by rows.combined_verdict. "
              f"Per setup (flatter / need): {per_setup}. \"Reduces the need for dropout\" "
              f"(rows.need_verdict, margin {100 * rows.MARGIN:g} pp): {need}.{missing}"))
