"""The lab on a CNN's reports: results.md (tables), analysis.md (claims and verdicts), steps.png.

Every verdict is computed in `main` from the statistics (`analysis.inference`); this module only
renders them. Accuracies are fractions in results.json and percentages / percentage points here.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import stats_report
from ml_practical import run_files
from ml_practical.analysis import inference

FAMILY_LABEL = {"cnn": "CNN", "mlp": "MLP"}

# The ablation study's MLP on all of MNIST (55k train, <= 50 epochs, early stopping, 3 seeds),
# quoted from README.md ("The ablation study on MNIST", checkpoints/ablation/results.md of
# 2026-12-02), not rerun: (row, Δ pp, 95 % CI low, high, Holm p). Used when
# <workdir>/../ablation/results.json is absent.
FULL_MNIST_MLP = (
    ("xavier", +0.10, -0.09, +0.29, 0.149), ("he", -0.12, -0.18, -0.07, 0.066),
    ("he_bn", +0.05, +0.03, +0.07, 0.070), ("dropout", +0.25, +0.09, +0.41, 0.070),
    ("l2", -0.14, -0.21, -0.07, 0.070), ("label_smoothing", +0.32, +0.15, +0.49, 0.070),
    ("augment", +0.36, +0.06, +0.65, 0.071))
FULL_MNIST_SOURCE = ("README.md, \"The ablation study on MNIST\" (checkpoints/ablation, 2026-12-02: "
                     "784-512-256-10 on all 55k training images, <= 50 epochs with early "
                     "stopping, batch 128, 3 seeds)")

# The chapter's text this study tests (section 21, "Hands-On Lab / Mini-Project").
CHAPTER_LAB = ("\"Objective: Systematically measure the individual and combined effects of "
               "initialization, regularization, and normalization on a 3-layer MLP trained on "
               "MNIST.\" The table: 1 small random (0.01) ~96.5 %, 2 Xavier ~97.2 %, 3 He ~97.5 %, "
               "4 He + BN ~98.2 %, 5 + dropout 0.2 ~98.3 %, 6 + L2 1e-4 ~98.5 %, 7 + label "
               "smoothing ~98.6 %.")
CHAPTER_BONUS = "\"Bonus: CIFAR-10 | 15 | Repeat on CIFAR-10 and compare conclusions\""


def write_reports(results: Mapping[str, Any], workdir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes results.json, results.md, analysis.md and steps.png into `workdir`."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = {"results.json": workdir / "results.json", "results.md": workdir / "results.md",
           "analysis.md": workdir / "analysis.md"}
    run_files.atomic_write_text(out["results.json"], json.dumps(results, indent=1) + "\n")
    run_files.atomic_write_text(out["results.md"], format_results(results))
    run_files.atomic_write_text(out["analysis.md"], format_analysis(results, workdir))
    if results["conclusions"]:
        out["steps.png"] = plot_steps(results, workdir / "steps.png")
    return out


# --------------------------------------------------------------------------- cells


def _num(x, digits: int = 2, sign: bool = True) -> str:
    return stats_report.number(x, 100.0, digits, sign)


def _ci(low, high) -> str:
    return stats_report.interval(low, high)


def _step_cell(s: Mapping[str, Any] | None) -> str:
    if s is None:
        return "-"
    return (f"{_num(s['mean'])} {_ci(s['low'], s['high'])}, p {stats_report.p_value(s['p_holm'])}")


def _acc_cell(exp: Mapping[str, Any] | None) -> str:
    if exp is None:
        return "-"
    values = exp["test_accuracy"]["values"]
    t = inference.paired_t(values)  # the t interval of the mean over seeds
    return (f"{100 * t['mean']:.2f} [{100 * t['low']:.2f}, {100 * t['high']:.2f}]"
            if math.isfinite(t["low"]) else f"{100 * t['mean']:.2f}")


def _setup(results: Mapping[str, Any]) -> str:
    s, cfg = results["study"], results["config"]
    ds = s["dataset"]
    tr = cfg["train"]
    parts = [(f"{ds['name']}: {ds['num_train']} train / {ds['num_val']} val / {ds['num_test']} "
             f"test images of shape {ds['image_shape']}")]
    for family, res in results["families"].items():
        parts.append(f"{FAMILY_LABEL.get(family, family)}: {res['study']['model']['description']}")
    parts.append(f"{cfg['optim']['name']} lr {cfg['optim']['learning_rate']:g}, batch "
                 f"{tr['batch_size']}, {tr['num_epochs']} epochs (best "
                 f"{cfg['early_stopping']['monitor']} checkpoint tested), seeds "
                 f"{', '.join(str(x) for x in s['seeds'])} (paired: seed s gives every row of a "
                 "family the same init key, dropout / augmentation keys and batch order)")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------- results.md


def format_results(results: Mapping[str, Any]) -> str:
    s = results["study"]
    fams = list(results["families"])
    margin = s["margin"]
    out = ["# The lab on a CNN: the chapter's rows on a CNN and on the MLP", ""]
    if not s["complete"]:
        out += ["**Incomplete: the study was interrupted; rerun the command to resume.**", ""]
    if s.get("command"):
        out += ["```", s["command"], "```", ""]
    out += [_setup(results), f"Wall time of this invocation: {s['wall_time_s']:.0f} s.", "",
            "## Test accuracy (%): mean and 95 % t interval over seeds", "",
            "| # | row | " + " | ".join(FAMILY_LABEL.get(f, f) for f in fams) + " |",
            "|---|---|" + "---|" * len(fams)]
    for name in s["rows"]:
        row = next((r["experiments"][name] for r in results["families"].values()
                    if name in r["experiments"]), None)
        if row is None:
            continue
        out.append(f"| {row['row']} | {name}: {row['label']} | " + " | ".join(
            _acc_cell(results["families"][f]["experiments"].get(name)) for f in fams) + " |")
    out.append("")
    for family in fams:
        res = results["families"][family]
        if not res["contributions"]:
            continue
        exps = res["experiments"]
        rows = [(f"{exps[c['experiment']]['row']} {c['change']}",
                 f"{exps[c['parent']]['row']} {c['parent']}", c["test_accuracy"]["inference"])
                for c in res["contributions"]]
        out += [f"## Steps on the {FAMILY_LABEL.get(family, family)} (row minus its parent)", "",
                stats_report.comparison_table(rows, what="step"),
                (f"Holm over the {len(rows)} steps of this family; the decision column is Holm's "
                "at 0.05 (no margin). Per-seed values and the ablation's own tables: "
                f"`{family}/results.md`."), ""]
    if results["conclusions"] and {"cnn", "mlp"} <= set(fams):
        out += ["## Which conclusions change (MLP -> CNN)", "", conclusions_table(results), "",
                "Verdicts: `analysis.inference.decide` on each family's step (Holm over the "
                "family's steps, level 0.05" + (f", equivalence margin ±{100 * margin:.2f} pp"
                                                if margin else "") + "): helps / hurts (differs, "
                "by sign), equivalent (the 95 % interval inside the margin), undecided. "
                "CNN − MLP: the CNN's step minus the MLP's step at each seed, paired t, Holm "
                "over the steps: whether the technique's effect differs between the networks.", ""]
    if results.get("expectations"):
        out += ["## Expectations (CNN step − MLP step)", "",
                "| step | expectation | CNN − MLP Δ (pp) [95 % CI] | Holm p | decision | verdict |",
                "|---|---|---|---|---|---|"]
        for e in results["expectations"]:
            if e["verdict"] == "not run":
                out.append(f"| {e['row']} | {e['text']} | - | - | - | not run |")
                continue
            out.append(f"| {e['row']} | {e['text']} | {_num(e['mean'])} {_ci(e['low'], e['high'])}"
                       f" | {stats_report.p_value(e['p_holm'])} | {e['decision']} | "
                       f"{e['verdict']} |")
        out.append("")
    out.append("Figures: steps.png (each step's Δ with its 95 % interval, per family); "
               + ", ".join(f"{f}/curves.png, {f}/contributions.png" for f in fams) + ".")
    return "\n".join(out) + "\n"


def conclusions_table(results: Mapping[str, Any]) -> str:
    inter = {i["experiment"]: i for i in results["interactions"]}
    lines = [("| # | step | MLP Δ pp [95 % CI], Holm p | MLP verdict | CNN Δ pp [95 % CI], Holm p "
             "| CNN verdict | verdict change | sign of Δ changes | CNN − MLP Δ pp [95 % CI], "
             "Holm p | CNN − MLP decision |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["conclusions"]:
        i = inter.get(c["experiment"])
        inf = i["inference"] if i else None
        diff = ("-" if not inf or not inf.get("n") else
                f"{_num(inf['t']['mean'])} {_ci(inf['t']['low'], inf['t']['high'])}, "
                f"p {stats_report.p_value(inf.get('p_holm'))}")
        lines.append(
            f"| {c['row']} | {c['change']} (vs {c['parent']}) | {_step_cell(c.get('mlp'))} | "
            f"{(c.get('mlp') or {}).get('verdict', '-')} | {_step_cell(c.get('cnn'))} | "
            f"{(c.get('cnn') or {}).get('verdict', '-')} | {c.get('verdict_change', '-')} | "
            f"{'yes' if c.get('sign_changes') else 'no'} | {diff} | "
            f"{i['decision'] if i else '-'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- analysis.md


def reference_steps(workdir: pathlib.Path) -> tuple[dict[str, tuple[float, float, float, float]], str]:
    """The full-MNIST MLP's steps (pp): read from <workdir>/../ablation/results.json when it is
    there, else the README's quoted numbers (`FULL_MNIST_MLP`)."""
    path = pathlib.Path(workdir).parent / "ablation" / "results.json"
    if path.exists():
        res = json.loads(path.read_text())
        out = {}
        for c in res.get("contributions", []):
            inf = c["test_accuracy"].get("inference")
            if inf:
                out[c["experiment"]] = (100 * float(inf["t"]["mean"]), 100 * float(inf["t"]["low"]),
                                        100 * float(inf["t"]["high"]), float(inf["p_holm"]))
        if out:
            return out, f"{path} (the ablation study's results)"
    return {r: (m, lo, hi, p) for r, m, lo, hi, p in FULL_MNIST_MLP}, FULL_MNIST_SOURCE


