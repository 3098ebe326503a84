"""The Transformer-normalization study's results.md, analysis.md and figures, from its results.

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

FAMILY_TITLES = {"placement": "Placement x warmup (LayerNorm, pre-LN / post-LN)",
                 "norm": "BatchNorm vs LayerNorm vs RMSNorm at a small and a large batch"}


def _num(x, scale=100.0, digits=2) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{scale * float(x):.{digits}f}"


def _mci(s: Mapping[str, Any], scale=100.0, digits=2) -> str:
    """"mean [low, high]" of a metric summary."""
    if not s.get("n"):
        return "-"
    ci = (f" [{_num(s['low'], scale, digits)}, {_num(s['high'], scale, digits)}]"
          if math.isfinite(float(s["low"])) and math.isfinite(float(s["high"])) else "")
    return _num(s["mean"], scale, digits) + ci


def setup_line(results: Mapping[str, Any], cfg) -> str:
    d, t, o, st = results["dataset"], cfg.train, cfg.optim, cfg.study
    fams = []
    for fam, f in results["families"].items():
        s = f["settings"]
        per = "; ".join(f"{r}: batch {v['batch']}, {v['steps']} steps ({v['epochs']} epochs), "
                        f"warmup {v['warmup_steps']}" for r, v in s.items())
        lr = st.placement_lr if fam == "placement" else st.norm_lr
        fams.append(f"**{fam}**: {f['model']}; {o.name} peak lr {lr:g}; {per}")
    bands = ", ".join(f"{k} {lo}-{hi}" for k, (lo, hi) in results["length_bands"].items())
    return (f"{d['name']} (rule majority, {results['task']['num_classes']} classes, vocab "
            f"{results['task']['vocab_size']}, lengths {results['task']['min_len']}-"
            f"{results['task']['max_len']} right-padded): {d['num_train']} training, "
            f"{d['num_val']} validation, {d['num_test']} test sequences. {o.schedule} schedule, "
            f"clip {o.clip} tau {o.clip_value:g}, weight decay {o.weight_decay:g}, label "
            f"smoothing {t.label_smoothing:g}, dropout 0.1 (attention, residual, embedding), "
            f"no early stopping (the last state is tested). Test length bands: {bands}.\n\n"
            + "\n\n".join(fams) + "\n\nSeed s gives every row of a family the same init key "
            "and (at one batch size) the same batch order; numbers are mean [95 % t CI] over "
            "seeds.")


def placement_table(results: Mapping[str, Any]) -> str:
    lines = [("| row | network | test accuracy % | final train loss | diverged | stalled | "
              "max grad norm, first steps | steps clipped % |"),
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["families"]["placement"]["rows"]:
        s = results["summary"][row]
        lines.append(f"| {row} | {results['labels'][row]} | {_mci(s['test_accuracy'])} | "
                     f"{_mci(s['final_train_loss'], 1.0, 3)} | {s['diverged']}/{s['n']} | "
                     f"{s['stalled']}/{s['n']} | {_mci(s['early_max_grad_norm'], 1.0, 2)} | "
                     f"{_mci(s['clipped_share'], 100.0, 0)} |")
    return "\n".join(lines) + "\n"


def norm_table(results: Mapping[str, Any]) -> str:
    bands = list(results["length_bands"])
    head = " | ".join(f"{b} test sequences, acc %" for b in bands)
    lines = [(f"| row | network | test accuracy % (eval mode) | train-mode accuracy % (row's "
              f"batch, no dropout) | eval − train mode, pp | {head} | final train loss |"),
             "|---|---|---:|---:|---:|" + "---:|" * len(bands) + "---:|"]
    for row in results["families"]["norm"]["rows"]:
        s = results["summary"][row]
        band_cells = " | ".join(_mci(s[f"{b}_accuracy"]) for b in bands)
        lines.append(f"| {row} | {results['labels'][row]} | {_mci(s['test_accuracy'])} | "
                     f"{_mci(s['train_mode_accuracy'])} | {_mci(s['train_eval_gap'])} | "
                     f"{band_cells} | {_mci(s['final_train_loss'], 1.0, 3)} |")
    return "\n".join(lines) + "\n"


def _unit(metric: str) -> tuple[float, str]:
    return (1.0, "") if metric == "final_train_loss" else (100.0, "pp")


def comparison_tables(results: Mapping[str, Any]) -> list[str]:
    out = []
    for metric in ("test_accuracy", "final_train_loss"):
        comps = [c for c in results["comparisons"] if c["metric"] == metric]
        if not comps:
            continue
        scale, unit = _unit(metric)
        out += [f"### {metric.replace('_', ' ')}\n",
                stats_report.comparison_table([(c["row"], c["against"], c["inference"])
                                               for c in comps], what="row", scale=scale,
                                              digits=3 if scale == 1.0 else 2,
                                              unit=unit or "loss")]
    return out


def format_results(results: Mapping[str, Any], cfg, command: str) -> list[str]:
    md = ["# Normalization inside a Transformer: placement, warmup, BN vs LN (chapter 12.5)\n",
          f"Command: `{command}` ({results['wall_time_s']:.0f} s)\n",
          setup_line(results, cfg) + "\n"]
    if "placement" in results["families"]:
        md += [f"## {FAMILY_TITLES['placement']}\n", placement_table(results)]
    if "norm" in results["families"]:
        md += [f"## {FAMILY_TITLES['norm']}\n", norm_table(results)]
    if results["comparisons"]:
        md += ["## Paired comparisons\n",
               ("Per-seed differences (row minus the row it is compared with, same seed); "
                "intervals by Student's paired t and by the bootstrap over seeds; p-values "
                f"Holm-adjusted over all {len(results['comparisons'])} comparisons.\n")]
        md += comparison_tables(results)
    md += ["## Verdicts\n"]
    md += [f"- {c['sentence']}" for c in results["claims"].values()]
    md += [f"- {results['clipping']['sentence']}", "",
           "Figures: loss_curves.png, accuracy.png\n"]
    return md


def format_analysis(results: Mapping[str, Any], cfg) -> str:
    md = ["# Normalization inside a Transformer: the chapter's claims against the measurement\n",
          setup_line(results, cfg) + "\n", "## Claims and verdicts\n"]
    for cid, c in results["claims"].items():
        md.append(f"### {cid} ({c['section']}): \"{c['quote']}\"\n")
        md.append(f"{c['sentence']}.\n")
        if c["verdict"] == "not run":
            continue
        rule = ("confirmed when the paired-t 95 % CI lies wholly below 0 (the row is worse), "
                "refuted when it lies wholly at or above 0" if c["expect"] == "negative" else
                f"confirmed when the paired-t 95 % CI lies inside ±{100 * c['margin']:g} pp, "
                "refuted when wholly outside")
        md.append(f"Rule: {rule}, inconclusive otherwise; Holm-adjusted p = "
                  f"{stats_report.p_value(c.get('p_holm'))}.\n")
    md.append("### CLIP-05 (12.7.2): \"Typical τ: ... 1.0 for Transformers\"\n")
    md.append(results["clipping"]["sentence"] + ".\n")
    s = results["summary"]
    notes = []
    if "post_nowarmup" in s and "post_warmup" in s:
        a, b = s["post_nowarmup"], s["post_warmup"]
        notes.append(
            f"- Post-LN without warmup: {a['stalled']}/{a['n']} runs stalled at the uniform "
            f"prediction's loss and {a['diverged']}/{a['n']} diverged (non-finite or above the "
            f"start), against {b['stalled']}/{b['n']} and {b['diverged']}/{b['n']} with warmup; "
            f"its largest gradient norm in the first {cfg.study.early_steps} steps was "
            f"{_mci(a['early_max_grad_norm'], 1.0, 2)} against "
            f"{_mci(b['early_max_grad_norm'], 1.0, 2)} with warmup, and clipping acted on "
            f"{_mci(a['clipped_share'], 100.0, 0)} % of its steps against "
            f"{_mci(b['clipped_share'], 100.0, 0)} %. A run stuck at the uniform prediction "
            "has small gradients, so a low early maximum there is the failure's trace, not "
            "stability: read the loss curves (loss_curves.png) for when each run left, or "
            "never left, the chance level.")
    for size in ("small", "large"):
        if f"batch_{size}" in s:
            g = s[f"batch_{size}"]["train_eval_gap"]
            notes.append(f"- BatchNorm at the {size} batch: eval-mode minus training-mode test "
                         f"accuracy (the running statistics against each test batch's own, at "
                         f"the training batch size) = {_mci(g)} pp; LayerNorm and RMSNorm have "
                         "no such mismatch (the same number in both modes).")
    if notes:
        md += ["## What else the runs show\n"] + notes + [""]
    md += ["## Where the chapter is imprecise\n",
           ("- \"Variable sequence lengths make batch stats unreliable\": here BatchNorm "
            "normalizes over every (sample, position) pair, padding included, so the batch "
            "statistics mix padded positions in a proportion that changes from batch to batch; "
            "how much that costs is an empirical question on a given task, answered above for "
            "this one. A masked BatchNorm (statistics over real tokens only) would remove the "
            "padding part of the argument and keep the batch-size part."),
           ("- The chapter gives no warmup rule for post-LN against pre-LN; the cited papers "
            "do (post-LN needs warmup, pre-LN largely does not). The verdicts WARMUP-post and "
            "WARMUP-pre test those papers' statements at this small scale."),
           ("- Accuracy ceilings: the synthetic task is learnable to ~100 %; differences are "
            "differences at this budget (see the step counts in the setup)."), ""]
    return "\n".join(md)


def _curve_mean(runs: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    curves = [r.get("loss_curve") for r in runs if r.get("loss_curve")]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    steps = np.asarray([p[0] for p in curves[0][:n]], float)
    loss = np.nanmean(np.asarray([[p[1] for p in c[:n]] for c in curves], float), axis=0)
    return steps, loss


def write_figures(results: Mapping[str, Any], workdir) -> list[str]:
    """loss_curves.png (per family: each row's training loss, window means over steps, mean
    over seeds) and accuracy.png (per row: every seed's test accuracy, the mean and its CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = pathlib.Path(workdir)
    fams = list(results["families"])
    fig, axes = plt.subplots(1, max(len(fams), 1), figsize=(6 * max(len(fams), 1), 4),
                             squeeze=False)
    for ax, fam in zip(axes[0], fams):
        for row in results["families"][fam]["rows"]:
            c = _curve_mean(results["runs"][row])
            if c is not None:
                # The norm family's rows differ in steps: plot against examples seen.
                batch = results["families"][fam]["settings"][row]["batch"]
                x = c[0] * batch if fam == "norm" else c[0]
                ax.plot(x, c[1], label=row)
        ax.set_xlabel("examples seen" if fam == "norm" else "optimizer step")
        ax.set_ylabel("training loss (window mean, mean over seeds)")
        ax.set_title(fam)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "loss_curves.png", dpi=110)
    plt.close(fig)

    names = results["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    for i, row in enumerate(names):
        s = results["summary"][row]["test_accuracy"]
        ax.plot([i] * len(s["values"]), 100 * np.asarray(s["values"]), "o", color="0.6", ms=4)
        if s["n"] and math.isfinite(s["low"]) and math.isfinite(s["high"]):
            ax.errorbar([i], [100 * s["mean"]], yerr=[[100 * (s["mean"] - s["low"])],
                                                      [100 * (s["high"] - s["mean"])]],
                        fmt="s", color="tab:blue", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per seed (grey), mean and 95 % CI")
    fig.tight_layout()
    fig.savefig(workdir / "accuracy.png", dpi=110)
    plt.close(fig)
    return ["loss_curves.png", "accuracy.png"]

