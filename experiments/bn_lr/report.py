"""The BN x learning-rate study's results.md, analysis.md and figures, from its results dict.

Every verdict here is read from the stored per-seed outcomes (`grid.claim_verdict`) and the stored
`compare_family` entries (Holm's decisions); nothing is decided by reading means.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import stats_report
from experiments.bn_lr import grid

METRICS = {  # comparison metric -> (words, scale, unit)
    "best_test_accuracy": ("best test accuracy over the grid (rate chosen on validation)",
                           100.0, "pp"),
    "log10_largest_lr_reaching": ("log10 of the largest rate reaching the threshold", 1.0,
                                  "decades"),
    "log10_largest_stable_lr": ("log10 of the largest stable rate", 1.0, "decades"),
}


def _f(x) -> float | None:
    return None if x is None else float(x)


def _pct(x, digits: int = 1) -> str:
    x = _f(x)
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _lr(x) -> str:
    return "none" if x is None else grid.lr_name(float(x))


def _ratio(x) -> str:
    return "-" if x is None else f"{float(x):.3g}"


def _mean_ci(s: Mapping[str, Any], digits: int = 1) -> str:
    if not s.get("n"):
        return "-"
    ci = ("" if s["low"] is None or not math.isfinite(float(s["low"]))
          else f" [{_pct(s['low'], digits)}, {_pct(s['high'], digits)}]")
    return f"{_pct(s['mean'], digits)}{ci}"


def _loss(s: Mapping[str, Any]) -> str:
    if not s.get("n"):
        return "-"
    return f"{float(s['mean']):.3g}"


def setup_line(results: Mapping[str, Any], cfg) -> str:
    d, t, o, st = results["dataset"], cfg.train, cfg.optim, cfg.study
    steps = d["num_train"] // t.batch_size
    seeds = results["seeds"]
    models = "; ".join(f"{k}: {v}" for k, v in results["models"].items())
    lrs = results["learning_rates"]
    return (f"{d['name']}: {d['num_train']} training images, {d['num_val']} validation, "
            f"{d['num_test']} test. Models: {models}. Plain SGD ({o.name}, {o.schedule} rate), "
            f"batch {t.batch_size}, {t.num_epochs} epochs ({steps} steps an epoch), no early "
            f"stopping (the last state is tested), the non-finite guard stops a run after "
            f"{t.max_consecutive_skips} skipped steps in a row. Rates: {len(lrs)} from "
            f"{_lr(lrs[0])} to {_lr(lrs[-1])}, {st.lr_per_decade} per decade. Seeds "
            f"{seeds[0]}..{seeds[-1]} ({len(seeds)}; seed s gives every run the same batch "
            f"order, and BN and no-norm runs of an architecture the same init key), seed mode "
            f"{results['seed_mode']}. Threshold X = {100 * st.threshold:g} % test accuracy. "
            "Definitions (stable, largest rates, censoring, verdicts): experiments/bn_lr/grid.py.")


def _per_lr_comps(results, arch):
    return {c["lr"]: c for c in results["comparisons"]["per_lr"] if c["arch"] == arch}


def grid_table(results: Mapping[str, Any], arch: str) -> str:
    a = results["archs"][arch]
    comps = _per_lr_comps(results, arch)
    lines = [("| lr | BN test acc % (mean [95 % CI]) | BN stable / diverged / collapsed | BN final "
             "train loss | none test acc % | none stable / diverged / collapsed | none final "
             "train loss | Δ BN − none pp [95 % CI] | Holm p |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for bn, none in zip(a["curves"]["batch"], a["curves"]["none"]):
        c = comps.get(bn["lr"], {}).get("inference", {})
        if c.get("n"):
            t = c["t"]
            delta = (f"{stats_report.number(t['mean'], 100, 1, True)} "
                     f"{stats_report.interval(t['low'], t['high'], 100, 1)}")
            p = stats_report.p_value(c.get("p_holm"))
        else:
            delta, p = "-", "-"
        cells = []
        for row in (bn, none):
            cells += [_mean_ci(row["test_accuracy"]),
                      f"{row['stable']} / {row['diverged']} / {row['collapsed']} of {row['n']}",
                      _loss(row["final_train_loss"])]
        lines.append(f"| {_lr(bn['lr'])} | " + " | ".join(cells) + f" | {delta} | {p} |")
    return "\n".join(lines) + "\n"


def largest_table(results: Mapping[str, Any]) -> str:
    x = results["claim"]["threshold"]
    lines = [(f"| arch | seed | largest stable lr BN | none | ratio | outcome | largest lr "
             f"reaching {100 * x:g} % BN | none | ratio | outcome |"),
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for arch, a in results["archs"].items():
        for e in a["per_seed"]:
            lines.append(
                f"| {arch} | {e['seed']} | {_lr(e['batch']['largest_stable_lr'])} | "
                f"{_lr(e['none']['largest_stable_lr'])} | {_ratio(e['ratio_stable'])} | "
                f"{e['outcome_stable']} | {_lr(e['batch']['largest_lr_reaching'])} | "
                f"{_lr(e['none']['largest_lr_reaching'])} | {_ratio(e['ratio_reaching'])} | "
                f"{e['outcome_reaching']} |")
    return "\n".join(lines) + "\n"


def best_table(results: Mapping[str, Any]) -> str:
    lines = [("| arch | seed | BN: rate chosen | BN test acc % | BN best test acc % (oracle) | "
             "none: rate chosen | none test acc % | none best (oracle) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arch, a in results["archs"].items():
        for e in a["per_seed"]:
            b, n = e["batch"], e["none"]
            lines.append(f"| {arch} | {e['seed']} | {_lr(b['best_lr'])} | "
                         f"{_pct(b['best_test_accuracy'], 2)} | {_pct(b['max_test_accuracy'], 2)}"
                         f" | {_lr(n['best_lr'])} | {_pct(n['best_test_accuracy'], 2)} | "
                         f"{_pct(n['max_test_accuracy'], 2)} |")
    return "\n".join(lines) + "\n"


def robustness_table(results: Mapping[str, Any]) -> str:
    archs = list(results["archs"])
    head = " | ".join(f"{a}: ratios per seed | {a}: verdict" for a in archs)
    lines = [f"| threshold X | {head} |", "|---:|" + "---|---|" * len(archs)]
    for row in results["robustness"]:
        cells = []
        for a in archs:
            r = row["archs"][a]
            cells += [", ".join(_ratio(v) for v in r["ratios"]), r["verdict"]]
        lines.append(f"| {100 * row['threshold']:g} % | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main_tables(results: Mapping[str, Any]) -> list[str]:
    comps = results["comparisons"]["main"]
    out = []
    for metric, (words, scale, unit) in METRICS.items():
        rows = [(c["arch"], "none", c["inference"]) for c in comps if c["metric"] == metric]
        if rows:
            out += [f"{words[0].upper() + words[1:]}, BN minus no norm:\n",
                    stats_report.comparison_table(rows, what="arch", scale=scale, unit=unit,
                                                  digits=2)]
    return out


def verdict_lines(results: Mapping[str, Any]) -> str:
    claim = results["claim"]
    x, f = claim["threshold"], claim["factor"]
    lines = []
    for arch, a in results["archs"].items():
        n = len(a["per_seed"])
        lines.append(
            f"- {arch}: the largest rate reaching {100 * x:g} % test accuracy with BN is ≥ "
            f"{f:g}× the largest without in {a['count_reaching']} of {n} seeds (per-seed ratios "
            f"{', '.join(_ratio(e['ratio_reaching']) for e in a['per_seed'])}): "
            f"**{a['verdict']}**; largest stable rate ≥ {f:g}× in {a['count_stable']} of {n} "
            f"seeds (ratios {', '.join(_ratio(e['ratio_stable']) for e in a['per_seed'])}): "
            f"{a['verdict_stable']}.")
    lines.append(f"- {claim['id']} over the architectures: **{claim['verdict']}** (the ledger's "
                 f"threshold reading); on the largest stable rate: {claim['verdict_stable']}.")
    return "\n".join(lines) + "\n"


def format_results(results: Mapping[str, Any], cfg, command: str, wall: float) -> list[str]:
    md = [(f"# BatchNorm and the learning rate (chapter 12.4.4)\n\nCommand: `{command}` "
          f"({wall:.0f} s)\n"), setup_line(results, cfg) + "\n"]
    for arch in results["archs"]:
        md += [f"## {grid.LABELS[arch]}: test accuracy over the grid\n",
               ("Mean over seeds with the t interval; stable / diverged / collapsed: counts of "
               "seeds (`grid`); final train loss: mean over seeds of the last epoch's training "
               "loss. Δ: paired by seed, Holm over every rate of both architectures (family "
               "'per_lr').\n"), grid_table(results, arch)]
    md += ["## Largest learning rates, per seed\n",
           ("Ratio = BN's largest rate / no norm's; 'none': no rate of the grid qualifies; the "
           "outcome accounts for censoring at the grid's top rate (`grid.seed_outcome`).\n"),
           largest_table(results),
           "## Best accuracy over the grid\n",
           ("Per seed, the rate with the highest final validation accuracy and its test "
           "accuracy (the oracle column is the best test accuracy over the grid).\n"),
           best_table(results),
           "## Paired comparisons (family 'main')\n",
           ("Per-seed differences BN minus no norm (seeds where both values exist); intervals by "
           "Student's paired t and the exact bootstrap over seeds; p-values Holm-adjusted over "
           "the comparisons of the three tables; on the discrete grid a log10 difference is a "
           "multiple of 1 / lr_per_decade, and equal nonzero values in every seed give a "
           "zero-width interval and p = 0 (`inference.paired_t`'s convention): read that as "
           "'the same in every seed', not as a level of significance.\n"), *main_tables(results),
           "## Robustness: the claim at other thresholds (same runs)\n",
           robustness_table(results),
           "## Verdicts\n", verdict_lines(results)]
    md.append("Figures: " + ", ".join(results.get("figures", FIGURES)) + "\n")
    return md


FIGURES = ("accuracy_vs_lr.png", "train_loss_vs_lr.png")


def _figure(n_panels: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5.2 * n_panels, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return fig, axes


def write_figures(results: Mapping[str, Any], cfg, workdir) -> list[str]:
    """accuracy_vs_lr.png (test accuracy, mean and 95 % t band over seeds, per architecture)
    and train_loss_vs_lr.png (final train loss per run, log scale; open markers: not stable; a
    run whose final loss is not finite is not drawn)."""
    workdir = pathlib.Path(workdir)
    archs = list(results["archs"])
    x_thr = results["claim"]["threshold"]
    fig, axes = _figure(len(archs))
    for ax, arch in zip(axes, archs):
        for norm, color in zip(grid.NORMS, ("C0", "C3")):
            rows = results["archs"][arch]["curves"][norm]
            lr = np.array([r["lr"] for r in rows])
            mean = np.array([np.nan if r["test_accuracy"]["mean"] is None
                             else 100 * r["test_accuracy"]["mean"] for r in rows])
            low = np.array([np.nan if r["test_accuracy"]["low"] is None
                            else 100 * r["test_accuracy"]["low"] for r in rows])
            high = np.array([np.nan if r["test_accuracy"]["high"] is None
                             else 100 * r["test_accuracy"]["high"] for r in rows])
            ax.plot(lr, mean, "o-", color=color, label=grid.LABELS[norm])
            ax.fill_between(lr, np.clip(low, 0, 100), np.clip(high, 0, 100), color=color,
                            alpha=0.2, lw=0)
        ax.axhline(100 * x_thr, color="grey", ls="--", lw=1, label=f"X = {100 * x_thr:g} %")
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("learning rate (plain SGD)")
        ax.set_ylabel("test accuracy % (mean, 95 % t band over seeds)")
        ax.set_title(f"{grid.LABELS[arch]} (models: results.md)", fontsize="small")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(workdir / FIGURES[0])
    fig, axes = _figure(len(archs))
    for ax, arch in zip(axes, archs):
        for norm, color in zip(grid.NORMS, ("C0", "C3")):
            rs = [r for r in results["runs"] if r["arch"] == arch and r["norm"] == norm]
            for stable in (True, False):
                pts = [(r["lr"], r["final_train_loss"]) for r in rs if bool(r["stable"]) == stable
                       and r["final_train_loss"] is not None
                       and math.isfinite(r["final_train_loss"])]
                if pts:
                    ax.scatter(*zip(*pts), color=color if stable else "none", edgecolors=color,
                               s=22, label=f"{grid.LABELS[norm]}" + ("" if stable
                                                                     else ", not stable"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate (plain SGD)")
        ax.set_ylabel("final train loss (last epoch, each seed)")
        ax.set_title(grid.LABELS[arch], fontsize="small")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(workdir / FIGURES[1])
    return list(FIGURES)


def _arch_measure(results: Mapping[str, Any], arch: str) -> str:
    a, x = results["archs"][arch], results["claim"]["threshold"]
    ps = a["per_seed"]
    ls = lambda norm, key: ", ".join(_lr(e[norm][key]) for e in ps)
    best = [c for c in results["comparisons"]["main"]
            if c["arch"] == arch and c["metric"] == "best_test_accuracy"]
    best_txt = (f" Best accuracy over the grid, BN minus none: "
                f"{stats_report.formal(best[0]['inference'])}." if best else "")
    reached = sum(e["none"]["largest_lr_reaching"] is not None for e in ps)
    above = _above_ceiling(results, arch)
    return (f"{grid.LABELS[arch]}: without BN some rate reaches {100 * x:g} % in {reached} of "
            f"{len(ps)} seeds. {above}"
            f"Largest rate reaching {100 * x:g} % with BN {ls('batch', 'largest_lr_reaching')}"
            f", without {ls('none', 'largest_lr_reaching')} (seeds {', '.join(str(e['seed']) for e in ps)}); "
            f"ratio ≥ {results['claim']['factor']:g} in {a['count_reaching']} of {len(ps)} seeds → "
            f"{a['verdict']}. Largest stable rate with BN {ls('batch', 'largest_stable_lr')}, "
            f"without {ls('none', 'largest_stable_lr')} → {a['verdict_stable']}.{best_txt}")


def _above_ceiling(results: Mapping[str, Any], arch: str) -> str:
    """What BN does one grid step above its own largest stable rate (the ceiling it moves)."""
    ps = results["archs"][arch]["per_seed"]
    tops = {e["batch"]["largest_stable_lr"] for e in ps}
    lrs = sorted(results["learning_rates"])
    if len(tops) != 1 or None in tops or max(tops) >= lrs[-1]:
        return ""
    nxt = lrs[lrs.index(min(lrs, key=lambda v: abs(v - next(iter(tops))))) + 1]
    rs = [r for r in results["runs"] if r["arch"] == arch and r["norm"] == "batch"
          and math.isclose(r["lr"], nxt)]
    bad = sum(not r["stable"] for r in rs)
    acc = ", ".join(_pct(r["test_accuracy"]) for r in rs)
    return (f"BN moves the ceiling, it does not remove it: at lr {_lr(nxt)}, one step above its "
            f"largest stable rate, the BN network is not stable in {bad} of {len(rs)} seeds "
            f"(test accuracy {acc} %). ")


def format_analysis(results: Mapping[str, Any], cfg) -> str:
    claim = results["claim"]
    archs = list(results["archs"])
    settle = {
        "confirmed": "",
        "refuted": "",
        "partly": " The architectures disagree: the claim holds for one and not the other.",
        "inconclusive": (" Seeds disagree or some ratio is undetermined (a largest rate missing "
                         "or censored at the grid's top): more seeds, a finer grid (more rates "
                         "per decade) or a wider one would settle it."),
    }
    lines = [
        "# Analysis: BatchNorm and the learning rate\n",
        f"Setup: {setup_line(results, cfg)}\n",
        f"## {claim['id']} ({claim['section']})\n",
        f"Chapter: \"{claim['quote']}\"\n",
        (f"Ledger: {claim['ledger']}. Here: the plain CNN and a ResNet instead of the MLP, the "
        f"study's own budget (above), threshold X = {100 * claim['threshold']:g} % test "
        "accuracy, fixed in the config before the grid ran (the ledger's 95 % is beyond what "
        "the networks without BN reach in this budget); the robustness table of results.md "
        "gives the verdict at other thresholds from the same runs.\n"),
        "Measured:\n",
        "\n".join(f"- {_arch_measure(results, a)}" for a in archs) + "\n",
        (f"Verdict: **{claim['verdict']}** (threshold reading; largest stable rate: "
        f"{claim['verdict_stable']}).{settle.get(claim['verdict'], '')}\n"),
        ("Verdicts come from the per-seed outcomes (`grid.claim_verdict`): confirmed when every "
         "seed's ratio is ≥ the factor, refuted when every seed's is below it, inconclusive "
         "otherwise. The grid is discrete, so a ratio is a power of the grid step: '≥ 10' at "
         "×√10 steps means at least two grid steps.\n"),
        resolution_line(cfg.study.lr_per_decade) + "\n",
        ("Per-rate differences in test accuracy, BN minus none (paired by seed, Holm over every "
         "rate of both architectures; only those Holm's procedure decides):\n"),
        per_lr_lines(results) + "\n",
    ]
    return "\n".join(lines)


def resolution_line(per_decade: int) -> str:
    step = 10 ** (1 / per_decade)
    return (f"Resolution: a largest rate L on the grid means the true largest rate lies in "
            f"[L, {step:.3g} L), so a grid ratio R means a true ratio in (R / {step:.3g}, "
            f"{step:.3g} R): a measured 10 is anything from {10 / step:.3g}x to {10 * step:.3g}x. "
            "The verdict reads the grid, as the ledger's criterion does; a finer grid "
            "(`--config.lr_per_decade=4`) would narrow the interval.")


def per_lr_lines(results: Mapping[str, Any]) -> str:
    out = []
    for c in results["comparisons"]["per_lr"]:
        inf = c["inference"]
        if inf.get("decision") == "differs":
            side = "above" if float(inf["mean"]) > 0 else "below"
            out.append(f"- {grid.LABELS[c['arch']]}, lr {_lr(c['lr'])}: BN is {side} no norm, "
                       f"{stats_report.formal(inf)}.")
    return "\n".join(out) if out else "- none."
