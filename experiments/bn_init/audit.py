"""The BatchNorm x initialization study in the audit: BN-12, part (c).

The ledger's BN-12 (12.4.4 point 3, Sec 18 myth 2): "BN reduces init sensitivity, but He + BN
converges 'significantly faster' than BN + random init"; pass if He is >= 1.5x faster than
N(0, 0.01²) under both Adam and SGD. Part (b), Linear -> BN being invariant to the weight scale,
is the audit's quick check (experiments/audit/checks/norm.py); this check reads the study's
results.json and applies the study's own rules (`claims.judge`, recomputed from the stored
comparisons, not read from the stored verdicts) to both halves of the claim.
"""

from __future__ import annotations

import math

from experiments.audit.core import Context, Finding, not_run
from experiments.bn_init import claims, grid

STUDY_DIR = "bn_init"
COMMAND = ("python -m experiments.bn_init --config=experiments/configs/bn_init.py "
           "--workdir=checkpoints/bn_init --config.data.data_dir=../shared/data/mnist")
_WORDS = {"sgd": "SGD + momentum", "adam": "Adam"}


def _speed_text(c) -> str:
    ratio, low, high = claims.ratio_ci(c["inference"])
    cens = sum(c["arm_censored"]) + sum(c["against_censored"])
    return (f"{_WORDS.get(c['optimizer'], c['optimizer'])}, {c['measure']}: He speed-up "
            f"{ratio:.2f}x (95 % CI [{low:.2f}, {high:.2f}], {c['inference']['n']} seeds, Holm "
            f"p {float(c['inference'].get('p_holm', math.nan)):.3g}"
            + (f", {cens} censored runs" if cens else "") + f"): {claims.speed_status(c)}")


def _sensitivity_text(c) -> str:
    ratio, low, high = claims.ratio_ci(c["inference"])
    return (f"{_WORDS.get(c['optimizer'], c['optimizer'])}: slowest/fastest init spread without "
            f"a norm {math.exp(sum(c['arm_spread']) / len(c['arm_spread'])):.2f}x vs BN "
            f"{math.exp(sum(c['against_spread']) / len(c['against_spread'])):.2f}x, ratio "
            f"{ratio:.2f} (95 % CI [{low:.2f}, {high:.2f}]): {claims.sensitivity_status(c)}")


def check_BN_12(ctx: Context) -> Finding:
    res = ctx.results(STUDY_DIR)
    if res is None:
        return not_run(STUDY_DIR, COMMAND, ctx)
    comps = res.get("comparisons") or {}
    speed = [c for c in comps.values() if c["kind"] == "speed"]
    sens = [c for c in comps.values() if c["kind"] == "sensitivity"]
    if not speed:
        return Finding("inconclusive", "-", f"read {ctx.path(STUDY_DIR)}",
                       artefact=ctx.path(STUDY_DIR),
                       note="results.json has no He vs small-random comparison (the 'small' or "
                            f"'he' cells, or the 'bn' norm, were not run); rerun: {COMMAND}")
    v = claims.judge(comps)
    # The interval shown is the one most favourable to the claim: the largest upper end of He's
    # speed-up over the optimizers and measures.
    best = max(speed, key=lambda c: claims.ratio_ci(c["inference"])[2])
    _, low, high = claims.ratio_ci(best["inference"])
    axes, data = res.get("axes", {}), res.get("dataset", {})
    ran = (f"experiments.bn_init: CNN on {data.get('num_train')} {data.get('name')} training "
           f"images, inits {', '.join(axes.get('inits', []))} x norms "
           f"{', '.join(axes.get('norms', []))} x optimizers "
           f"{', '.join(axes.get('optimizers', []))}, {len(res.get('seeds', []))} paired seeds, "
           f"{res.get('budget_steps')} steps per run")
    return Finding(
        v["BN-12"],
        "(c) " + "; ".join(_speed_text(c) for c in speed) + ". Init sensitivity: "
        + ("; ".join(_sensitivity_text(c) for c in sens) or "not run")
        + f". Speed part {v['speed_part']}, sensitivity part {v['sensitivity_part']}.",
        ran,
        ci=(low, high), artefact=ctx.path(STUDY_DIR),
        note=(f"Criterion: He >= {grid.LEDGER_SPEEDUP:g}x faster (lower end of the paired-t CI of "
              "steps small / steps He, Holm over the study's family) under both optimizers on "
              "both measures (running-mean training loss and the ledger's training accuracy), "
              "and BN narrowing the spread of steps over small / Xavier / He / LSUV; rules in "
              "experiments/bn_init/claims.py. The CI is He's speed-up where it is largest "
              f"({_WORDS.get(best['optimizer'], best['optimizer'])}, {best['measure']}). Part "
              "(b), Linear -> BN invariance to the weight scale, is the quick check's. Under BN "
              "the init scale only changes the effective step size, so the answer holds at the "
              "study's learning rates."))
