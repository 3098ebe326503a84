"""The depth and residual study's report: per-cell summaries, the paired comparisons, the verdicts
on the chapter's claims, the figures, results.md and analysis.md (with the R1 analysis).

Every verdict is a fixed rule over the paired statistics (`inference.compare_family`), stated
next to it; nothing here is tuned to the numbers a run produced.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import stats_report
from experiments.depth_residual import gradients
from experiments.depth_residual.rows import COMPARISONS, DEPTH_ROWS, LABELS, ROWS
from ml_practical import config as config_lib
from ml_practical.analysis import inference

# "Within 0.5 pt" (the ledger's EXP-06 criterion), as a fraction of accuracy: a row is
# non-inferior to He + BN when the paired-t 95 % interval of (row - He + BN) has its lower end
# at or above -MARGIN, and inferior when its upper end is below -MARGIN.
MARGIN = 0.005
# A run "failed to train" when its test accuracy stays below this multiple of chance.
FAIL_FACTOR = 2.0
CURVE_POINTS = 40  # points per training curve (block means of the per-step loss)
FULL_COMMAND = ("python -m experiments.depth_residual "
                "--config=experiments/configs/depth_residual_full.py "
                "--workdir=checkpoints/depth_residual_full "
                "--config.data.data_dir=/path/to/cifar-10-batches-bin")


# --------------------------------------------------------------------------- per cell


def _num(x) -> float:
    return float(x) if x is not None else float("nan")


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sd and Student's 95 % interval of the mean over seeds (`inference.paired_t` of the
    values themselves)."""
    t = inference.paired_t(list(values))
    return {"mean": t["mean"], "sd": t["sd"], "low": t["low"], "high": t["high"], "n": t["n"],
            "values": [float(v) for v in values]}


def unstable(run: Mapping[str, Any], chance: float) -> bool:
    """A run is unstable when a step was non-finite (skipped), it stopped for non-finite steps,
    or it failed to train (test accuracy below FAIL_FACTOR x chance)."""
    return (run["skipped_steps"] > 0 or run["stop_reason"] == "non_finite"
            or run["test/accuracy"] < FAIL_FACTOR * chance)


def cell_record(cell_cfg: config_lib.Config, runs: list[dict], *, chance: float) -> dict:
    """A cell (row, depth) over its seeds."""
    acc = [r["test/accuracy"] for r in runs]
    return {"family": cell_cfg.model_name, "depth": int(getattr(cell_cfg.model, "depth", 0))
            or None, "model": config_lib.section_dict(cell_cfg.model),
            "description": runs[0]["description"], "num_params": runs[0]["num_params"],
            "runs": runs, "test_accuracy": mean_ci(acc),
            "unstable_seeds": [r["seed"] for r in runs if unstable(r, chance)],
            "failed_seeds": [r["seed"] for r in runs if r["test/accuracy"] < FAIL_FACTOR * chance],
            "skipped_steps": int(sum(r["skipped_steps"] for r in runs)),
            "steps_run": int(sum(r["steps_run"] for r in runs))}


def _geomean(values) -> float:
    v = np.asarray([x for x in values if math.isfinite(x) and x > 0], np.float64)
    return float(np.exp(np.mean(np.log(v)))) if v.size else float("nan")


def _median(values) -> float:
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    return float(np.median(v)) if v.size else float("nan")


def probe_summary(cell: Mapping[str, Any]) -> dict[str, Any]:
    """The gradient probe of a cell at init and at the end, over seeds: per-layer geometric
    means of the norms, the spread in decades and first / last conv (medians over seeds), the
    logits' std (median)."""
    runs = cell["runs"]
    out = {"layers": runs[0]["layers"]}
    for when, pick in (("init", 0), ("end", -1)):
        probes = [r["probe"][pick] for r in runs]
        norms = np.asarray([p["norms"] for p in probes], np.float64)
        out[when] = {
            "epoch": [p["epoch"] for p in probes],
            "norms": [_geomean(norms[:, j]) for j in range(norms.shape[1])],
            "spread_decades": _median([gradients.spread_decades(p["norms"]) for p in probes]),
            "first_over_last": _median([gradients.first_over_last(p["norms"]) for p in probes]),
            "logit_std": _median([p["logit_std"] for p in probes]),
            "zero_layers": _median([sum(1 for x in p["norms"] if x == 0.0) for p in probes]),
            "loss": _median([p["loss"] for p in probes]),
        }
    return out


# --------------------------------------------------------------------------- comparisons


def _accuracy_by_seed(cell) -> dict[int, float]:
    return {r["seed"]: r["test/accuracy"] for r in cell["runs"]}


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[int], list[float]]:
    common = sorted(set(a) & set(b))
    return common, [a[s] - b[s] for s in common]


