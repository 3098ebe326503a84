"""The SAM x dropout study's results.md, analysis.md and figures, from its results dict.

Every verdict here is the one stored by the rules in `rows` (stated before the run) on the
paired-t intervals; nothing is decided by reading means. Foret et al. (2021) for SAM.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments import stats_report

# metric -> (column title, scale, digits)
COLUMNS = {"test_accuracy": ("test accuracy %", 100.0, 2),
           "gap": ("train − test gap pp", 100.0, 2),
           "lambda_power": ("λ_max, power iteration", 1.0, 3),
           "lambda_lanczos": ("λ_max, Lanczos", 1.0, 3),
           "epsilon_sharpness": ("ε-sharpness (ρ ball)", 1.0, 4)}


def _num(x, scale=1.0, digits=2) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{scale * float(x):.{digits}f}"


def cell(s: Mapping[str, Any], scale: float, digits: int) -> str:
    """'mean [low, high]' of a row summary's metric."""
    return (f"{_num(s['mean'], scale, digits)} [{_num(s['low'], scale, digits)}, "
            f"{_num(s['high'], scale, digits)}]")


def setup_line(results: Mapping[str, Any], cfg) -> str:
    d, o, t, st = results["dataset"], cfg.optim, cfg.train, cfg.study
    return (f"{d['name']}: {d['num_train']} training images, {d['num_val']} validation, "
            f"{d['num_test']} test. {results['model']}. SGD momentum {o.momentum:g}, lr "
            f"{o.learning_rate:g} ({o.schedule}), coupled L2 {o.l2:g}, batch {t.batch_size}, "
            f"{t.num_epochs} epochs, last state tested. SAM rho {st.sam_rho:g}; dropout "
            f"{st.drop_rate:g}. Seeds {results['seeds'][0]}..{results['seeds'][-1]}, paired "
            "(same init key and batch order in every row). Sharpness on "
            f"{st.sharpness_examples or 'all'} training images, evaluation mode.")


def row_table(results: Mapping[str, Any]) -> str:
    head = " | ".join(c[0] for c in COLUMNS.values())
    lines = [f"| row | {head} |", "|---|" + "---:|" * len(COLUMNS)]
    for row, s in results["rows"].items():
        cells = " | ".join(cell(s[m], sc, dg) for m, (_, sc, dg) in COLUMNS.items())
        lines.append(f"| {results['labels'][row]} (`{row}`) | {cells} |")
    return "\n".join(lines) + "\n"