def _claim_line(c: Mapping[str, Any]) -> str:
    settle = (f" (to settle: {_settle(c)})" if c["verdict"] == "inconclusive"
              and c["decision"] == "undecided" else "")
    return (f"{FAMILY_LABEL.get(c['family'], c['family'])} {_num(c['mean'])} pp "
            f"{_ci(c['low'], c['high'])} (Holm p {stats_report.p_value(c['p_holm'])}, "
            f"{c['decision']}): **{c['verdict']}**{settle}")


def _settle(comp: Mapping[str, Any]) -> str:
    """The seeds a true difference of the observed size needs (one test at 0.05, 80 % power;
    Holm over the family asks for more)."""
    n = comp.get("seeds_for_observed")
    if n is None:
        return "no number of seeds (the observed difference is 0)"
    if float(n) == math.inf:
        return "more than 1000 seeds for a difference of the observed size"
    return (f"about {int(float(n))} seeds for a true difference of the observed size (80 % "
            "power, one test at 0.05; more under Holm)")


def format_analysis(results: Mapping[str, Any], workdir: pathlib.Path) -> str:
    s = results["study"]
    fams = list(results["families"])
    source = s["dataset"]["name"]
    on_mnist = "mnist" in source.lower() or results["config"]["data"]["source"] == "idx"
    margin = s["margin"]
    out = ["# Analysis: the lab on a CNN", "", _setup(results), ""]
    if not s["complete"]:
        out += ["**Incomplete run: the verdicts below cover the finished runs only.**", ""]
    out += ["## The claims tested", "",
            (f"- Section 21 (the lab): {CHAPTER_LAB} Each row is claimed to improve on the one "
            "before it by the step the table implies. We test each step on both networks."),
            (f"- Section 21, rubric: {CHAPTER_BONUS}: the same study through the CIFAR reader "
            "(`experiments/configs/lab_cnn_cifar10.py`; not run on this machine)."),
            "- The issue's hypotheses about the families: "
            + "; ".join(f"{e.get('text')}" for e in results.get("expectations", [])) + ".", "",
            "Verdicts come from the statistics: a step is **confirmed** when it helps (Holm-"
            "adjusted paired t over the family's steps at 0.05), **refuted** when it hurts, or "
            "when its 95 % interval lies inside ±" + (f"{100 * margin:.2f}" if margin else "0")
            + " pp while the chapter's step is larger, and **inconclusive** otherwise.", ""]
    claims: dict[str, list] = {}
    for c in results["chapter"]:
        claims.setdefault(c["experiment"], []).append(c)
    if claims:
        out += ["## The lab's steps, per network", ""]
        for name, cs in claims.items():
            step = 100 * cs[0]["chapter_step"]
            out.append(f"- {name} (chapter {step:+.1f} pp"
                       + ("" if on_mnist else ", on MNIST") + "): "
                       + "; ".join(_claim_line(c) for c in cs) + ".")
        out.append("")
    if results["conclusions"] and {"cnn", "mlp"} <= set(fams):
        changed = [c for c in results["conclusions"] if c.get("verdict_change") not in
                   ("same", "-", None)]
        out += ["## Which conclusions change on the CNN", ""]
        if not changed:
            out.append("- No step's verdict changes between the MLP and the CNN.")
        for c in changed:
            out.append(f"- {c['change']} (row {c['row']} vs {c['parent']}): MLP "
                       f"{c['mlp']['verdict']} ({_num(c['mlp']['mean'])} pp "
                       f"{_ci(c['mlp']['low'], c['mlp']['high'])}), CNN {c['cnn']['verdict']} "
                       f"({_num(c['cnn']['mean'])} pp {_ci(c['cnn']['low'], c['cnn']['high'])}): "
                       f"{c['verdict_change']}"
                       + ("; the observed sign flips" if c.get("sign_changes") else "") + ".")
        same = [c["change"] for c in results["conclusions"] if c.get("verdict_change") == "same"]
        if same:
            out.append(f"- Unchanged: {', '.join(same)}.")
        differ = [i for i in results["interactions"] if i["decision"] == "differs"]
        out.append("- Steps whose effect differs between the networks (CNN − MLP, Holm over "
                   f"the {len(results['interactions'])} steps): "
                   + (", ".join(f"{i['change']} {_num(i['inference']['t']['mean'])} pp "
                                f"{_ci(i['inference']['t']['low'], i['inference']['t']['high'])}"
                                for i in differ) or "none") + ".")
        out.append("")
    if results.get("expectations"):
        inter = {i["experiment"]: i for i in results["interactions"]}
        out += ["## The hypotheses", ""]
        for e in results["expectations"]:
            if e["verdict"] == "not run":
                out.append(f"- {e['text']}: not run (needs the {e['row']} row on both networks).")
                continue
            settle = ("" if e["verdict"] != "inconclusive"
                      else f" What would settle it: {_settle(inter[e['row']]['inference'])}.")
            out.append(f"- {e['text']} (expected CNN − MLP {e['expected']}; {e['why']}): "
                       f"CNN − MLP {_num(e['mean'])} pp {_ci(e['low'], e['high'])}, Holm p "
                       f"{stats_report.p_value(e['p_holm'])}: **{e['verdict']}**.{settle}")
        out.append("")
    if on_mnist and "mlp" in fams:
        ref, where = reference_steps(workdir)
        mlp = {c["experiment"]: c for c in results["conclusions"] if c.get("mlp")}
        out += ["## The MLP here against the MLP on all of MNIST", "",
                (f"Quoted, not rerun: {where}. Does the subset MLP reach the full-data MLP's "
                "conclusions?"), "",
                ("| step | full MNIST MLP Δ pp [95 % CI], Holm p | this MLP Δ pp [95 % CI], Holm p |"
                " this CNN Δ pp [95 % CI], Holm p |"), "|---|---|---|---|"]
        for name, (m, lo, hi, p) in ref.items():
            c = mlp.get(name)
            out.append(f"| {name} | {m:+.2f} [{lo:+.2f}, {hi:+.2f}], p {p:.3f} | "
                       f"{_step_cell(c.get('mlp') if c else None)} | "
                       f"{_step_cell(c.get('cnn') if c else None)} |")
        out.append("")
    n_test = s["dataset"]["num_test"]
    out += ["## Caveats", "",
            (f"- {len(s['seeds'])} seeds: an interval's half-width is t(0.975, n−1) = "
            f"{_t_quantile(len(s['seeds'])):.2f} times the standard error, and Holm's correction "
            "over the steps is strict; small true steps stay undecided. Each row's test accuracy "
            f"is measured on {n_test} test images (a run's sampling sd at 98 % is "
            f"{100 * math.sqrt(0.98 * 0.02 / max(n_test, 1)):.2f} pp)."),
            ("- The budget is a CPU's: a training subset and a few epochs, so the rows are "
             "compared early in training. Techniques that speed training up (initialization, "
             "normalization) may weigh more there than at convergence, and regularizers (which "
             "matter once a net overfits) less; the accelerator configs (`lab_cnn_full.py`, "
             "`lab_cnn_cifar10.py`) run the chapter's budget and would show it.")]
    return "\n".join(out) + "\n"


