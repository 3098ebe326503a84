"""The factorial study's reports: results.md (tables), analysis.md (verdicts from the numbers), the figure.

Every interval is a 95 % interval over seeds of a per-seed estimate (each seed replicates the
whole design, so each seed gives one estimate of every effect): Student's t and the exact
percentile bootstrap; p-values are Holm-adjusted within each table (`inference.compare_family`).
Effects are in percentage points of test accuracy. A decision "differs" means the Holm-adjusted
p <= 0.05; "undecided" that the seeds cannot tell the effect from 0.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import stats_report as sr
from experiments.ablation.rows import EXPERIMENTS
from experiments.factorial import factors as factors_lib

FIGURE = "factorial.png"
# Why each interaction the chapter discusses could be nonzero: hypotheses the sign tests.
_INTERACTION_HYPOTHESES = {
    "bn × dropout": "the chapter (section 16, claim EXP-04): BatchNorm's batch noise regularizes "
                    "and \"reduces the need for aggressive dropout\", i.e. a negative interaction "
                    "(dropout helps less with BN on); dropout before a BN layer also shifts the "
                    "variance BN normalizes by between training and test (Li et al. 2019)",
    "bn × l2": "with BatchNorm after a Dense layer its kernel is scale-invariant, so L2 no longer "
               "limits the function, only the effective learning rate (van Laarhoven 2017): L2's "
               "effect should change when BN is switched on",
    "smoothing × augment": "two regularizers of the same overconfidence (targets vs inputs): if "
                           "they overlap, each helps less with the other on (negative)",
}


def _pp(x: float | str, digits: int = 2, sign: bool = True) -> str:
    return sr.number(x, 100.0, digits, sign)


def _ci(comp: Mapping[str, Any]) -> str:
    t = comp["t"]
    return sr.interval(t["low"], t["high"])


def _alias_text(aliases: Sequence[str]) -> str:
    return "; ".join(aliases) if aliases else "none (full design)"


def _excludes_zero(comp: Mapping[str, Any]) -> bool:
    """Whether the unadjusted 95 % t interval lies on one side of 0."""
    low, high = float(comp["t"]["low"]), float(comp["t"]["high"])
    return math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0)


def _verdict(comp: Mapping[str, Any]) -> str:
    if not comp.get("n"):
        return "no seed"
    d, mean = comp.get("decision", "undecided"), float(comp["t"]["mean"])
    if d == "differs":
        return "helps" if mean > 0 else "hurts"
    return "not resolved"


def chapter_steps() -> dict[str, float | None]:
    """The chapter's credit of each factor in its own order (row minus the row before it in the
    chain small_init -> he -> he_bn -> ... ; init spans Xavier and He), from `rows.EXPERIMENTS`."""
    chain = [factors_lib.FIRST_ROW] + [f.row for f in factors_lib.FACTORS]
    out = {}
    for r, f in enumerate(factors_lib.FACTORS, start=1):
        a, b = EXPERIMENTS[chain[r]].expected_accuracy, EXPERIMENTS[chain[r - 1]].expected_accuracy
        out[f.name] = None if a is None or b is None else a - b
    return out


# --------------------------------------------------------------------------- results.md


def format_setup(results: Mapping[str, Any]) -> list[str]:
    s = results["study"]
    ds = s["dataset"]
    gens = " = ".join(["I"] + ["·".join(w) for w in s["generators"]])
    res = s["resolution"]
    res_text = "full design (nothing aliased)" if float(res) == math.inf else (
        f"resolution {int(float(res))}: every main effect and two-way interaction estimable, "
        "aliased only with higher-order interactions (listed in the tables) that the model "
        "assumes to be zero")
    design = (f"2^({len(s['factors'])}-{len(s['generators'])}) fraction, defining relation "
              f"{gens}" if s["generators"] else f"full 2^{len(s['factors'])} design")
    epochs = [r["epochs_run"] for c in results["cells"].values() for r in c["runs"]]
    capped = _capped(results)
    held = [n for n in factors_lib.NAMES if n not in s["factors"]]
    lines = [
        f"Design: {design}; {res_text}. {s['cells']} cells x {len(s['seeds'])} seeds = "
        f"{s['cells'] * len(s['seeds'])} runs ({s['runs']} finished; analysed over seeds "
        f"{', '.join(map(str, s['seeds_analysed'])) or 'none'}, paired: seed s is the same init "
        "key and batch order in every cell).",
        f"Factors (0 = off / 1 = on): " + "; ".join(
            f"{f['name']} ({f['label']}, ablation row {EXPERIMENTS[f['ablation_row']].row_id})"
            for f in results["factors"] if f["name"] in s["factors"])
        + (f". Held off: {', '.join(held)}." if held else "."),
        f"Model (the all-off cell's) {s['model']}; {ds['name']}: {ds['num_train']} train / "
        f"{ds['num_val']} val / "
        f"{ds['num_test']} test images. Epochs run per run: "
        + (f"{min(epochs)}-{max(epochs)} (mean {np.mean(epochs):.1f}; {capped} of "
           f"{len(epochs)} runs stopped by the epoch budget, not by patience)" if epochs else "-")
        + f". Study wall time {s['wall_time_s']:.0f} s (summed training {s['train_time_s']:.0f} s),"
        f" seed mode {s['seed_mode']}.",
    ]
    return lines


def _capped(results: Mapping[str, Any]) -> int:
    return sum(r["stop_reason"] == "max_epochs" for c in results["cells"].values()
               for r in c["runs"])


def effects_table(results: Mapping[str, Any]) -> str:
    rows = [(e["name"], "aliased with " + _alias_text(e["aliases"]), e["inference"])
            for e in results["effects"]]
    return sr.comparison_table(rows, what="effect")


def shapley_table(results: Mapping[str, Any]) -> str:
    chap = chapter_steps()
    order = {m["factor"]: m for m in (results["chapter_order"] or {}).get("model_credits", [])}
    lines = ["| technique | Shapley φ (pp) | 95 % CI, t | 95 % CI, bootstrap | p (Holm) | verdict | "
             "chapter-order credit, model (pp) | order credit − φ (pp) | 95 % CI | p (Holm) | "
             "chapter's step (pp) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["shapley"]:
        comp, name = s["inference"], s["factor"]
        boot = comp["bootstrap"]
        m = order.get(name)
        gap = m["minus_shapley"]["inference"] if m else None
        step = chap.get(name)
        lines.append(
            f"| {name} | {_pp(comp['t']['mean'])} | {_ci(comp)} | "
            f"{sr.interval(boot['low'], boot['high'])} | {sr.p_value(comp.get('p_holm'))} | "
            f"{_verdict(comp)} | "
            + (f"{_pp(m['inference']['t']['mean'])} {_ci(m['inference'])} | "
               f"{_pp(gap['t']['mean'])} | {_ci(gap)} | {sr.p_value(gap.get('p_holm'))} | "
               if m else "- | - | - | - | ")
            + ("-" if step is None else f"{100 * step:+.1f}") + " |")
    return "\n".join(lines) + "\n"


def steps_table(results: Mapping[str, Any]) -> str:
    order = results["chapter_order"]
    lines = ["| step (ablation rows) | techniques added | measured Δ (pp) | 95 % CI, t | p (Holm) | "
             "Σ φ of those (pp) | Δ − Σ φ (pp) | 95 % CI | p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in order["measured_steps"]:
        rows = " → ".join(_row_label(r, c) for r, c in ((s["from_row"], s["from"]),
                                                          (s["to_row"], s["to"])))
        gap = s["minus_shapley"]["inference"]
        lines.append(f"| {rows} | {' + '.join(s['added'])} | {_pp(s['inference']['t']['mean'])} | "
                     f"{_ci(s['inference'])} | {sr.p_value(s['inference'].get('p_holm'))} | "
                     f"{_pp(float(np.mean(s['shapley_sum'])))} | {_pp(gap['t']['mean'])} | "
                     f"{_ci(gap)} | {sr.p_value(gap.get('p_holm'))} |")
    return "\n".join(lines) + "\n"


def _row_label(row: str | None, cell: str) -> str:
    return f"{EXPERIMENTS[row].row_id} ({cell})" if row else cell


def unreadable_rows(results: Mapping[str, Any]) -> str:
    chain = results["chapter_order"]["chain"]
    missing = [_row_label(c["ablation_row"], c["cell"]) for c in chain if not c["in_design"]]
    text = ("The chapter's order switches the techniques on one at a time; its chain of cells is "
            + ", ".join(_row_label(c["ablation_row"], c["cell"]) + (" (in the design)" if
                                                                    c["in_design"] else "")
                        for c in chain) + ". ")
    if missing:
        text += (f"The cells {', '.join(missing)} lie outside this fraction, so the one-technique "
                 "steps into and out of them cannot be measured here: the measured steps above "
                 "add several techniques at once, and the per-technique chapter-order credits "
                 "are the fitted two-way model's predictions. ")
    if "init" in results["study"]["factors"]:
        text += ("The ablation's row 2 (Xavier) is no cell: the init factor goes from row 1's "
                 "init straight to row 3's (He hidden, Xavier output).")
    return text


def higher_table(results: Mapping[str, Any]) -> str:
    rows = [(h["name"], "+ " + _alias_text(h["aliases"]), h["inference"])
            for h in results["higher_order"]]
    return sr.comparison_table(rows, what="three-way column")


def ablation_table(results: Mapping[str, Any]) -> str:
    ab = results["ablation"]
    lines = ["| technique | ablation step | ablation Δ (pp) | 95 % CI, t | seeds | Shapley φ here "
             "(pp) | 95 % CI |", "|---|---|---|---|---|---|---|"]
    for r in ab["rows"]:
        c = r["comparison"]
        step = f"{EXPERIMENTS[r['row']].row_id} {r['row']} − {EXPERIMENTS[r['parent']].row_id} {r['parent']}"
        lines.append(f"| {r['factor']} | {step} | "
                     + (f"{_pp(c['t']['mean'])} | {_ci(c)} | {len(r['seeds'])} | " if c else
                        "not in that results.json | - | - | ")
                     + f"{_pp(r['shapley']['t']['mean'])} | {_ci(r['shapley'])} |")
    return "\n".join(lines) + "\n"


def cells_table(results: Mapping[str, Any]) -> str:
    seeds = results["study"]["seeds"]
    lines = ["| # | cell (techniques on) | ablation row | test accuracy (%) | epochs | "
             + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|---|" + "---|" * len(seeds)]
    for name, c in results["cells"].items():
        by = {r["seed"]: r for r in c["runs"]}
        acc = c["test_accuracy"]
        row = c["ablation_row"]
        lines.append(
            f"| {c['index']} | {name} | {'' if row is None else EXPERIMENTS[row].row_id + ' ' + row} | "
            + ("-" if acc is None else f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}") + " | "
            + (f"{np.mean([r['epochs_run'] for r in c['runs']]):.1f}" if c["runs"] else "-")
            + " | " + " | ".join(f"{100 * by[s]['test_accuracy']:.2f}" if s in by else ""
                                 for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def format_results(results: Mapping[str, Any]) -> list[str]:
    """results.md as lines: setup, effects, Shapley values, the chapter's order, checks, cells."""
    s = results["study"]
    out = [f"# Factorial attribution on {s['dataset']['name']}: the chapter's techniques without "
           "an order", ""]
    if not s["complete"]:
        out += ["**Incomplete: the study was interrupted; rerun the command to resume.**", ""]
    if s.get("command"):
        out += ["```", s["command"], "```", ""]
    out += [" ".join(format_setup(results)), ""]
    if not results["effects"]:
        out += ["No seed finished in every cell: nothing to estimate yet.", "", cells_table(results)]
        return out
    out += ["## Main effects and two-way interactions (test accuracy, pp)", "", effects_table(results),
            "Effect = 2 b from the per-seed least-squares fit of the ±1-coded model (intercept, "
            "main effects, two-way interactions). A main effect is mean(on) − mean(off) over the "
            "cells; an interaction A × B is half the change of A's effect when B is switched on "
            "(negative: each helps less with the other on). Holm over the table.", "",
            "## Shapley values: each technique's order-free share", "", shapley_table(results)]
    tot = results["shapley_total"]
    line = (f"Σ φ = {_pp(float(np.mean(tot['sum_phi'])))} pp = the model's v(all) − v(none) "
            f"({_pp(float(np.mean(tot['model_all_minus_none'])))} pp)")
    if tot["measured_all_minus_none"] is not None:
        line += (f"; measured all-on − all-off cell: "
                 f"{_pp(float(np.mean(tot['measured_all_minus_none'])))} pp (the difference is "
                 "the higher-order columns' share)")
    out += [line + ".", "",
            "φ_i = a_i + ½ Σ_j c_ij for v(S) = c0 + Σ_{i∈S} a_i + Σ_{i<j∈S} c_ij, the fitted "
            "model in 0/1 coding (v(S) = test accuracy with exactly the techniques in S on), per "
            "seed. Exact only if three-way and higher interactions vanish; under this model φ_i "
            "equals the main effect. \"Chapter-order credit\": v(first r techniques on) − "
            "v(first r − 1 on) in the ablation's order, from the same fitted model; \"order "
            "credit − φ\" is what the order adds or takes away (½ Σ_j c_ij over the techniques "
            "before it minus those after it). Chapter's step: its MNIST table, row minus the row "
            "before it (init: row 3 − row 1).", "",
            "## The chapter's order, measured on the cells of its rows that are in the design", "",
            steps_table(results), unreadable_rows(results), ""]
    if results["higher_order"]:
        out += ["## Check of the two-way model: the design's three-way columns", "",
                higher_table(results),
                "Each column is the sum of the interactions named (aliased in this design). "
                "All zero is what the Shapley values assume; a real three-way effect e would "
                "move φ of each of its three techniques by e / 3.", ""]
    if results.get("ablation"):
        ab = results["ablation"]
        ds = ab["dataset"]
        out += ["## Against the ablation's order-dependent contributions", "",
                f"From {ab['path']}: {ds.get('name')}, {ds.get('num_train')} train images, "
                f"{ab['model']}, up to {ab['num_epochs']} epochs, early stopping on "
                f"{ab['early_stopping']}. Another budget than this study's: the columns are "
                "compared by eye, not paired.", "", ablation_table(results)]
    out += ["## Cells", "", cells_table(results)]
    v = results["versions"]
    out += ["Versions: " + ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "optax", "numpy",
                                                            "python") if k in v) + ".", ""]
    return out