def per_seed_table(results: Mapping[str, Any]) -> str:
    lines = ["| row | seed | test % | train % (eval mode, tested state) | λ_max power | λ_max Lanczos | "
             "ε-sharpness | train s | sharpness s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, runs in results["runs"].items():
        for r in runs:
            lines.append(f"| {row} | {r['seed']} | {_num(r['test_accuracy'], 100)} | "
                         f"{_num(r['train_accuracy'], 100)} | {_num(r['lambda_power'], 1, 3)} | "
                         f"{_num(r['lambda_lanczos'], 1, 3)} | "
                         f"{_num(r['epsilon_sharpness'], 1, 4)} | {r['wall_time_s']:.0f} | "
                         f"{_num(r['sharpness_time_s'], 1, 0)} |")
    return "\n".join(lines) + "\n"


def _scale(c) -> tuple[float, int, str]:
    return (100.0, 2, "pp") if c["metric"] == "test_accuracy" else (1.0, 3, "")


def comparison_tables(results: Mapping[str, Any]) -> list[str]:
    out = []
    comps = results["comparisons"]
    for family in ("sharpness", "accuracy"):
        names = [n for n, c in comps.items() if c["family"] == family]
        if not names:
            continue
        sc, dg, unit = _scale(comps[names[0]])
        out += [f"### Family '{family}' (Holm over its {len(names)} comparisons)\n",
                stats_report.comparison_table([(n, comps[n]["question"], comps[n]["inference"])
                                               for n in names], what="comparison", scale=sc,
                                              digits=dg, unit=unit or "(λ)")]
    return out


def formal(c: Mapping[str, Any]) -> str:
    sc, dg, unit = _scale(c)
    return stats_report.formal(c["inference"], scale=sc, digits=dg, unit=unit)


def format_results(results: Mapping[str, Any], cfg, command: str) -> list[str]:
    md = ["# SAM against SGD + L2, with and without dropout (chapter ★R2; Foret et al. 2021)\n",
          f"Command: `{command}` ({results['wall_time_s']:.0f} s; training "
          f"{results['train_time_s']:.0f} s, sharpness {results['sharpness_time_s']:.0f} s)\n",
          setup_line(results, cfg) + "\n",
          "## Per row: mean [95 % CI, t over seeds]\n", row_table(results),
          "## Paired comparisons\n",
          ("Per-seed differences (the interaction is a per-seed difference in differences); "
           "intervals by Student's paired t and the exact bootstrap; Holm within each family "
           "(`analysis.inference`).\n"),
          *comparison_tables(results),
          "## Verdicts (rules in experiments/sam_dropout/rows.py, fixed before the run)\n"]
    for cid, c in results["claims"].items():
        md.append(f"- **{cid}** (\"{c['quote']}\"): **{c['verdict']}**. Criterion: "
                  f"{c['criterion']}.\n")
    md += ["## Per seed\n", per_seed_table(results), "Figures: accuracy.png, sharpness.png\n"]
    return md


def format_analysis(results: Mapping[str, Any], cfg) -> str:
    comps, rws = results["comparisons"], results["rows"]
    c7a, c7b = results["claims"]["EXP-07a"], results["claims"]["EXP-07b"]
    md = ["# ★R2: does SAM find flatter minima, and does it reduce the need for dropout?\n",
          setup_line(results, cfg) + "\n",
          row_table(results),
          f"## EXP-07a ({c7a['section']}): \"{c7a['quote']}\"\n",
          f"Ledger criterion: {c7a['criterion']}.\n"]
    for n in c7a["comparisons"]:
        if n in comps:
            md.append(f"- {comps[n]['question']}: {formal(comps[n])}.\n")
    md.append(f"Verdict: **{c7a['verdict']}**.\n")
    md += [f"## EXP-07b ({c7b['section']}): \"{c7b['quote']}\"\n",
           f"Rule: {c7b['criterion']} (non-inferiority margin {100 * c7b['margin']:g} pp).\n"]
    for n in c7b["comparisons"]:
        if n in comps:
            md.append(f"- {comps[n]['question']}: {formal(comps[n])}.\n")
    md.append(f"Verdict: **{c7b['verdict']}**.\n")
    if c7b["verdict"] == "inconclusive":
        d = comps.get("acc: dropout under sgd", {}).get("inference", {})
        sd = d.get("t", {}).get("sd", math.nan) if d else math.nan
        hurts = bool(d) and d.get("t", {}).get("high", 0.0) < 0
        if hurts:
            md.append("What would settle it: dropout *hurts* under SGD here (D_sgd's CI lies "
                      "below 0), so more seeds cannot confirm the claim at this setting; it "
                      "needs a setting where dropout helps (a smaller rate, dropout on more "
                      "than the head, a longer budget, or the full CIFAR-10 config).\n")
        else:
            md.append("What would settle it: the rule needs dropout to help measurably under SGD "
                  "first (D_sgd's CI above 0); "
                  + (f"the paired sd of D_sgd is {100 * sd:.2f} pp over {d.get('n')} seeds, "
                     f"so more seeds or a setting where dropout matters more (the full CIFAR-10 "
                     "config, dropout on more than the head) would." if d else "") + "\n")
    md += ["## The other comparisons\n"]
    for n, c in comps.items():
        if n not in c7a["comparisons"] + c7b["comparisons"]:
            md.append(f"- {c['question']}: {formal(c)}.\n")
    lam = rws.get("sgd", {}).get("lambda_power")
    if lam:
        md.append(f"- For scale: λ_max of SGD alone is {cell(lam, 1.0, 3)}; the power iteration "
                  "and Lanczos estimates agree per run (table in results.md).\n")
    return "\n".join(md)


def write_figures(results: Mapping[str, Any], workdir) -> list[str]:
    """accuracy.png (test accuracy per row) and sharpness.png (λ_max by power iteration per
    row): every seed, the mean and its 95 % CI."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = pathlib.Path(workdir)
    out = []
    for name, metric, scale, label in (("accuracy.png", "test_accuracy", 100.0,
                                        "test accuracy (%)"),
                                       ("sharpness.png", "lambda_power", 1.0,
                                        "λ_max (power iteration)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (row, s) in enumerate(results["rows"].items()):
            m = s[metric]
            ax.plot([i] * len(m["values"]), scale * np.asarray(m["values"]), "o", color="0.6",
                    ms=4)
            if math.isfinite(m["low"]) and math.isfinite(m["high"]):
                ax.errorbar([i], [scale * m["mean"]], yerr=[[scale * (m["mean"] - m["low"])],
                                                            [scale * (m["high"] - m["mean"])]],
                            fmt="s", color="tab:blue", capsize=4)
        ax.set_xticks(range(len(results["rows"])), list(results["rows"]), rotation=15)
        ax.set_ylabel(label)
        ax.set_title("per seed (grey), mean and 95 % CI")
        fig.tight_layout()
        fig.savefig(workdir / name, dpi=120)
        plt.close(fig)
        out.append(name)
    return out