def _t_quantile(n: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.975, max(n - 1, 1)))


# --------------------------------------------------------------------------- figure


def plot_steps(results: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
    """Grouped bars: each step's mean Δ (pp) per family, with its 95 % paired-t interval."""
    fams = list(results["families"])
    steps = results["conclusions"]
    fig = Figure(figsize=(max(6.0, 1.1 * len(steps) + 2.0), 4.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(steps))
    width = 0.8 / max(len(fams), 1)
    bars = []
    for k, family in enumerate(fams):
        means, lows, highs = [], [], []
        for c in steps:
            v = c.get(family)
            m = 100 * float(v["mean"]) if v else np.nan
            lo, hi = (100 * float(v["low"]), 100 * float(v["high"])) if v else (np.nan, np.nan)
            means.append(m)
            # an infinite interval (one seed) draws no bar
            lows.append(m - lo if math.isfinite(lo) else 0.0)
            highs.append(hi - m if math.isfinite(hi) else 0.0)
        xs = x + (k - (len(fams) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=[lows, highs], capsize=3,
               label=FAMILY_LABEL.get(family, family), color=f"C{k}", edgecolor="black", lw=0.5)
        bars += [(xi, m, abs(m) + max(lo, hi)) for xi, m, lo, hi in zip(xs, means, lows, highs)
                 if math.isfinite(m)]
    # One huge step (a failed small init) would flatten the others: the axis covers the rest,
    # and a bar beyond it is labelled with its value.
    reach = np.array([r for _, _, r in bars]) if bars else np.array([1.0])
    small = reach[reach <= 5 * max(float(np.median(reach)), 1e-9)]
    lim = 1.15 * float(small.max() if small.size else reach.max()) or 1.0
    ax.set_ylim(-lim, lim)
    for xi, m, r in bars:
        if r > lim:
            ax.text(xi, np.sign(m) * 0.9 * lim, f"{m:+.1f}\n(off scale)", ha="center",
                    va="top" if m > 0 else "bottom", fontsize="small",
                    bbox={"facecolor": "white", "alpha": 0.85, "lw": 0})
    ax.axhline(0.0, color="black", lw=0.8)
    labels: Sequence[str] = [f"{c['row']} {c['change']}" for c in steps]
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("test accuracy change vs the row before (pp)")
    ax.set_title(f"{results['study']['dataset']['name']}: each step, mean and 95 % interval "
                 f"over {len(results['study']['seeds'])} paired seeds")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
