"""The audit's checks of the claims this study measures (BN-16, BN-11), from its results.json.

Each check re-applies the study's own verdict rule (`report.verdict_bn16`, `report.signed`) to
the comparisons stored in <studies>/batch_norm_batch/results.json, so the audit and the study's
analysis.md cannot disagree; without that file the finding is "not run" with the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.audit.core import Context, Finding, not_run
from experiments.batch_norm_batch import report

STUDY_DIR = "batch_norm_batch"
COMMAND = ("python -m experiments.batch_norm_batch --config=experiments/configs/batch_norm_batch.py "
           "--workdir=checkpoints/batch_norm_batch --config.data.data_dir=../shared/data/mnist")


def _pp(e: Mapping[str, Any] | None, unit: str = "pp") -> str:
    if e is None:
        return "not run"
    t = e["inference"]["t"]
    return (f"{100 * t['mean']:+.2f} {unit} [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}] "
            f"(Holm p = {e['inference'].get('p_holm', float('nan')):.3g})")


def _ran(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    return (f"{res['dataset'].get('name', '')} {cfg['data']['limit_train']}-image subset, widths "
            f"{tuple(cfg['model']['widths'])}, {cfg['optim']['name']} lr "
            f"{res['base_lr']:g}·{res['lr_rule']}(batch/{res['lr_reference_batch']}), "
            f"{cfg['train']['num_epochs']} epochs at every batch, seeds {res['seeds']}")


def check_BN_16(ctx: Context) -> Finding:
    """BN-16 (12.5.1): BN at batch 2 >= 1 pt below batch 128 while LN changes < 0.5 pt."""
    res = ctx.results(STUDY_DIR)
    if res is None:
        return not_run(STUDY_DIR, COMMAND, ctx)
    fam = res["families"]
    bn = report.find(fam, "small_batch", "BN:")
    ln = report.find(fam, "small_batch", "LN (C,H,W):")
    verdict = report.verdict_bn16(None if bn is None else bn["inference"],
                                  None if ln is None else ln["inference"])
    ghost = report.find(fam, "separation", "BN batch alone")
    did = report.find(fam, "sensitivity", "BN - LN")
    small = bn["name"].split(":")[1].strip() if bn else "batch 2 - batch 128"
    mismatch = [e for e in fam.get("mismatch", []) if e["name"].startswith("batch/b")
                and "ghost" not in e["name"] and "accum" not in e["name"]]
    ci = None
    if bn is not None:
        ci = (bn["inference"]["t"]["low"], bn["inference"]["t"]["high"])
    return Finding(
        "not run" if verdict == "not run" else verdict,
        f"test accuracy, {small}: BN {_pp(bn)}; LN over (C, H, W) {_pp(ln)}; BN's change minus "
        f"LN's {_pp(did)}; BN batch 2 against 128 at a fixed gradient batch of 128 (ghost BN, "
        f"same steps) {_pp(ghost)}; eval-mode minus train-mode test accuracy at BN batch "
        + ", ".join(f"{e['name'].split('(BN batch ')[1].split(')')[0]}: "
                    f"{100 * e['inference']['t']['mean']:+.2f} pp" for e in mismatch),
        _ran(res), ci=ci, artefact=ctx.path(STUDY_DIR),
        note="Criterion (report.verdict_bn16): BN's mean Δ(batch 2 - 128) <= -1 pp with its 95 % "
             "CI below 0, and LN's CI above -0.5 pp (one-sided: LN gaining from 64x more steps "
             "does not count against the claim); refuted when BN's CI lies above -1 pp or LN's "
             "below -0.5 pp. At equal epochs the batch-128 runs take 64x fewer steps: the "
             "difference in differences against LN and the ghost-BN row remove that.")


def check_BN_11(ctx: Context) -> Finding:
    """BN-11: ghost-BN group sizes at a fixed batch and the same steps; the gap grows with size."""
    res = ctx.results(STUDY_DIR)
    if res is None:
        return not_run(STUDY_DIR, COMMAND, ctx)
    fam = res["families"]
    slope = report.find(fam, "regularization", "slope of the gap on log2(BN")
    ends = report.find(fam, "regularization", "gap: BN batch")
    verdict = report.signed(None if slope is None else slope["inference"], expect_positive=True)
    cells = res["cells"]
    gaps = [(c["bn_batch"], c["summary"]["gap"]["mean"]) for c in cells.values()
            if c["norm"] == "batch" and c["batch"] == res["config"]["ghost_grad_batch"]
            and c["accum"] == 1]
    ci = None if slope is None else (slope["inference"]["t"]["low"],
                                     slope["inference"]["t"]["high"])
    return Finding(
        verdict,
        f"slope of the train - test gap per doubling of the BN (ghost) batch: {_pp(slope)}; "
        f"gap at the largest minus the smallest BN batch {_pp(ends)}; mean gap by BN batch: "
        + ", ".join(f"{g}: {100 * v:.2f} pp" for g, v in sorted(gaps)),
        _ran(res) + f"; ghost BN at gradient batch {res['config']['ghost_grad_batch']}",
        ci=ci, artefact=ctx.path(STUDY_DIR),
        note="Criterion: the per-seed least-squares slope of the gap (train minus test accuracy, "
             "eval mode) on log2(ghost size) has a Holm-adjusted paired-t decision 'differs' "
             "with a positive mean (confirmed) or a negative one (refuted); else inconclusive. "
             "The ledger's batch 512 and groups {8, 32, 128, 512} are scaled to batch 128 and "
             "groups {2, ..., 32, 128} to fit the CPU.")
