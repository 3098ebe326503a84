"""The BatchNorm x initialization study's report: tables, verdict sentences, analysis, figures."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import stats_report
from experiments.bn_init import claims, grid
from ml_practical import models, plots

OPTIMIZER_WORDS = {"sgd": "SGD + momentum", "adam": "Adam"}
STATUS_WORDS = {"holds": "holds", "fails": "fails", "undecided": "undecided"}


def setup_line(cfg, dataset, budget: int, steps_per_epoch: int, seeds) -> str:
    study = cfg.study
    model = models.describe(cfg.model, dataset.train_x.shape[1:])
    lrs = ", ".join(f"{OPTIMIZER_WORDS[o]} lr {study.lr(o):g}" for o in grid.OPTIMIZERS)
    return (f"{model.split(' on ')[0]} ({dataset.name}: {len(dataset.train_y)} training images, "
            f"{len(dataset.test_y)} test), norm per cell (BatchNorm before the ReLU, no conv bias; "
            f"or none, with a zero-initialized bias), Xavier head in every cell; {lrs} (momentum "
            f"{cfg.optim.momentum:g}), constant, the same for every init and norm; batch "
            f"{cfg.train.batch_size}, {cfg.train.num_epochs} epochs = {budget} steps "
            f"({steps_per_epoch} per epoch); seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}; seed "
            "s gives every cell the same batch order and init key). Steps to target: first step "
            f"t at which the running mean of the per-step training loss over steps t-"
            f"{study.window - 1}..t is <= {study.target_loss:g} (accuracy: >= "
            f"{100 * study.target_accuracy:g} %); a run that never gets there is censored at "
            f"{budget} steps (a lower bound), marked with +.")


def _steps_cell(s: Mapping[str, Any], n: int) -> str:
    text = f"{s['geomean']:.0f} [{s['low']:.0f}, {s['high']:.0f}]" if n > 1 \
        else f"{s['geomean']:.0f}"
    return text + (f" ({s['censored']}/{n} censored)" if s["censored"] else "")


def _ci(s: Mapping[str, Any], scale: float, digits: int) -> str:
    if not math.isfinite(float(s["low"])):
        return f"{scale * s['mean']:.{digits}f}"
    return (f"{scale * s['mean']:.{digits}f} [{scale * s['low']:.{digits}f}, "
            f"{scale * s['high']:.{digits}f}]")


def cell_table(cells: Mapping[str, Mapping[str, Any]], study) -> str:
    head = (f"| optimizer | norm | init | steps to loss <= {study.target_loss:g} | steps to "
            f"accuracy >= {100 * study.target_accuracy:g} % | loss, first {study.window} steps | "
            f"loss, last {study.window} steps | test accuracy % |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in cells.values():
        s, n = c["summary"], len(c["runs"])
        lines.append(f"| {OPTIMIZER_WORDS[c['optimizer']]} | {c['norm']} | {c['init']} | "
                     f"{_steps_cell(s['loss'], n)} | {_steps_cell(s['accuracy'], n)} | "
                     f"{_ci(s['first_window_loss'], 1, 3)} | {_ci(s['final_window_loss'], 1, 3)} | "
                     f"{_ci(s['test_accuracy'], 100, 2)} |")
    return ("Per cell, over its seeds: steps as the geometric mean with the 95 % t interval of "
            "log steps (censored runs count as the budget); losses and test accuracy as the mean "
            "with the 95 % t interval.\n\n" + "\n".join(lines) + "\n")


def comparison_label(c: Mapping[str, Any]) -> str:
    """The row label of a comparison in the tables."""
    if c["kind"] == "speed":
        return f"{c['arm']} / {c['against']} steps, {c['norm']}, {c['measure']}, {c['optimizer']}"
    return f"spread {c['arm']} / {c['against']}, {c['measure']}, {c['optimizer']}"


def _steps_list(steps, censored) -> str:
    return ", ".join(f"{s}{'+' if c else ''}" for s, c in zip(steps, censored))


def ratio_table(comps: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| comparison | ratio exp(Δ) | 95 % CI, paired t | per seed | status |",
             "|---|---:|---:|---|---|"]
    for c in comps.values():
        inf = c["inference"]
        ratio, low, high = claims.ratio_ci(inf)
        if c["kind"] == "speed":
            per_seed = (f"{c['arm']} {_steps_list(c['arm_steps'], c['arm_censored'])}; "
                        f"{c['against']} {_steps_list(c['against_steps'], c['against_censored'])}")
            status = claims.speed_status(c)
        else:
            per_seed = (f"slowest/fastest init: {c['arm']} "
                        + ", ".join(f"{math.exp(v):.2f}" for v in c["arm_spread"])
                        + f"; {c['against']} "
                        + ", ".join(f"{math.exp(v):.2f}" for v in c["against_spread"])
                        + f" (censored runs: {c['arm']} {c['censored'][c['arm']]}, "
                          f"{c['against']} {c['censored'][c['against']]})")
            status = claims.sensitivity_status(c)
        ci = f"[{low:.2f}, {high:.2f}]" if math.isfinite(low) and math.isfinite(high) else "-"
        lines.append(f"| {comparison_label(c)} | {ratio:.2f} | {ci} | {per_seed} | {status} |")
    return "\n".join(lines) + "\n"


def _speed_sentence(c, study) -> str:
    inf = c["inference"]
    ratio, low, high = claims.ratio_ci(inf)
    what = (f"loss <= {study.target_loss:g}" if c["measure"] == "loss"
            else f"accuracy >= {100 * study.target_accuracy:g} %")
    faster = "He + BN" if ratio > 1 else "small random + BN"
    times = ratio if ratio > 1 else 1 / ratio
    return (f"{OPTIMIZER_WORDS[c['optimizer']]}, steps to {what}: small random + BN takes "
            f"{ratio:.2f}x the steps of He + BN (95 % CI [{low:.2f}, {high:.2f}]), i.e. "
            f"{faster} is {times:.2f}x faster; {stats_report.formal(inf, 1, 3, 'log')}. "
            f"He >= {grid.LEDGER_SPEEDUP:g}x faster: {claims.speed_status(c)}"
            + _censored_note(c["against_censored"], "He") + _censored_note(c["arm_censored"],
                                                                         "small random"))


def _censored_note(censored, who: str) -> str:
    k = sum(bool(x) for x in censored)
    return f" ({k}/{len(censored)} {who} runs censored)" if k else ""


def _sensitivity_sentence(c) -> str:
    inf = c["inference"]
    ratio, low, high = claims.ratio_ci(inf)
    wide = np.exp(np.mean(c["arm_spread"]))
    narrow = np.exp(np.mean(c["against_spread"]))
    return (f"{OPTIMIZER_WORDS[c['optimizer']]}: slowest / fastest init over "
            f"{', '.join(c['inits'])} is {wide:.2f}x without a norm and {narrow:.2f}x with BN "
            f"(geometric means over seeds); the ratio of the two is {ratio:.2f} (95 % CI "
            f"[{low:.2f}, {high:.2f}]); {stats_report.formal(inf, 1, 3, 'log')}. BN narrows the "
            f"spread: {claims.sensitivity_status(c)} (censored runs: without a norm "
            f"{c['censored'][c['arm']]}, with BN {c['censored'][c['against']]})")


def verdict_lines(comps, verdicts, study) -> list[str]:
    lines = []
    for c in comps.values():
        if c["kind"] == "speed":
            lines.append("- " + _speed_sentence(c, study) + ".")
    for c in comps.values():
        if c["kind"] == "sensitivity":
            lines.append("- " + _sensitivity_sentence(c) + ".")
    lines.append(f"- Speed part (He + BN >= {grid.LEDGER_SPEEDUP:g}x faster than small random + "
                 "BN under every optimizer, on every measure): "
                 f"{verdicts['speed_part']}; sensitivity part (BN narrows the spread under every "
                 f"optimizer): {verdicts['sensitivity_part']}.")
    lines.append(f"- BN-12 (c): **{verdicts['BN-12']}**. Sec 18 myth, the chapter's rebuttal "
                 f"(\"He init + BN together converge significantly faster\"): "
                 f"**{verdicts['myth']}**.")
    return lines


def results_md(command, timing, setup, cells, comps, verdicts, study, figures) -> list[str]:
    md = [f"# BatchNorm and initialization\n\nCommand: `{command}` ({timing})\n",
          setup + "\n", "## Steps to the target and test accuracy\n", cell_table(cells, study)]
    if comps:
        md += [(f"## Paired comparisons (natural-log steps; Holm over the {len(comps)} "
               "comparisons)\n"),
               ("Δ per seed: speed = log steps of small random + BN minus log steps of He + BN "
               "(> 0: He is faster); spread = log(slowest / fastest init's steps) without a norm "
               "minus with BN (> 0: BN narrows it). Intervals by Student's paired t and by the "
               "exact bootstrap over seeds; 'detectable' is the smallest true Δ these seeds "
               "detect at 80 % power (`analysis.inference`).\n"),
               stats_report.comparison_table(
                   [(comparison_label(c), c["against"], c["inference"]) for c in comps.values()],
                   what="comparison", scale=1.0, digits=3, unit="log"),
               ("The same as ratios (exp of Δ and of its interval), with the per-seed values "
               "(+ = censored at the budget):\n"), ratio_table(comps),
               "## Verdicts (rules in experiments/bn_init/claims.py, fixed before the run)\n",
               "\n".join(verdict_lines(comps, verdicts, study)) + "\n"]
    md.append("Figures: " + ", ".join(figures) + "\n")
    return md


def _settle(verdict: str) -> str:
    if verdict in ("confirmed", "refuted", "partly"):
        return ("At one learning rate per optimizer: under BN the kernels' scale only changes "
                "the effective step (lr / sigma^2 for SGD, lr / sigma for Adam), so a learning-"
                "rate sweep per init (each init at its own best lr) is what would generalize the "
                "answer beyond these lrs.")
    return "More seeds (see 'detectable at 80 %' in results.md) or a longer budget would settle it."


def analysis_md(command, timing, setup, cells, comps, verdicts, study) -> str:
    speed = [c for c in comps.values() if c["kind"] == "speed"]
    sens = [c for c in comps.values() if c["kind"] == "sensitivity"]
    out = ["# BatchNorm and initialization: the chapter's claims against the measurements\n",
           f"Command: `{command}` ({timing}). {setup}\n"]
    out += [("## 1. \"He init + BN together converge significantly faster than BN + random init\" "
            "(Sec 18, Common Misconceptions; claims ledger BN-12 (c))\n"),
            (f"Criterion (ledger): He + BN reaches the target in at least {grid.LEDGER_SPEEDUP:g}x "
            "fewer steps than N(0, 0.01²) + BN under both SGD and Adam, here on both measures "
            "(running-mean training loss and the ledger's training accuracy), with the "
            "lower end of the 95 % CI of the speed-up at or above it and Holm's decision "
            "'differs'; it fails where the CI's upper end is below it.\n")]
    out += ["- " + _speed_sentence(c, study) + "." for c in speed] or ["- not run"]
    out += ["", f"Verdict: **{verdicts['speed_part']}** (speed part). {_settle(verdicts['BN-12'])}",
            ("Why: with BatchNorm after every conv the forward pass does not depend on the "
            "kernels' scale (the quick check BN-12 (b): Linear -> BN is invariant up to ε), so "
            "N(0, 0.01²) and He differ only in how large each optimizer step is relative to the "
            "weights; at these learning rates the small init takes the larger relative steps.\n")]
    out += [("## 2. BN \"reduces sensitivity to initialization → even bad initializations work "
            "reasonably well\" (12.4.4, point 3) and \"BN makes training more robust to "
            "initialization\" (Sec 18)\n"),
            ("Criterion: the spread of steps over the inits (slowest / fastest, per seed) is "
            "smaller with BN than without, Holm 'differs', under every optimizer.\n")]
    out += ["- " + _sensitivity_sentence(c) + "." for c in sens] or ["- not run"]
    out += ["", ("The spread measures how much the init matters, not which init wins: the order of "
            "the inits is in claim 3's list (fastest first), per optimizer and norm.")]
    acc = []
    for opt in dict.fromkeys(c["optimizer"] for c in cells.values()):
        parts = []
        for norm in dict.fromkeys(c["norm"] for c in cells.values()):
            parts.append(f"{norm}: " + ", ".join(
                f"{c['init']} {_ci(c['summary']['test_accuracy'], 100, 2)}"
                for c in cells.values() if c["optimizer"] == opt and c["norm"] == norm))
        acc.append(f"{OPTIMIZER_WORDS[opt]}: " + "; ".join(parts))
    out += ["", "Test accuracy (%) after the budget, mean [95 % CI]: " + ". ".join(acc) + ".",
            (f"\nVerdict: **{verdicts['sensitivity_part']}** (sensitivity part). A censored run "
            "counts as the budget, so a norm's spread is a lower bound where its runs are "
            "censored; the rules draw a verdict only where censoring cannot have produced it.\n")]
    out += [("## 3. The myth \"BatchNorm eliminates the need for careful initialization\" "
            "(Sec 18)\n"),
            ("The chapter calls it a myth because \"bad init can still cause the first few "
             "gradient steps to be wasteful\" and He + BN converges significantly faster than "
             "BN + random init. The second is claim 1. The first is reported here, not tested "
             "(it is not in the family): the mean training loss over the first "
             f"{study.window} steps, and which init is fastest and slowest to the loss target, "
             "per optimizer and norm (geometric means over seeds; + = some runs censored):\n"),
            "\n".join(_ordering_lines(cells, study)) + "\n",
            _myth_paragraph(cells, verdicts) + "\n"]
    out += ["## Overall: BN-12\n",
            (f"The ledger's BN-12 (\"BN reduces init sensitivity, but He + BN converges "
            f"significantly faster than BN + random init\"): **{verdicts['BN-12']}** (speed "
            f"part {verdicts['speed_part']}, sensitivity part {verdicts['sensitivity_part']}; "
            "part (b), the weight-scale invariance, is the audit's quick check). Rules: "
            "experiments/bn_init/claims.py.\n")]
    return "\n".join(out)


def _ordering_lines(cells, study) -> list[str]:
    lines = []
    for opt in dict.fromkeys(c["optimizer"] for c in cells.values()):
        for norm in dict.fromkeys(c["norm"] for c in cells.values()):
            group = [c for c in cells.values() if c["optimizer"] == opt and c["norm"] == norm]
            order = sorted(group, key=lambda c: c["summary"]["loss"]["geomean"])
            steps = ", ".join(f"{c['init']} {c['summary']['loss']['geomean']:.0f}"
                              f"{'+' if c['summary']['loss']['censored'] else ''}" for c in order)
            first = ", ".join(f"{c['init']} {c['summary']['first_window_loss']['mean']:.2f}"
                              for c in group)
            lines.append(f"- {OPTIMIZER_WORDS[opt]}, {norm}: steps to loss <= "
                         f"{study.target_loss:g}, fastest first: {steps}; loss over the first "
                         f"{study.window} steps: {first}.")
    return lines


def _myth_paragraph(cells, verdicts) -> str:
    bn = [c for c in cells.values() if c["norm"] == "bn"]
    none = [c for c in cells.values() if c["norm"] == "none"]
    bn_censored = sum(c["summary"]["loss"]["censored"] for c in bn)
    none_censored = sum(c["summary"]["loss"]["censored"] for c in none)
    runs = sum(len(c["runs"]) for c in bn)
    text = (f"Verdict on the chapter's rebuttal (He + BN significantly faster): "
            f"**{verdicts['myth']}**. ")
    if verdicts["myth"] == "refuted":
        text += ("Here the rebuttal's own reason fails: with BN, He is not faster than small "
                 "random (claim 1). ")
    text += (f"With BN, {runs - bn_censored} of {runs} runs reached the loss target within the "
             f"budget; without a norm, {none_censored} of {sum(len(c['runs']) for c in none)} "
             "did not. What BN removed here is the need for a variance-preserving scale, not "
             "the effect of the init: under BN the kernels' scale sets each layer's effective "
             "step size, so the init still changes the steps to the target (claim 2's spread).")
    return text


def figures(workdir: pathlib.Path, cells, optimizers, norms, inits, study,
            budget: int) -> list[str]:
    names = []
    for opt in optimizers:
        for norm in norms:
            series, x = {}, None
            for init in inits:
                runs = cells[grid.cell_name(opt, norm, init)]["runs"]
                if runs and all(r["curve"]["steps"] for r in runs):
                    n = min(len(r["curve"]["steps"]) for r in runs)
                    x = runs[0]["curve"]["steps"][:n] if x is None or len(x) > n else x
                    series[init] = np.mean([r["curve"]["values"][:n] for r in runs], axis=0)
            if not series:
                continue
            series = {k: v[:len(x)].tolist() for k, v in series.items()}
            name = f"loss_{opt}_{norm}.png"
            plots.plot_lines(x, series, workdir / name, xlabel="step", logy=True,
                             ylabel=f"train loss, mean of the last {study.window} steps",
                             title=f"{OPTIMIZER_WORDS[opt]}, norm {norm} (mean over seeds; "
                                   f"target {study.target_loss:g})")
            names.append(name)
    names.append(_steps_figure(workdir / "steps.png", cells, optimizers, norms, inits, study,
                               budget))
    return names


def _steps_figure(path, cells, optimizers, norms, inits, study, budget) -> str:
    fig = Figure(figsize=(7.5, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = [(o, n) for o in optimizers for n in norms]
    width = 0.8 / max(1, len(inits))
    for j, init in enumerate(inits):
        xs, ys, lo, hi, hatch = [], [], [], [], []
        for g, (opt, norm) in enumerate(groups):
            s = cells[grid.cell_name(opt, norm, init)]["summary"]["loss"]
            xs.append(g + (j - (len(inits) - 1) / 2) * width)
            ys.append(s["geomean"])
            lo.append(s["geomean"] - min(s["low"], s["geomean"]) if math.isfinite(s["low"])
                      else 0.0)
            hi.append(min(s["high"], 10 * budget) - s["geomean"] if math.isfinite(s["high"])
                      else 0.0)
            hatch.append(s["censored"] > 0)
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=init, edgecolor="black",
                      lw=0.5)
        for bar, h in zip(bars, hatch):
            if h:
                bar.set_hatch("//")
    ax.axhline(budget, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [f"{OPTIMIZER_WORDS[o]}\n{n}" for o, n in groups])
    ax.set_ylabel(f"steps to training loss <= {study.target_loss:g}")
    ax.set_title("Geometric mean over seeds, 95 % CI; hatched: some runs censored (dashed: "
                 "budget)", fontsize="small")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return pathlib.Path(path).name