# --------------------------------------------------------------------------- analysis.md


def format_analysis(results: Mapping[str, Any]) -> str:
    """Verdicts from the numbers: ranking, interactions, the order's distortion, the model check."""
    s = results["study"]
    out = [f"# Analysis: order-free attribution on {s['dataset']['name']}", ""]
    if not results["effects"]:
        return "\n".join(out + ["No seed finished in every cell yet.", ""])
    n = len(s["seeds_analysed"])
    chap = chapter_steps()
    ranked = sorted(results["shapley"], key=lambda x: -float(x["inference"]["t"]["mean"]))
    out += ["## Which technique helps, whatever the order", ""]
    for i, x in enumerate(ranked, 1):
        step = chap.get(x["factor"])
        out.append(f"{i}. **{x['factor']}**: φ {sr.formal(x['inference'])} ({_verdict(x['inference'])}"
                   + ("" if step is None else f"; the chapter's step in its order: {100 * step:+.1f} pp")
                   + ").")
    out += ["", f"Over {n} seeds. \"Not resolved\": not distinguishable from 0 after Holm; it is "
            "not evidence of no effect (the \"detectable at 80 %\" column of results.md says how "
            "large an effect these seeds would have caught).", ""]
    against = []
    for x in results["shapley"]:
        step, t = chap.get(x["factor"]), x["inference"]["t"]
        if step is None or not math.isfinite(float(t["low"])):
            continue
        inside = float(t["low"]) <= step <= float(t["high"])
        against.append(f"{x['factor']} ({100 * step:+.1f} pp {'inside' if inside else 'outside'} "
                       f"[{_pp(t['low'])}, {_pp(t['high'])}])")
    if against:
        out += ["Against the chapter: its table credits each technique with its own row's step "
                "(a single run per row, full MNIST, its order). Whether that step lies inside "
                "this study's 95 % interval of the technique's order-free share: "
                + "; ".join(against) + ". Outside means that the chapter's number is not the "
                "technique's share at this budget; the budget differs from the chapter's (see "
                "Scope), so this is a statement about the attribution here, not a replication "
                "of its absolute accuracies.", ""]
    out += ["## The interactions the chapter discusses", ""]
    by_name = {e["name"]: e for e in results["effects"]}
    for a, b in (("bn", "dropout"), ("bn", "l2"), ("smoothing", "augment")):
        name = f"{a} × {b}"
        if name not in by_name:
            continue
        comp = by_name[name]["inference"]
        direction = ("negative: each helps less with the other on" if comp["t"]["mean"] < 0
                     else "positive: each helps more with the other on")
        out.append(f"- **{name}**: {sr.formal(comp)} ({direction}). Hypothesis: "
                   f"{_INTERACTION_HYPOTHESES[name]}. Verdict: "
                   + ("the interaction is real at this budget." if comp.get("decision") == "differs"
                      else "not distinguishable from 0 here (additive within the seeds' "
                           f"resolution, detectable at 80 %: {_pp(comp['mde'], sign=False)} pp)."))
    others = [e for e in results["effects"] if e["order"] == 2 and e["name"] not in
              {f"{a} × {b}" for a, b in (("bn", "dropout"), ("bn", "l2"), ("smoothing", "augment"))}
              and e["inference"].get("decision") == "differs"]
    if others:
        out.append("- Other interactions that differ after Holm: " + "; ".join(
            f"{e['name']} {sr.formal(e['inference'])}" for e in others) + ".")
    out.append("")
    candidates = [e["name"] for e in results["effects"]
                  if e["inference"].get("decision") != "differs" and _excludes_zero(e["inference"])]
    if candidates:
        m = len(results["effects"])
        out += [f"With {n} seeds a table of {m} effects is a weak test: Holm needs p <= 0.05/{m} "
                "for its first call. Effects whose unadjusted 95 % interval excludes 0 but that do "
                "not survive Holm, candidates for more seeds: " + ", ".join(candidates) + ".", ""]
    order = results["chapter_order"]
    out += ["## What the chapter's order does to the credits", ""]
    phi = {x["factor"]: x["inference"]["t"]["mean"] for x in results["shapley"]}
    gaps = sorted(order["model_credits"],
                  key=lambda m: -abs(float(m["minus_shapley"]["inference"]["t"]["mean"])))
    for m in gaps:
        g = m["minus_shapley"]["inference"]
        out.append(f"- {m['factor']}: credited {_pp(m['inference']['t']['mean'])} pp in the "
                   f"chapter's order vs φ {_pp(phi[m['factor']])} pp; the order adds "
                   f"{sr.formal(g)}.")
    moved = [m["factor"] for m in order["model_credits"]
             if m["minus_shapley"]["inference"].get("decision") == "differs"]
    hinted = [m["factor"] for m in order["model_credits"] if m["factor"] not in moved
              and _excludes_zero(m["minus_shapley"]["inference"])]
    out += ["", ("The order changes the credit of " + ", ".join(moved) + " beyond the seeds' "
                 "noise: the cumulative ablation's contributions are not the techniques' own "
                 "shares." if moved else
                 "No order credit differs from φ after Holm (over the six): these seeds cannot "
                 "show that the chapter's order distorts its credits"
                 + (f"; the unadjusted intervals of {', '.join(hinted)} exclude 0." if hinted
                    else ".")), ""]
    if results["higher_order"]:
        real = [h for h in results["higher_order"] if h["inference"].get("decision") == "differs"]
        largest = max(results["higher_order"], key=lambda h: abs(float(h["inference"]["t"]["mean"])))
        out += ["## Is the two-way model enough?", "",
                (f"{len(real)} of the {len(results['higher_order'])} three-way columns differ from "
                 "0 after Holm (" + "; ".join(f"{h['name']} + {', '.join(h['aliases'])}: "
                                              f"{sr.formal(h['inference'])}" for h in real)
                 + "): the Shapley values above are then off by e / 3 for each such term's "
                 "techniques." if real else
                 f"None of the {len(results['higher_order'])} three-way columns differs from 0 "
                 f"after Holm (largest: {largest['name']} + {', '.join(largest['aliases'])}, "
                 f"{sr.formal(largest['inference'])}); the two-way model, and with it the "
                 "Shapley values, is not contradicted by this design."), ""]
    ds = s["dataset"]
    runs = sum(len(c["runs"]) for c in results["cells"].values())
    out += ["## Scope", "",
            f"Measured on {ds['name']} with {ds['num_train']} training images, the config's model "
            f"(all-off cell: {s['model']}) and epoch budget; {_capped(results)} of {runs} runs "
            "ended at the epoch budget rather than by patience, so the effects are those of this "
            "budget: a technique that needs more epochs (dropout, augmentation) may be measured "
            "before it has paid off. Neither the sizes nor the interactions need transfer to the "
            "chapter's full-MNIST, 50-epoch runs (experiments/configs/factorial_full.py).", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- figure


def _err(comp: Mapping[str, Any]) -> tuple[float, float]:
    t = comp["t"]
    mean = float(t["mean"])
    low, high = float(t["low"]), float(t["high"])
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 0.0
    return 100 * (mean - low), 100 * (high - mean)


def write_figures(results: Mapping[str, Any], workdir: str | os.PathLike) -> list[str]:
    """factorial.png: effects, Shapley vs chapter-order credits, the 2x2 interaction plots."""
    if not results["effects"]:
        return []
    inter = results["interactions"]
    ncols = max(1, len(inter))
    fig = Figure(figsize=(max(12.0, 4.0 * ncols), 13.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, ncols, height_ratios=[1.2, 1.0, 1.0])
    n = len(results["study"]["seeds_analysed"])

    ax = fig.add_subplot(grid[0, :])
    eff = results["effects"]
    x = np.arange(len(eff))
    means = [100 * float(e["inference"]["t"]["mean"]) for e in eff]
    errs = np.array([_err(e["inference"]) for e in eff]).T
    colors = [("tab:green" if m > 0 else "tab:red") if e["inference"].get("decision") == "differs"
              else "lightgray" for e, m in zip(eff, means)]
    ax.bar(x, means, yerr=errs, color=colors, edgecolor="black", lw=0.5, capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [e["name"] for e in eff], rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("effect on test accuracy (pp)")
    ax.set_title(f"Main effects and two-way interactions (95 % CI, paired t over {n} seeds; "
                 "colored: differs from 0 after Holm)")
    ax.grid(True, axis="y", alpha=0.3)

    ax = fig.add_subplot(grid[1, :])
    shap = results["shapley"]
    credits = {m["factor"]: m for m in results["chapter_order"]["model_credits"]}
    x = np.arange(len(shap))
    w = 0.38
    phi = [100 * float(s["inference"]["t"]["mean"]) for s in shap]
    ax.bar(x - w / 2, phi, w, yerr=np.array([_err(s["inference"]) for s in shap]).T,
           color="tab:blue", edgecolor="black", lw=0.5, capsize=3,
           label="Shapley φ (= main effect under the two-way model)")
    cr = [100 * float(credits[s["factor"]]["inference"]["t"]["mean"]) for s in shap]
    ax.bar(x + w / 2, cr, w,
           yerr=np.array([_err(credits[s["factor"]]["inference"]) for s in shap]).T,
           color="tab:orange", edgecolor="black", lw=0.5, capsize=3,
           label="credit in the chapter's order (fitted model)")
    for xi, p, s_ in zip(x, phi, shap):
        lo, hi = _err(s_["inference"])
        ax.text(xi - w / 2, p + hi if p >= 0 else p - lo, f"{p:+.2f}", ha="center",
                va="bottom" if p >= 0 else "top", fontsize="x-small")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [s["factor"] for s in shap])
    ax.set_ylabel("share of test accuracy (pp)")
    ax.set_title("Order-free (Shapley) vs order-dependent (cumulative ablation) credit, 95 % CI")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)

    for col, it in enumerate(inter):
        ax = fig.add_subplot(grid[2, col])
        a, b = it["factors"]
        means = np.asarray(it["means"], dtype=np.float64) * 100  # [a level][b level][seed]
        for q, style in ((0, "o--"), (1, "s-")):
            m = means[:, q, :].mean(axis=1)
            sd = means[:, q, :].std(axis=1, ddof=1) if means.shape[2] > 1 else np.zeros(2)
            half = _t_half(sd, means.shape[2])
            ax.errorbar([0, 1], m, yerr=half, fmt=style, capsize=4, label=f"{b} {'on' if q else 'off'}")
        comp = it["inference"]
        ax.set_xticks([0, 1], [f"{a} off", f"{a} on"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_ylabel("test accuracy (%), mean over the other\nfactors (95 % CI over seeds)")
        ax.set_title(f"{it['name']}: interaction {_pp(comp['t']['mean'])} pp\n95 % CI "
                     f"{_ci(comp)}, Holm p {sr.p_value(comp.get('p_holm'))}", fontsize="small")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    path = pathlib.Path(workdir) / FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return [FIGURE]


def _t_half(sd: np.ndarray, n: int) -> np.ndarray:
    """Half-width of the 95 % t interval of a mean over n seeds (0 for one seed)."""
    if n < 2:
        return np.zeros_like(sd)
    from scipy import stats
    return stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