def compare_depths(cells: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict]]:
    """`rows.COMPARISONS` at every depth where both rows ran; Holm over each depth's table.

    Returns:
      {depth: [{"case", "against", "depth", "metric", "seeds", "differences" (case - against,
      per common seed), "inference": `compare_family`'s entry}]}, depths ascending.
    """
    depths = sorted({int(d) for row in cells.values() for d in row})
    out = {}
    for d in depths:
        comps = []
        for a, b in COMPARISONS:
            if str(d) in cells.get(a, {}) and str(d) in cells.get(b, {}):
                seeds, diffs = _paired(_accuracy_by_seed(cells[a][str(d)]),
                                       _accuracy_by_seed(cells[b][str(d)]))
                comps.append({"case": a, "against": b, "depth": d, "metric": "test/accuracy",
                              "seeds": seeds, "differences": diffs})
        family = inference.compare_family({f"{c['case']} - {c['against']}": c["differences"]
                                           for c in comps})
        for c in comps:
            c["inference"] = family[f"{c['case']} - {c['against']}"]
        if comps:
            out[str(d)] = comps
    return out


def compare_with_depth(cells: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """`rows.DEPTH_ROWS` at each deeper depth against the same row at its shallowest depth,
    paired by seed; Holm over the table."""
    comps = []
    for row in DEPTH_ROWS:
        depths = sorted(int(d) for d in cells.get(row, {}))
        for d in depths[1:]:
            seeds, diffs = _paired(_accuracy_by_seed(cells[row][str(d)]),
                                   _accuracy_by_seed(cells[row][str(depths[0])]))
            comps.append({"row": row, "depth": d, "against_depth": depths[0],
                          "metric": "test/accuracy", "seeds": seeds, "differences": diffs})
    family = inference.compare_family({_depth_name(c): c["differences"] for c in comps})
    for c in comps:
        c["inference"] = family[_depth_name(c)]
    return comps


def _depth_name(c) -> str:
    return f"{c['row']} depth {c['depth']} - depth {c['against_depth']}"


def find(out: Mapping[str, Any], depth: int, case: str, against: str) -> dict | None:
    for c in out["comparisons"].get(str(depth), []):
        if c["case"] == case and c["against"] == against:
            return c
    return None


# --------------------------------------------------------------------------- verdicts


def non_inferior(comp: Mapping[str, Any] | None) -> bool | None:
    """True: the 95 % paired-t interval of (case - against) lies above -MARGIN; False: it lies
    below -MARGIN; None: it straddles -MARGIN (or there is no comparison)."""
    if comp is None or not comp["inference"].get("n"):
        return None
    t = comp["inference"]["t"]
    if float(t["low"]) >= -MARGIN:
        return True
    if float(t["high"]) < -MARGIN:
        return False
    return None


def below(comp: Mapping[str, Any] | None) -> bool:
    """Holm's decision says the case is below the reference."""
    if comp is None or not comp["inference"].get("n"):
        return False
    inf = comp["inference"]
    return inf.get("decision") == "differs" and float(inf["mean"]) < 0


def deepest(cells: Mapping[str, Any], rows: Sequence[str]) -> int | None:
    """The deepest depth at which every row of `rows` ran."""
    common = None
    for r in rows:
        ds = {int(d) for d in cells.get(r, {})}
        common = ds if common is None else common & ds
    return max(common) if common else None


def no_norm_bad(out, depth: int) -> bool | None:
    """EXP-06's "no-norm is unstable or worse" for He without a norm at `depth`: True when a
    seed was unstable or Holm says it is below He + BN; False when every seed was stable and it
    is non-inferior to He + BN; None otherwise."""
    cell = out["cells"]["he_nonorm"][str(depth)]
    comp = find(out, depth, "he_nonorm", "he_bn")
    if cell["unstable_seeds"] or below(comp):
        return True
    if non_inferior(comp) is True:
        return False
    return None


def _acc(cell) -> str:
    a = cell["test_accuracy"]
    return f"{100 * a['mean']:.2f} % [{_pct(a['low'])}, {_pct(a['high'])}]"


def _pct(x) -> str:
    x = float(x)
    return f"{100 * x:.2f}" if math.isfinite(x) else "-"


def _stability(cell) -> str:
    n = len(cell["runs"])
    bad = len(cell["unstable_seeds"])
    return (f"stable in all {n} seeds" if not bad else
            f"unstable in {bad} of {n} seeds ({cell['skipped_steps']} non-finite steps of "
            f"{cell['steps_run']}, {len(cell['failed_seeds'])} seed(s) below "
            f"{FAIL_FACTOR:g} x chance)")


def _comp_text(comp) -> str:
    return "not run" if comp is None else stats_report.formal(comp["inference"])


def claim_exp06(out) -> dict[str, Any]:
    """EXP-06 (R1): Fixup vs He + BN vs He without a norm at the deepest depth all three ran."""
    cells = out["cells"]
    claim = {
        "id": "EXP-06", "where": "★R1 (Section D, starred research questions)",
        "quote": "Read \"Fixup Initialization\" (Zhang et al., 2019), which enables training deep "
                 "residual networks without BatchNorm. Implement Fixup for a 50-layer ResNet and "
                 "compare training dynamics with standard He+BN.",
        "ledger": "Fixup trains deep residual nets without BN about as well as He + BN; pass if "
                  "Fixup is within 0.5 pt of He + BN and no-norm is unstable or worse",
        "rule": f"At the deepest depth where he_bn, fixup and he_nonorm all ran: Fixup is within "
                f"{100 * MARGIN:g} pt when the paired-t 95 % interval of (Fixup - He + BN) lies "
                f"above -{100 * MARGIN:g} pt (non-inferiority; below it entirely: not within); "
                "no-norm is unstable or worse when a seed had a non-finite step or failed to "
                "train, or Holm's decision puts it below He + BN (stable in every seed and "
                "non-inferior: it is not). Confirmed when both hold, refuted when either fails, "
                "inconclusive otherwise.",
    }
    depth = deepest(cells, ("he_bn", "fixup", "he_nonorm"))
    if depth is None:
        return {**claim, "verdict": "not run", "measured": "he_bn, fixup and he_nonorm did not "
                "all run at one depth", "depth": None}
    comp = find(out, depth, "fixup", "he_bn")
    ok, bad = non_inferior(comp), no_norm_bad(out, depth)
    verdict = ("confirmed" if ok is True and bad is True else
               "refuted" if ok is False or bad is False else "inconclusive")
    per_depth = []
    for d in sorted(int(x) for x in cells["fixup"]):
        c = find(out, d, "fixup", "he_bn")
        if c is not None:
            t = c["inference"]["t"]
            per_depth.append(f"depth {d}: {100 * t['mean']:+.2f} pt "
                             f"[{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]")
    nonorm = find(out, depth, "he_nonorm", "he_bn")
    measured = (f"ResNet-{depth}: Fixup {_acc(cells['fixup'][str(depth)])}, He + BN "
                f"{_acc(cells['he_bn'][str(depth)])}, He without norm "
                f"{_acc(cells['he_nonorm'][str(depth)])} (test accuracy, mean and 95 % CI over "
                f"seeds). Fixup - He + BN: {_comp_text(comp)}. He no norm - He + BN: "
                f"{_comp_text(nonorm)}; He without norm {_stability(cells['he_nonorm'][str(depth)])}"
                f", Fixup {_stability(cells['fixup'][str(depth)])}. Fixup - He + BN at every "
                f"depth: {'; '.join(per_depth)}.")
    settle = ("More seeds (the interval's half-width shrinks as 1/sqrt(seeds); "
              f"{comp['inference'].get('seeds_for_observed', '-')} seeds would detect the "
              "observed difference) and the full-size run.") if verdict == "inconclusive" else (
              "The full-size run (CIFAR-10, full width, the 200-epoch recipe) would show "
              "whether it holds at convergence.")
    return {**claim, "verdict": verdict, "measured": measured, "depth": depth,
            "fixup_within": ok, "no_norm_unstable_or_worse": bad,
            "ci": [comp["inference"]["t"]["low"], comp["inference"]["t"]["high"]],
            "settle": settle}


def claim_init_only(out) -> dict[str, Any]:
    """Fixup and SkipInit (ReZero's gate) train deep nets without a norm (Section 23)."""
    cells = out["cells"]
    claim = {
        "id": "NORM-FREE", "where": "Section 23, Research Frontiers",
        "quote": "Fixup/ReZero Initialization: Training deep nets without any normalization "
                 "layers, using only careful initialization.",
        "rule": f"At the deepest depth where he_bn, fixup and skipinit all ran, each of Fixup and "
                f"SkipInit is non-inferior to He + BN (paired-t 95 % interval above "
                f"-{100 * MARGIN:g} pt) and stable in every seed. Confirmed when both are, "
                "refuted when neither is, partly when one is and the other is not, inconclusive "
                "otherwise.",
    }
    depth = deepest(cells, ("he_bn", "fixup", "skipinit"))
    if depth is None:
        return {**claim, "verdict": "not run", "measured": "-", "depth": None}
    status, parts = [], []
    for row in ("fixup", "skipinit"):
        comp = find(out, depth, row, "he_bn")
        ok = non_inferior(comp)
        if cells[row][str(depth)]["unstable_seeds"]:
            ok = False
        status.append(ok)
        parts.append(f"{LABELS[row]} {_acc(cells[row][str(depth)])}, "
                     f"{_stability(cells[row][str(depth)])}; - He + BN: {_comp_text(comp)}")
    if all(s is True for s in status):
        verdict = "confirmed"
    elif all(s is False for s in status):
        verdict = "refuted"
    elif True in status and False in status:
        verdict = "partly"
    else:
        verdict = "inconclusive"
    measured = (f"ResNet-{depth}, He + BN {_acc(cells['he_bn'][str(depth)])}. "
                + ". ".join(parts) + ".")
    return {**claim, "verdict": verdict, "measured": measured, "depth": depth,
            "settle": "More seeds where an interval straddles the margin; the full-size run for "
                      "convergence. ReZero proper (no activation after the addition) is the "
                      "library's residual='rezero', not run here."}


def claim_plain_depth(out) -> dict[str, Any]:
    """The three pillars (He init, BN, regularization) make a deep plain stack trainable."""
    cells = out["cells"]
    claim = {
        "id": "DEPTH-PILLARS", "where": "Section 1 (the \"Aha\" question) and Section 24",
        "quote": "If deeper networks are more powerful (Chapter 11), why can't you just stack 100 "
                 "layers and train? What goes wrong, and how do these three pillars prevent it? "
                 "... Master these three, and you can train anything.",
        "rule": f"At the deepest depth where plain_bn and he_bn ran: the plain CNN with He + BN "
                f"(no skip connections) trains as well as the ResNet with He + BN when the "
                f"paired-t 95 % interval of (plain - ResNet) lies above -{100 * MARGIN:g} pt "
                "(confirmed); refuted when Holm's decision puts it below; inconclusive "
                "otherwise.",
    }
    depth = deepest(cells, ("he_bn", "plain_bn"))
    if depth is None:
        return {**claim, "verdict": "not run", "measured": "-", "depth": None}
    comp = find(out, depth, "plain_bn", "he_bn")
    verdict = ("confirmed" if non_inferior(comp) is True else
               "refuted" if below(comp) else "inconclusive")
    shallow = min(int(d) for d in cells["plain_bn"])
    deg = next((c for c in out["depth_comparisons"] if c["row"] == "plain_bn"
                and c["depth"] == depth), None)
    res = next((c for c in out["depth_comparisons"] if c["row"] == "he_bn"
                and c["depth"] == depth), None)
    measured = (f"depth {depth}: plain CNN + He + BN {_acc(cells['plain_bn'][str(depth)])}, "
                f"ResNet + He + BN {_acc(cells['he_bn'][str(depth)])}; plain - ResNet: "
                f"{_comp_text(comp)}.")
    if shallow < depth:
        measured += (f" Depth {depth} against depth {shallow} (degradation): plain "
                     f"{_comp_text(deg)}; ResNet {_comp_text(res)}.")
    return {**claim, "verdict": verdict, "measured": measured, "depth": depth,
            "settle": "More seeds and longer training: the question is whether the gap closes "
                      "at convergence (He et al. 2016, Fig. 1: on CIFAR-10 it does not; the "
                      "56-layer plain net has higher training error than the 20-layer one)."}


def claims(out) -> list[dict[str, Any]]:
    return [claim_exp06(out), claim_init_only(out), claim_plain_depth(out)]


# --------------------------------------------------------------------------- results


def build_results(cfg, cells: Mapping[str, Mapping[str, Any]], dataset) -> dict[str, Any]:
    """results.json's study part: the cells, the comparisons, the probe summaries, the claims."""
    out = {"dataset": dataset.info(), "seeds": list(range(cfg.seed, cfg.seed + cfg.study.seeds)),
           "chance_accuracy": 1.0 / dataset.num_classes,
           "rows": [r for r in ROWS if r in cells],
           "depths": sorted({int(d) for row in cells.values() for d in row}),
           "cells": {r: dict(sorted(cells[r].items(), key=lambda kv: int(kv[0])))
                     for r in ROWS if r in cells},
           "margin": MARGIN, "fail_factor": FAIL_FACTOR}
    out["comparisons"] = compare_depths(out["cells"])
    out["depth_comparisons"] = compare_with_depth(out["cells"])
    out["probe"] = {r: {d: probe_summary(c) for d, c in cs.items()}
                    for r, cs in out["cells"].items()}
    out["claims"] = claims(out)
    return out


# --------------------------------------------------------------------------- figures


def _figure(width, height) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _curve(step_losses: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of block means of the per-step loss (non-finite steps left out)."""
    n = min(len(s) for s in step_losses)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    window = max(1, n // CURVE_POINTS)
    blocks = []
    for s in step_losses:
        v = np.asarray(s[:n], np.float64)
        v = np.where(np.isfinite(v), v, np.nan)
        k = -(-n // window)
        with np.errstate(all="ignore"):
            blocks.append([np.nanmean(v[i * window:(i + 1) * window])
                           if np.isfinite(v[i * window:(i + 1) * window]).any() else np.nan
                           for i in range(k)])
    x = np.minimum(np.arange(len(blocks[0])) * window + window / 2, n)
    with np.errstate(all="ignore"):
        y = np.nanmean(np.asarray(blocks), axis=0) if len(blocks) > 1 else np.asarray(blocks[0])
    return x, y


def figures(out: Mapping[str, Any], workdir: pathlib.Path) -> list[str]:
    """curves.png, accuracy.png, grad_norms.png; returns their names."""
    depths, cells = out["depths"], out["cells"]
    colors = {r: f"C{i}" for i, r in enumerate(ROWS)}

    fig = _figure(4.2 * len(depths), 3.6)
    for k, d in enumerate(depths):
        ax = fig.add_subplot(1, len(depths), k + 1)
        for row, cs in cells.items():
            if str(d) in cs:
                x, y = _curve([r["step_loss"] for r in cs[str(d)]["runs"]])
                ax.plot(x, y, color=colors[row], lw=1.4, label=LABELS[row])
        ax.set_yscale("log")
        ax.set_title(f"depth {d}")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.set_ylabel("training loss (block means, mean over seeds)")
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncol=4, fontsize="small")
    fig.savefig(workdir / "curves.png")

    fig = _figure(6.8, 4.4)
    ax = fig.add_subplot()
    for row, cs in cells.items():
        ds = sorted(int(d) for d in cs)
        m = np.array([cs[str(d)]["test_accuracy"]["mean"] for d in ds]) * 100
        lo = np.array([_num(cs[str(d)]["test_accuracy"]["low"]) for d in ds]) * 100
        hi = np.array([_num(cs[str(d)]["test_accuracy"]["high"]) for d in ds]) * 100
        err = np.nan_to_num(np.vstack([m - lo, hi - m]), nan=0.0, posinf=0.0)
        ax.errorbar(ds, m, yerr=err, color=colors[row], marker="o", ms=4, capsize=3,
                    label=LABELS[row])
    ax.set_xscale("log")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("depth (weighted layers of the ResNet; plain: one conv fewer)")
    ax.set_ylabel("test accuracy (%), mean and 95 % CI over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(workdir / "accuracy.png")

    fig = _figure(4.6 * 2, 3.0 * len(depths))
    for k, d in enumerate(depths):
        for j, when in enumerate(("init", "end")):
            ax = fig.add_subplot(len(depths), 2, 2 * k + j + 1)
            for row in cells:
                p = out["probe"][row].get(str(d))
                if p is None:
                    continue
                y = np.asarray(p[when]["norms"], np.float64)
                ax.plot(np.arange(len(y)), np.where(y > 0, y, np.nan), color=colors[row],
                        lw=1.2, marker=".", ms=3, label=LABELS[row])
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            epoch = "initialization" if when == "init" else "end of training"
            ax.set_title(f"depth {d}, {epoch}", fontsize="medium")
            if k == len(depths) - 1:
                ax.set_xlabel("layer (forward order; the head last)")
            if j == 0:
                ax.set_ylabel("‖dL/dW‖ (geo. mean over seeds)")
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4,
               fontsize="small")
    fig.savefig(workdir / "grad_norms.png")
    return ["curves.png", "accuracy.png", "grad_norms.png"]


# --------------------------------------------------------------------------- results.md


def _setup(cfg, out) -> str:
    o, t = cfg.optim, cfg.train
    d = out["dataset"]
    return (f"Data: {d['name']} ({d['num_train']} train, {d['num_val']} val, {d['num_test']} "
            f"test images, {'x'.join(map(str, d['image_shape']))}). ResNets: variant "
            f"{cfg.model.variant}, width x{cfg.model.width_multiplier:g} (stage widths "
            f"{'-'.join(map(str, cfg.model.stage_widths()))}), shortcut "
            f"{cfg.model.shortcut_kind}. Optimizer {o.name} (momentum {o.momentum:g}), lr "
            f"{o.learning_rate:g}, {o.schedule}, warmup {o.warmup_steps} steps, coupled L2 "
            f"{o.l2:g} on kernels, batch {t.batch_size}, {t.num_epochs} epoch(s), no "
            f"augmentation, early stopping off (the last state is tested); non-finite steps "
            f"skipped inline, a run stops after {t.max_consecutive_skips} in a row. Seeds "
            f"{out['seeds'][0]}..{out['seeds'][-1]} ({len(out['seeds'])}; seed s gives every "
            f"cell the same batch order). Gradient probe: the first {cfg.study.grad_batch} "
            "training images, training mode.")


def accuracy_table(out) -> str:
    depths = out["depths"]
    lines = ["| row | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|" + "---:|" * len(depths)]
    for row, cs in out["cells"].items():
        cells = []
        for d in depths:
            c = cs.get(str(d))
            if c is None:
                cells.append("-")
                continue
            mark = f" ⚠ {len(c['unstable_seeds'])}/{len(c['runs'])}" if c["unstable_seeds"] else ""
            cells.append(_acc(c) + mark)
        lines.append(f"| {LABELS[row]} (`{row}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stability_table(out) -> str:
    lines = [("| row | depth | params | non-finite steps / steps | seeds unstable | seeds failed "
             "(< 2 x chance) | stop reasons | train time / seed |"),
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for row, cs in out["cells"].items():
        for d, c in cs.items():
            reasons = sorted({r["stop_reason"] for r in c["runs"]})
            time_s = np.mean([r["train_time_s"] for r in c["runs"]])
            lines.append(f"| `{row}` | {d} | {c['num_params']} | {c['skipped_steps']} / "
                         f"{c['steps_run']} | {len(c['unstable_seeds'])} / {len(c['runs'])} | "
                         f"{len(c['failed_seeds'])} | {', '.join(reasons)} | {time_s:.1f} s |")
    return "\n".join(lines) + "\n"


def probe_table(out) -> str:
    lines = [("| row | depth | layers | logits std at init | loss at init | layers with "
             "‖dL/dW‖ = 0 at init | spread of ‖dL/dW‖ over layers, init → end (decades) | "
             "first conv / last conv, init → end |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def g(x, fmt):
        return format(x, fmt) if math.isfinite(x) else "-"

    for row, ps in out["probe"].items():
        for d, p in ps.items():
            i, e = p["init"], p["end"]
            lines.append(f"| `{row}` | {d} | {len(p['layers'])} | {g(i['logit_std'], '.3g')} | "
                         f"{g(i['loss'], '.3g')} | {g(i['zero_layers'], '.0f')} | "
                         f"{g(i['spread_decades'], '.2f')} → {g(e['spread_decades'], '.2f')} | "
                         f"{g(i['first_over_last'], '.3g')} → {g(e['first_over_last'], '.3g')} |")
    return "\n".join(lines) + "\n"


def verdict_line(comp) -> str:
    inf, a, b = comp["inference"], LABELS[comp["case"]], LABELS[comp["against"]]
    if inf.get("decision") == "differs":
        head = f"{a} is {'above' if inf['mean'] > 0 else 'below'} {b}"
    else:
        head = f"no difference shown between {a} and {b}"
    return f"- depth {comp['depth']}: {head}: {stats_report.formal(inf)}."


def results_md(command: str, cfg, out, wall: float, figure_names) -> list[str]:
    md = [f"# Depth and residual connections (★R1)\n\nCommand: `{command}` ({wall:.0f} s)\n",
          _setup(cfg, out) + "\n",
          "## Test accuracy (mean and 95 % CI over seeds, Student's t)\n",
          ("⚠ k/n: k of the n seeds unstable (a non-finite step, a stop for non-finite steps, or "
          f"test accuracy below {FAIL_FACTOR:g} x chance = {100 * FAIL_FACTOR * out['chance_accuracy']:.0f} %).\n"),
          accuracy_table(out),
          "## Paired comparisons at each depth (test accuracy)\n",
          ("Per-seed differences (row minus the row it is compared with, same seed); intervals "
          "by Student's paired t and by the exact bootstrap over seeds; p-values Holm-adjusted "
          "over the comparisons of one depth; 'detectable' is the smallest true difference "
          "this many seeds detect at 80 % power, from the measured sd (`analysis.inference`).\n")]
    for d, comps in out["comparisons"].items():
        md += [f"### Depth {d}\n",
               stats_report.comparison_table(
                   [(f"`{c['case']}`", f"`{c['against']}`", c["inference"]) for c in comps],
                   what="row"),
               "\n".join(verdict_line(c) for c in comps) + "\n"]
    if out["depth_comparisons"]:
        md += ["## Depth against the shallowest depth (same row, paired by seed)\n",
               "Holm over this table.\n",
               stats_report.comparison_table(
                   [(f"`{c['row']}` depth {c['depth']}", f"depth {c['against_depth']}",
                     c["inference"]) for c in out["depth_comparisons"]], what="row"),
               "\n".join(f"- `{c['row']}` depth {c['depth']} - depth {c['against_depth']}: "
                         f"{stats_report.formal(c['inference'])}."
                         for c in out["depth_comparisons"]) + "\n"]
    md += ["## Stability\n", stability_table(out),
           "## Gradient probe (per-layer ‖dL/dW‖ on the fixed batch)\n",
           ("Layers: convs and the head. Spread: log10(max / min) of the per-layer norms that "
           "are not 0 (median over seeds); first / last: the first conv's norm over the last "
           "conv's before the head (median over seeds; '-' where one of them is 0, e.g. a "
           "branch whose output starts multiplied by 0); 'end' is after the last epoch "
           "trained. At init Fixup's classifier is 0, so every conv's gradient is 0 there; "
           "zero-γ and SkipInit zero every branch's gradient.\n"),
           probe_table(out),
           "## Verdicts on the chapter's claims (details in analysis.md)\n",
           "\n".join(f"- **{c['id']}** ({c['where']}): **{c['verdict']}**. {c['measured']}"
                     for c in out["claims"]) + "\n",
           "Figures: " + ", ".join(figure_names) + "\n"]
    return md


# --------------------------------------------------------------------------- analysis.md


def _largest(out) -> str:
    """The deepest cells run and their sizes, in words."""
    cells = out["cells"]
    deepest_depth = max(out["depths"])
    rows = [r for r, cs in cells.items() if str(deepest_depth) in cs]
    params = {r: cells[r][str(deepest_depth)]["num_params"] for r in rows}
    return (f"depth {deepest_depth} for {', '.join(f'`{r}`' for r in rows)} "
            f"({min(params.values())}-{max(params.values())} parameters)")


def _stage_sizes(out) -> str:
    """The feature-map sizes of the three stages (stride-2 convs with padding 1)."""
    h = out["dataset"]["image_shape"][0]
    sizes = [h, (h - 1) // 2 + 1]
    sizes.append((sizes[1] - 1) // 2 + 1)
    return "/".join(map(str, sizes))


def _fmt(x, fmt=".3g") -> str:
    x = float(x)
    return format(x, fmt) if math.isfinite(x) else "not finite"


def _probe_sentence(out, row, depth) -> str:
    p = out["probe"].get(row, {}).get(str(depth))
    if p is None:
        return "not run"
    i, e, n = p["init"], p["end"], len(p["layers"])

    def spread(q):
        if not math.isfinite(q["spread_decades"]):
            return "undefined (fewer than two layers with a nonzero gradient)"
        return f"{q['spread_decades']:.2f} decades"

    zero = (f"; {i['zero_layers']:.0f} of {n} layers have a zero gradient at init"
            if i["zero_layers"] else "")
    return (f"logits std {_fmt(i['logit_std'])} at init{zero}; spread of the per-layer gradient "
            f"norms {spread(i)} at init and {spread(e)} at the end; first / last conv "
            f"{_fmt(i['first_over_last'])} at init, {_fmt(e['first_over_last'])} at the end")


def analysis_md(command: str, cfg, out, wall: float) -> str:
    cells, depths = out["cells"], out["depths"]
    d_max = max(depths)
    exp06 = out["claims"][0]
    lines = [
        "# Depth and residual connections: analysis (★R1)\n",
        (f"Command: `{command}` ({wall:.0f} s). Numbers below are test accuracies, mean and 95 % "
        "interval over seeds, and paired differences with Student's paired-t interval and "
        "Holm's adjusted p (results.md has every table).\n"),
        _setup(cfg, out) + "\n",
        "## The chapter's claims, our measurements, the verdicts\n",
    ]
    for c in out["claims"]:
        lines += [f"### {c['id']}: {c['where']}\n",
                  f"> {c['quote']}\n",
                  *([f"Ledger: {c['ledger']}.\n"] if c.get("ledger") else []),
                  f"**Measured.** {c['measured']}\n",
                  f"**Rule.** {c['rule']}\n",
                  f"**Verdict: {c['verdict']}.** {c.get('settle', '')}\n"]
    lines += [
        "## R1: Fixup against He + BN, and what depth does without a norm\n",
        "### What was run\n",
        (f"The chapter asks for Fixup on a 50-layer ResNet compared with He + BN. On this 2-core "
        f"CPU the deepest networks trained were {_largest(out)}: the CIFAR ResNet layout "
        "(He et al. 2016, section 4.2: a 3x3 stem conv, three stages of n basic blocks, "
        "depth 6n+2) at a reduced width, on MNIST rather than CIFAR-10, for a budget of "
        f"{cfg.train.num_epochs} epoch(s) over {out['dataset']['num_train']} training images. "
        "ResNet-50 itself (the ImageNet bottleneck network) is not a 6n+2 depth; ResNet-56 "
        "is the CIFAR network of that depth, and ResNet-110 one of the networks the Fixup "
        "paper (Zhang et al. 2019) trains on CIFAR-10. Every row starts from the "
        "same seeds and sees the same batches, so the comparisons are paired.\n"),
        "### Training dynamics\n",
    ]
    for d in depths:
        parts = []
        for row in ("he_bn", "fixup", "skipinit", "zero_gamma", "he_nonorm", "plain_bn",
                    "plain_nonorm"):
            c = cells.get(row, {}).get(str(d))
            if c is not None:
                parts.append(f"{LABELS[row]} {_acc(c)}"
                             + (f" ({_stability(c)})" if c["unstable_seeds"] else ""))
        lines.append(f"- Depth {d}: " + "; ".join(parts) + ".")
    lines.append("")
    lines += [
        ("The gradient probe (grad_norms.png; the table in results.md). "
        f"At depth {d_max}:\n"),
        *[f"- {LABELS[row]}: {_probe_sentence(out, row, d_max)}."
          for row in ROWS if str(d_max) in cells.get(row, {})],
        "",
        ("How to read it. He init keeps the variance of one conv's output equal to its "
         "input's; it says nothing about what a skip connection adds. A standard residual "
         "block *adds* its branch to its input. With BatchNorm each branch is normalized but "
         "the sum is not, so the forward variance grows about linearly with the number of "
         "blocks (De & Smith 2020); without a norm the branch carries the input's own "
         "variance, the variance about doubles per block, and the logits and the first "
         "gradients grow geometrically. Fixup and SkipInit start every branch at zero (Fixup: "
         "each branch's last conv and the classifier at 0, the other convs scaled by "
         "L^(-1/2); SkipInit: a scalar gate at 0), so at init the network is its identity "
         "path whatever the depth, and Fixup's rescaling keeps the first update's size "
         "independent of the depth; zero-γ does the same inside a BN net. The price is the "
         "start: every branch's gradient is 0 at the first step (every conv's, under Fixup, "
         "whose classifier is 0 too), so these rows learn nothing in their branches until "
         "the gates, the classifier or the last convs have moved. A plain stack has no "
         "identity path: the gradient passes through every layer.\n"),
        ("Measured, the logits' standard deviation at init on the probe batch (median over "
        "seeds), by depth:\n"),
        *[f"- {LABELS[row]}: " + ", ".join(
            f"depth {d} {_fmt(out['probe'][row][str(d)]['init']['logit_std'])}"
            for d in depths if str(d) in out["probe"].get(row, {}))
          for row in ("he_bn", "he_nonorm", "plain_bn", "plain_nonorm", "fixup", "skipinit")
          if row in out["probe"]],
        "",
        ("The gradient of the first conv over that of the last conv before the head, at init "
         "(median over seeds; above 1: the gradient grows towards the input):\n"),
        *[f"- {LABELS[row]}: " + ", ".join(
            f"depth {d} {_fmt(out['probe'][row][str(d)]['init']['first_over_last'])}"
            for d in depths if str(d) in out["probe"].get(row, {}))
          for row in ("he_bn", "he_nonorm", "plain_bn", "plain_nonorm") if row in out["probe"]],
        "",
        "and the runs that were unstable (a non-finite step, or test accuracy below "
        f"{FAIL_FACTOR:g} x chance): "
        + ("; ".join(f"{LABELS[row]} at depth {d}: {len(c['unstable_seeds'])} of "
                     f"{len(c['runs'])} seeds ({c['skipped_steps']} non-finite steps)"
                     for row, cs in cells.items() for d, c in cs.items() if c["unstable_seeds"])
           or "none") + ".\n",
        "### What this covers, and what it does not\n",
        ("Covered: the mechanism of the question at the depths of the Fixup paper's CIFAR "
        f"experiments (up to {d_max} layers here), with the same residual forms, the same "
        f"He + BN baseline, SGD with momentum {cfg.optim.momentum:g} at lr "
        f"{cfg.optim.learning_rate:g} (batch {cfg.train.batch_size}) and a cosine schedule, paired "
        "seeds, per-layer gradient norms at init and after every epoch, and the stability of "
        "each run (non-finite steps are counted, not hidden).\n"),
        "Not covered:\n",
        ("- **CIFAR-10 and convergence.** MNIST is far easier than CIFAR-10, and this budget "
         "is a few hundred steps, not 200 epochs: the Fixup paper's claim is about accuracy at "
         "convergence (with mixup regularization for its best Fixup results), which a short "
         "run cannot measure. The verdicts here are about training dynamics and stability "
         "in the first epochs: how fast each form starts to learn and whether it stays "
         "finite.\n"),
        ("- **ResNet-50.** The chapter's network is the ImageNet bottleneck ResNet-50 (1x1-3x3-1x1 "
        "branches, m = 3 layers per branch, Fixup's factor L^(-1/4)). The library has it "
        "(`model.variant=\"imagenet\"`, `model.depth=50`, Fixup included) but its 7x7/2 stem and "
        "max pool are built for 224 x 224 ImageNet images; it was not trained here.\n"),
        (f"- **Width.** The ResNets ran at width x{cfg.model.width_multiplier:g} (stage widths "
        f"{'-'.join(map(str, cfg.model.stage_widths()))} instead of 16-32-64). Signal "
        "propagation at init depends on depth far more than on width, but narrow layers are "
        "noisier (INIT-24: with depth >> width the typical variance ratio collapses), and "
        "the BN nets' advantage at convergence may differ at full width.\n"),
        (f"- **Training length and regularization.** {cfg.train.num_epochs} epoch(s) instead of "
        "the 200-epoch recipe; no augmentation; no learning-rate warmup (He et al. 2016 warm "
        "ResNet-110 up at lr 0.01); Fixup without the stronger regularization (mixup) its "
        "paper adds to match BN at convergence, and without its reference code's 10x lower "
        "learning rate for the scalar biases and multipliers. A short run measures how fast "
        "and how stably each form starts, not where it ends.\n"),
        *([(f"- **Resolution.** Images were average-pooled by {cfg.study.downsample} "
           f"(to {'x'.join(map(str, out['dataset']['image_shape'][:2]))}) to fit the CPU; "
           f"the three stages then run at {_stage_sizes(out)} pixels instead of "
           "32/16/8 on CIFAR-10.\n")]
          if cfg.study.downsample > 1 else []),
        "### The full-size command (not run here)\n",
        f"```\n{FULL_COMMAND}\n```\n",
        ("`experiments/configs/depth_residual_full.py`: CIFAR-10 (binary version), full width, "
        "every row at depths 20, 56 and 110, 3 seeds, the cifar10_resnet20 recipe (SGD "
        "momentum 0.9, lr 0.1, cosine over 200 epochs, coupled L2 5e-4, flips and 4-pixel "
        "crops), batch 128; see its docstring for the cost.\n"),
        f"**EXP-06 in one line:** {exp06['verdict']} at depth {exp06.get('depth')}.\n",
    ]
    return "\n".join(lines)
