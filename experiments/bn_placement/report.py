"""The BN-placement study's results.md, analysis.md and figures, from its results dict.

Every verdict here is read from the stored statistics (`rows.claim_verdict` on the paired-t
interval, Holm's decisions for the other comparisons); nothing is decided by reading means.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments import stats_report

ARM_NAMES = {"cnn": "CNN", "mlp": "MLP"}


def _pct(x, digits: int = 2) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.{digits}f}"


def _ci(low, high, digits: int = 2, sign: bool = False) -> str:
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return "-"
    f = "+" if sign else ""
    return f"[{100 * float(low):{f}.{digits}f}, {100 * float(high):{f}.{digits}f}]"


def _sci(x) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{float(x):.2g}"


def _seeds(n) -> str:
    if n is None:
        return "none (|Δ| ≥ margin)"
    return "> 1000" if float(n) == math.inf else str(int(n))


def setup_line(results: Mapping[str, Any], cfg) -> str:
    d = results["dataset"]
    o, t = cfg.optim, cfg.train
    arms = "; ".join(f"{ARM_NAMES[a]}: {r['model']} (seeds {r['seeds'][0]}..{r['seeds'][-1]})"
                     for a, r in results["arms"].items())
    return (f"{d['name']}: {d['num_train']} training images, {d['num_val']} validation, "
            f"{d['num_test']} test. {arms}. {o.name} lr {o.learning_rate:g} ({o.schedule}), "
            f"batch {t.batch_size}, {t.num_epochs} epochs, no early stopping (the last state is "
            f"tested), seed mode {results['seed_mode']}. Seed s gives every row of an arm the "
            "same init key (the same kernels) and batch order.")


def row_table(arm: str, result: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    lines = [(f"| {ARM_NAMES[arm]} row | network | test accuracy % (mean) | 95 % CI (t, over "
             "seeds) | sd | per seed | train accuracy % (last epoch, mean) |"),
             "|---|---|---:|---:|---:|---|---:|"]
    for row, s in result["rows"].items():
        per = ", ".join(_pct(v) for v in s["values"])
        lines.append(f"| {row} | {labels[row]} | {_pct(s['mean'])} | {_ci(s['low'], s['high'])} "
                     f"| {_pct(s['sd'])} | {per} | {_pct(s['train_mean'])} |")
    return "\n".join(lines) + "\n"


def claims_table(results: Mapping[str, Any]) -> str:
    lines = [("| claim | arm | comparison | Δ pp (mean) | 95 % CI pp (paired t) | margin pp | "
             "verdict | seeds for the CI to fit inside the margin at this mean and sd |"),
             "|---|---|---|---:|---:|---:|---|---:|"]
    for cid, c in results["claims"].items():
        for arm, a in c["arms"].items():
            star = " (ledger's arm)" if arm == c["primary"] else ""
            lines.append(f"| {cid} | {ARM_NAMES[arm]}{star} | {c['comparison'][0]} − "
                         f"{c['comparison'][1]} | {100 * a['mean']:+.3f} | "
                         f"{_ci(a['low'], a['high'], 3, True)} | ±{100 * c['margin']:g} | "
                         f"{a['verdict']} | {_seeds(a['seeds_for_equivalence'])} |")
    return "\n".join(lines) + "\n"


def init_table(results: Mapping[str, Any]) -> str:
    lines = [("| arm | layer | rms dL/db | rms dL/dW | ratio | train-mode max abs(f_b − f_0), "
             "b ~ N(0, 1) | eval-mode at init, same b | max logit |"),
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arm, r in results["bias_at_init"].items():
        for i, layer in enumerate(r["layers"]):
            tail = (f"{_sci(r['train_max_abs_diff'])} | {r['eval_max_abs_diff_at_init']:.3g} | "
                    f"{r['logit_scale']:.3g}") if i == 0 else " | | "
            lines.append(f"| {ARM_NAMES[arm]} | {layer} | {_sci(r['grad_bias_rms'][layer])} | "
                         f"{_sci(r['grad_kernel_rms'][layer])} | "
                         f"{_sci(r['grad_ratio'][layer])} | {tail} |")
    return "\n".join(lines) + "\n"


def _layer_max(runs, key="bias"):
    out: dict[str, list[float]] = {}
    for r in runs:
        for layer, s in r.get(key, {}).items():
            out.setdefault(layer, []).append(s["max_abs"])
    return out


def trained_bias_table(results: Mapping[str, Any]) -> str:
    lines = ["| arm | row | layer | max abs(b) over seeds | rms b (mean over seeds) |",
             "|---|---|---|---:|---:|"]
    for arm, a in results["arms"].items():
        for row in ("bn_before_bias", "bn_after"):
            runs = a["runs"].get(row, [])
            for layer in sorted({k for r in runs for k in r.get("bias", {})},
                                key=lambda n: int(n.rsplit("_", 1)[1])):
                mx = max(r["bias"][layer]["max_abs"] for r in runs)
                rms = np.mean([r["bias"][layer]["rms"] for r in runs])
                lines.append(f"| {ARM_NAMES[arm]} | {row} | {layer} | {mx:.3g} | {rms:.3g} |")
    return "\n".join(lines) + "\n"


def fold_table(results: Mapping[str, Any]) -> str:
    lines = [("| arm | training mode, biases removed: max abs Δ logit | evaluation, bias folded "
             "into the running mean: max abs Δ logit (predictions changed) | evaluation, "
             "bias removed, running mean kept: max abs Δ logit (predictions changed) | max "
             "logit |"), "|---|---:|---:|---:|---:|"]
    for arm, a in results["arms"].items():
        runs = [r for r in a["runs"].get("bn_before_bias", []) if "fold" in r]
        if not runs:
            continue
        f = [r["fold"] for r in runs]
        lines.append(
            f"| {ARM_NAMES[arm]} | {_sci(max(x['train_max_abs_diff'] for x in f))} | "
            f"{_sci(max(x['eval_max_abs_diff_folded'] for x in f))} "
            f"({sum(x['eval_predictions_changed_folded'] for x in f)}) | "
            f"{max(x['eval_max_abs_diff_unfolded'] for x in f):.3g} "
            f"({sum(x['eval_predictions_changed_unfolded'] for x in f)}) | "
            f"{max(x['logit_scale'] for x in f):.3g} |")
    return "\n".join(lines) + "\n"


def disagreement_table(results: Mapping[str, Any]) -> str:
    lines = [("| arm | bn_before_bias vs bn_before, same seed | bn_after vs bn_before, same seed "
             "| bn_before, seed s vs seed s + 1 |"), "|---|---:|---:|---:|"]
    for arm, d in results["disagreement"].items():
        cells = [f"{_pct(d[k]['mean'])} % (per seed {', '.join(_pct(v) for v in d[k]['values'])})"
                 if k in d else "-" for k in ("bn_before_bias", "bn_after", "between_seeds")]
        lines.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_results(results: Mapping[str, Any], cfg, command: str) -> list[str]:
    comps = results["comparisons"]
    md = ["# BatchNorm placement and the bias before BN (chapter 12.4.5)\n",
          f"Command: `{command}` ({results['wall_time_s']:.0f} s)\n",
          setup_line(results, cfg) + "\n"]
    for arm, a in results["arms"].items():
        md.append(row_table(arm, a, results["labels"]))
    if comps:
        md += ["## Paired comparisons of test accuracy\n",
               ("Per-seed differences (row minus the row it is compared with, same seed); "
               "intervals by Student's paired t and by the exact bootstrap over seeds; p-values "
               f"Holm-adjusted over the {len(comps)} comparisons of both arms; 'detectable' is "
               "the smallest true difference this many seeds detect at 80 % power "
               "(`analysis.inference`).\n"),
               stats_report.comparison_table(
                   [(f"{ARM_NAMES[c['arm']]}: {c['row']}", c["against"], c["inference"])
                    for c in comps], what="arm: row"),
               "## The claims, as equivalence tests\n",
               ("Confirmed when the 95 % paired-t CI lies inside ±margin (two one-sided tests at "
               "2.5 % each), refuted when it lies wholly outside, inconclusive otherwise.\n"),
               claims_table(results)]
    md += ["## The bias before BN\n",
           ("At initialization, on the arm's first training batch (the same kernels with and "
           "without biases; the gradient at the real start, zero biases):\n"),
           init_table(results)]
    if any(a["runs"].get(r) for a in results["arms"].values() for r in ("bn_before_bias",
                                                                        "bn_after")):
        md += ["Learned biases after training (option A's are redundant, option B's are not):\n",
               trained_bias_table(results)]
    if any(a["runs"].get("bn_before_bias") for a in results["arms"].values()):
        md += [("The trained bn_before_bias networks against themselves without the biases "
               "(training mode: on one batch of test images; evaluation: the whole test set, "
               "predictions changed summed over seeds; the largest |Δ logit| over seeds):\n"),
               fold_table(results)]
    if results["disagreement"]:
        md += ["Share of the test images on which two runs predict different classes:\n",
               disagreement_table(results)]
    md.append("Figures: accuracy.png, differences.png\n")
    return md


def _claim_paragraph(cid: str, c: Mapping[str, Any], comps) -> list[str]:
    row, against = c["comparison"]
    out = [f"### {cid} ({c['section']}): \"{c['quote']}\"\n",
           (f"Ledger criterion: {c['criterion']}; read as equivalence with margin "
           f"±{100 * c['margin']:g} pp on the paired difference {row} − {against}.\n")]
    for arm, a in c["arms"].items():
        comp = next(x for x in comps if x["arm"] == arm and (x["row"], x["against"]) == (row,
                                                                                    against))
        settle = ""
        if a["verdict"] == "inconclusive":
            n = a["seeds_for_equivalence"]
            count = ("more than 1000" if n is not None and float(n) == math.inf
                     else f"about {_seeds(n)}")
            settle = (" What would settle it: " + (
                f"{count} seeds at this mean and sd would put the CI inside the margin."
                if n is not None else
                "the measured mean is outside the margin, so more seeds would more likely "
                "refute than confirm; a CI that excludes the margin needs more seeds."))
        out.append(f"- {ARM_NAMES[arm]}{' (the ledger’s arm)' if arm == c['primary'] else ''}: "
                   f"{stats_report.formal(comp['inference'])}. Verdict: **{a['verdict']}**."
                   f"{settle}\n")
    out.append(f"Verdict (the ledger's arm, {ARM_NAMES.get(c['primary'], '-')}, decides; "
               f"\"partly\" when it and another arm disagree as confirmed / refuted): "
               f"**{c['verdict']}**.\n")
    return out


def format_analysis(results: Mapping[str, Any], cfg) -> str:
    comps = results["comparisons"]
    md = ["# BN placement and the bias before BN: the chapter's claims against the measurement\n",
          setup_line(results, cfg) + "\n"]
    for cid, c in results["claims"].items():
        if c["arms"]:
            md += _claim_paragraph(cid, c, comps)
    md.append("### The other comparisons (Holm over all of them)\n")
    for c in comps:
        if (c["row"], c["against"]) in [tuple(x["comparison"]) for x in results["claims"].values()]:
            continue
        md.append(f"- {ARM_NAMES[c['arm']]}, {c['row']} − {c['against']} ({c['question']}): "
                  f"{stats_report.formal(c['inference'])}.\n")
    md += ["### Why the bias is redundant, and what is left of it\n"]
    for arm, r in results["bias_at_init"].items():
        ratio = max(r["grad_ratio"].values()) if r["grad_ratio"] else float("nan")
        md.append(f"- {ARM_NAMES[arm]} at initialization: a bias b ~ N(0, 1) before each BN moves "
                  f"the training-mode logits by at most {_sci(r['train_max_abs_diff'])} (logits "
                  f"up to {r['logit_scale']:.2g}): BN(z + b) = BN(z) up to float32 rounding. In "
                  "evaluation mode on the initial running statistics it moves them by "
                  f"{r['eval_max_abs_diff_at_init']:.2g}: the running mean has not absorbed b "
                  f"yet. The gradient with respect to the bias is {_sci(ratio)} of the kernel's "
                  "(rms, largest layer): rounding, not signal.\n")
    for arm, a in results["arms"].items():
        runs = [r for r in a["runs"].get("bn_before_bias", []) if "fold" in r]
        if not runs:
            continue
        f = [r["fold"] for r in runs]
        mx = max(max(s["max_abs"] for s in r["bias"].values()) for r in runs)
        exact = (sum(x["eval_predictions_changed_folded"] for x in f) == 0
                 and max(x["eval_max_abs_diff_folded"] for x in f)
                 < 1e-4 * max(1.0, max(x["logit_scale"] for x in f)))
        verdict = ("So a trained option-A network with biases is exactly an option-A network "
                   "without them: the bias costs parameters and nothing else, and its only trace "
                   "is in the running mean." if exact else
                   "The fold does not reproduce the network to float32 rounding: the bias is "
                   "not fully absorbed by the running mean here (see the table).")
        md.append(f"- {ARM_NAMES[arm]} after training: the redundant biases reach |b| ≤ "
                  f"{mx:.3g}. Removing them leaves the training-mode output unchanged (max "
                  f"Δ {_sci(max(x['train_max_abs_diff'] for x in f))}); in evaluation, folding "
                  "each bias into its running mean (μ → μ − b) leaves it unchanged too (max Δ "
                  f"{_sci(max(x['eval_max_abs_diff_folded'] for x in f))}, "
                  f"{sum(x['eval_predictions_changed_folded'] for x in f)} predictions changed), "
                  "while removing them without folding changes "
                  f"{sum(x['eval_predictions_changed_unfolded'] for x in f)} predictions "
                  f"(max Δ {max(x['eval_max_abs_diff_unfolded'] for x in f):.3g}). {verdict}\n")
    for arm, d in results["disagreement"].items():
        if "bn_before_bias" in d and "between_seeds" in d:
            same, other = d["bn_before_bias"]["mean"], d["between_seeds"]["mean"]
            head = (f"- {ARM_NAMES[arm]}: bn_before_bias and bn_before of the same seed predict "
                    f"different classes on {_pct(same)} % of the test images, bn_before runs of "
                    f"two seeds on {_pct(other)} %.")
            if same == 0:
                tail = (" The paired runs predict identically: at this budget the bias never "
                        "moved the trajectory.")
            elif other > 0 and same >= 0.5 * other:
                tail = (f" The same function does not mean the same run: the paired runs part "
                        f"{same / other:.1%} as far as runs of two seeds. The bias's "
                        "rounding-level gradient, divided by Adam's sqrt(v) + eps, moves b; z + b "
                        "then rounds differently from z, and float32 rounding differences grow "
                        "over the run. The accuracy difference is then of the size of seed "
                        "noise, which a 0.1 pt margin needs many seeds to bound.")
            else:
                tail = (f" The paired runs stay closer than two seeds ({same / other:.1%} of "
                        "their disagreement): the bias changes the run only through float32 "
                        "rounding (z + b rounds differently from z), and the pairing removes "
                        "most of the seed noise from the difference.")
            md.append(head + tail + "\n")
    md.append("### Where the chapter is imprecise\n")
    for cid, c in results["claims"].items():
        for arm, a in c["arms"].items():
            if a["verdict"] != "refuted":
                continue
            summary = results["arms"][arm]["rows"]
            row, against = c["comparison"]
            md.append(f"- {cid} is refuted on the {ARM_NAMES[arm]} at this budget: {row} − "
                      f"{against} = {100 * a['mean']:+.2f} pp, 95 % CI "
                      f"{_ci(a['low'], a['high'], 2, True)} pp, outside ±{100 * c['margin']:g} "
                      f"pp (training accuracy at the last epoch {_pct(summary[row]['train_mean'])}"
                      f" % against {_pct(summary[against]['train_mean'])} %). Both placements "
                      "train, but they are not interchangeable within the ledger's margin "
                      "here; whether the gap survives a longer budget is what the accelerator "
                      "config (bn_placement_full.py) would measure.\n")
    nobias = [c for c in comps if (c["row"], c["against"]) == ("bn_after_nobias", "bn_after")]
    measured = "; ".join(f"{ARM_NAMES[c['arm']]}: {stats_report.formal(c['inference'])}"
                         for c in nobias)
    md += [("- \"The bias b is redundant\" is algebra for option A only. In option B (layer → "
            "ReLU → BN) the bias sets the ReLU's threshold, so no identity removes it; but from "
            "the second layer on, the previous BN's β reaches the layer through W as W β, a bias "
            "in all but name (exactly so in the MLP; in the CNN except at the zero-padded "
            "border), so only the first layer loses every shift."
            + (f" Measured, removing option B's bias (bn_after_nobias − bn_after): {measured}."
               if nobias else "") + "\n"),
           ("- In evaluation the bias is absorbed only once the running mean has been "
           "accumulated from z + b (its zero start decays as momentum^k): at initialization the "
           "two networks differ in evaluation mode (table above).\n"),
           ("- \"Without any performance loss\" is a statement about the function, and that part "
           "is exact (the fold check). As a statement about training runs it is a claim of "
           "equivalence, which a study can only confirm within a margin and with enough seeds; "
           "the verdicts above say whether these seeds suffice.\n")]
    return "\n".join(md)


def write_figures(results: Mapping[str, Any], workdir) -> list[str]:
    """accuracy.png (per arm: every seed's test accuracy per row, the mean and its 95 % CI) and
    differences.png (each comparison's mean paired difference and CI, the claims' margins)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = pathlib.Path(workdir)
    arms = list(results["arms"])
    fig, axes = plt.subplots(1, len(arms), figsize=(6 * len(arms), 4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        summary = results["arms"][arm]["rows"]
        for i, (row, s) in enumerate(summary.items()):
            ax.plot([i] * len(s["values"]), 100 * np.asarray(s["values"]), "o", color="0.6",
                    ms=4)
            lo, hi = s["low"], s["high"]
            if math.isfinite(lo) and math.isfinite(hi):
                ax.errorbar([i], [100 * s["mean"]], yerr=[[100 * (s["mean"] - lo)],
                                                          [100 * (hi - s["mean"])]],
                            fmt="s", color="tab:blue", capsize=4)
        ax.set_xticks(range(len(summary)), list(summary), rotation=20)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ARM_NAMES[arm]}: per seed (grey), mean and 95 % CI")
    fig.tight_layout()
    fig.savefig(workdir / "accuracy.png", dpi=120)
    plt.close(fig)

    comps = results["comparisons"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(comps), 2) + 1.5))
    margins = {tuple(c["comparison"]): c["margin"] for c in results["claims"].values()}
    for i, c in enumerate(comps):
        t = c["inference"].get("t")
        if not t:
            continue
        ax.plot(100 * np.asarray(c["differences"]), [i] * len(c["differences"]), "o",
                color="0.6", ms=3)
        if math.isfinite(t["low"]) and math.isfinite(t["high"]):
            ax.errorbar([100 * t["mean"]], [i], xerr=[[100 * (t["mean"] - t["low"])],
                                                       [100 * (t["high"] - t["mean"])]],
                        fmt="s", color="tab:blue", capsize=3)
        m = margins.get((c["row"], c["against"]))
        if m:
            ax.plot([-100 * m, 100 * m], [i, i], "|", color="tab:red", ms=14, mew=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(comps)),
                  [f"{ARM_NAMES[c['arm']]}: {c['row']} − {c['against']}" for c in comps])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy difference (pp): per seed (grey), mean and 95 % CI (blue), "
                  "claim margin (red)")
    fig.tight_layout()
    fig.savefig(workdir / "differences.png", dpi=120)
    plt.close(fig)
    return ["accuracy.png", "differences.png"]
