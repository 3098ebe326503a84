"""The audit's study checks of BN-13 and BN-14, read from the BN-placement study's results.json.

Each check re-derives its verdict from the stored paired-t interval of its comparison
(`rows.claim_verdict` against the ledger's margin in `rows.CLAIMS`) on the ledger's arm, and
states the other arm next to it. Not registered here: experiments/audit wires them in.
"""

from __future__ import annotations

from typing import Any

from experiments.audit.core import Context, Finding, not_run
from experiments.bn_placement import rows

STUDY_DIR = "bn_placement"
COMMAND = ("python -m experiments.bn_placement --config=experiments/configs/bn_placement.py "
           "--workdir=checkpoints/bn_placement --config.data.data_dir=../shared/data/mnist")
ARM_NAMES = {"cnn": "CNN", "mlp": "MLP"}


def _arm_text(arm: str, a: dict[str, Any], primary: str) -> str:
    star = " (the ledger's arm)" if arm == primary else ""
    return (f"{ARM_NAMES.get(arm, arm)}{star}: {100 * a['mean']:+.3f} pp, 95 % CI "
            f"[{100 * a['low']:+.3f}, {100 * a['high']:+.3f}] pp (paired t, {a['n']} seeds)")


def _claim_finding(ctx: Context, claim_id: str, extra: str = "") -> Finding:
    res = ctx.results(STUDY_DIR)
    if res is None:
        return not_run(STUDY_DIR, COMMAND, ctx)
    claim = res.get("claims", {}).get(claim_id)
    if not claim or not claim.get("arms"):
        return Finding("not run", "-", f"{ctx.path(STUDY_DIR)} has no {claim_id} comparison",
                       note=f"run: {COMMAND}")
    margin = rows.CLAIMS[claim_id]["margin"]
    row, against = rows.CLAIMS[claim_id]["comparison"]
    primary = claim["primary"] if claim["primary"] in claim["arms"] else next(iter(claim["arms"]))
    a = claim["arms"][primary]
    low, high = float(a["low"]), float(a["high"])
    own = rows.claim_verdict(low, high, margin)
    rest = {k: rows.claim_verdict(v["low"], v["high"], margin)
            for k, v in claim["arms"].items() if k != primary}
    verdict = rows.combined_verdict(own, rest.values())
    others = [_arm_text(k, v, primary) for k, v in claim["arms"].items() if k != primary]
    other_verdicts = [f"{ARM_NAMES.get(k, k)} {v}" for k, v in rest.items()]
    measured = (f"test accuracy, {row} − {against}: "
                + "; ".join([_arm_text(primary, a, primary), *others]) + extra)
    settle = ""
    if own == "inconclusive":
        n = a.get("seeds_for_equivalence")
        settle = (f" About {n} seeds at this mean and sd would put the CI inside the margin."
                  if isinstance(n, int) else " The mean lies outside the margin (or needs more "
                  "than 1000 seeds): equivalence is not in reach of more seeds at this mean.")
    dataset = res.get("dataset", {})
    return Finding(
        verdict, measured,
        f"experiments.bn_placement: {res.get('arms', {}).get(primary, {}).get('model', '?')} on "
        f"{dataset.get('name', '?')} ({dataset.get('num_train', '?')} training images), seeds "
        "paired (same init key and batch order in both rows)",
        ci=(low, high), artefact=ctx.path(STUDY_DIR),
        note=(f"Criterion: {rows.CLAIMS[claim_id]['criterion']}, read as equivalence: the whole "
              f"95 % CI inside ±{100 * margin:g} pp confirms, a CI wholly outside refutes, "
              "otherwise inconclusive; confirmed on the ledger's arm and refuted on another is "
              "partly." + settle
              + (f" The ledger's arm ({ARM_NAMES.get(primary, primary)}): {own}; other arm(s): "
                 f"{', '.join(other_verdicts)}." if other_verdicts else "")))


def check_BN_13(ctx: Context) -> Finding:
    """BN-13: with BN before the activation the bias is redundant and removing it costs nothing."""
    res = ctx.results(STUDY_DIR)
    extra = ""
    if res is not None:
        parts = []
        for arm, r in res.get("bias_at_init", {}).items():
            parts.append(f"{ARM_NAMES.get(arm, arm)} at init, train mode, b ~ N(0, 1): max "
                         f"|Δ logit| {r['train_max_abs_diff']:.1e}")
        for arm, a in res.get("arms", {}).items():
            folds = [r["fold"] for r in a.get("runs", {}).get("bn_before_bias", []) if "fold" in r]
            if folds:
                parts.append(
                    f"{ARM_NAMES.get(arm, arm)} trained, bias folded into the running mean: max "
                    f"|Δ logit| {max(f['eval_max_abs_diff_folded'] for f in folds):.1e}, "
                    f"{sum(f['eval_predictions_changed_folded'] for f in folds)} test "
                    "predictions changed")
        if parts:
            extra = ". Function: " + "; ".join(parts)
    return _claim_finding(ctx, "BN-13", extra)


def check_BN_14(ctx: Context) -> Finding:
    """BN-14: BN before or after the ReLU, "both work in practice" (|acc_A − acc_B| < 0.3 pt)."""
    return _claim_finding(ctx, "BN-14")
