"""The study's statistics, verdicts, tables, figures and analysis (pure functions of the records).

Every comparison is a set of per-seed values (seed s is paired across cells: init key and, at one
gradient batch, batch order), so each gets `analysis.inference.compare` (paired t and exact
bootstrap intervals) and Holm's adjustment within its family (`compare_family`). The families
(`comparison_families`), all on the per-seed values stored in results.json:

  small_batch   per norm, test accuracy at the smallest batch minus at the reference batch (128)
  sensitivity   per norm, that change minus LayerNorm's (a difference in differences: the
                fixed-epoch effects that every norm shares, fewer and larger steps at the large
                batch, cancel)
  norms         at the smallest batch each norm minus BatchNorm; at the reference batch
                BatchNorm minus each norm
  separation    for a small BN batch s: BN at batch s minus BN at 128 (both batches shrink), the
                part of the BN batch alone (ghost s at gradient batch 128 minus BN at 128), the
                part of the gradient batch alone (BN at batch s minus ghost s at 128; the two
                parts add up to the first exactly, seed by seed), LayerNorm's change from 128 to
                s (the gradient batch alone, without batch statistics), and the device batch
                alone (accumulation over micro-batches of 8 minus ghost 8, both at 128)
  regularization  BN-11: per seed, the least-squares slope of the train - test gap on log2 of
                the BN batch over the ghost cells at gradient batch 128 (and the gap at BN batch
                128 minus at 2); on the grid, BatchNorm's gap slope over log2(batch) and that
                slope minus LayerNorm's
  mismatch      BatchNorm's eval-mode minus train-mode test accuracy at every BN cell, and the
                running statistics' normalization error at the smallest batch minus at 128
  exploratory   added after the first three seeds had run, so no verdict uses them: BN's
                train-mode test accuracy at the smallest batch minus at 128, and the
                normalization error with accumulation (k running-statistics updates per step)
                minus with ghost batches (one), and at the largest batch minus the smallest

Verdict rules (`verdict_*`) are fixed here, before the numbers: a comparison counts when its
Holm-adjusted decision is "differs", and its sign then decides; BN-16 keeps the ledger's 1 pp and
0.5 pp thresholds on the paired-t 95 % intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments import stats_report
from experiments.batch_norm_batch import grid
from ml_practical.analysis import inference

REFERENCE_BATCH = 128      # the ledger's reference batch (BN-16) and the ghost part's batch
FIGURES = ("accuracy_vs_batch.png", "gap_vs_batch.png", "separation.png", "mismatch.png")
NORM_LABELS = {"batch": "BN", "group2": "GN (G=2)", "group4": "GN (G=4)",
               "layer": "LN (C,H,W)", "instance": "IN", "none": "no norm"}

# name -> (getter on a per-seed record, what the tables call it, scale, unit)
METRICS: dict[str, tuple[Callable[[Mapping[str, Any]], float], str, float, str]] = {
    "test_accuracy": (lambda r: r["test_accuracy"], "test accuracy", 100.0, "pp"),
    "train_accuracy": (lambda r: r["train_accuracy"], "train accuracy (eval mode)", 100.0, "pp"),
    "gap": (lambda r: r["gap"], "train - test accuracy", 100.0, "pp"),
    "train_mode_test_accuracy": (lambda r: r["test_modes"]["train"]["accuracy"],
                                 "test accuracy in train mode at the BN batch", 100.0, "pp"),
    "mode_gap": (lambda r: r["test_modes"]["accuracy_gap"],
                 "eval-mode - train-mode test accuracy", 100.0, "pp"),
    "mean_rms": (lambda r: r["mean_rms"] if r["mean_rms"] is not None else math.nan,
                 "running-statistics normalization error (rms, mean over layers)", 1.0, ""),
}


# --------------------------------------------------------------------------- records


def _ci(values: Sequence[float]) -> dict[str, Any]:
    v = [float(x) for x in values]
    if not v or not all(math.isfinite(x) for x in v):
        return {"mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan, "values": v}
    t = inference.paired_t(v)
    return {"mean": t["mean"], "sd": t["sd"], "low": t["low"], "high": t["high"], "values": v}


def cell_record(cell: grid.Cell, cell_cfg, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell over its seeds: its settings, the per-seed runs and each METRICS' mean and 95 % CI
    (Student's t over seeds)."""
    return {"part": cell.part, "norm": cell.norm, "batch": cell.batch, "ghost": cell.ghost,
            "accum": cell.accum, "bn_batch": cell.bn_batch, "device_batch": cell.device_batch,
            "lr": cell_cfg.optim.learning_rate, "runs": runs,
            "summary": {m: _ci([get(r) for r in runs]) for m, (get, *_r) in METRICS.items()}}


def _by_seed(cells: Mapping[str, Any], name: str | None, metric: str) -> dict[int, float]:
    if name is None or name not in cells:
        return {}
    get = METRICS[metric][0]
    return {r["seed"]: float(get(r)) for r in cells[name]["runs"]}


def _combine(cells, terms: Sequence[tuple[float, str | None]], metric: str
             ) -> tuple[list[int], list[float]]:
    """Per common seed, sum_i coef_i * metric(cell_i); ([], []) if a cell is missing."""
    maps = [(c, _by_seed(cells, n, metric)) for c, n in terms]
    if any(not m for _, m in maps):
        return [], []
    seeds = sorted(set.intersection(*[set(m) for _, m in maps]))
    values = {s: float(sum(c * m[s] for c, m in maps)) for s in seeds}
    seeds = [s for s in seeds if math.isfinite(values[s])]  # a diverged run has no value
    return seeds, [values[s] for s in seeds]


def _slopes(cells, names: Sequence[str], metric: str, x_of: Callable[[Mapping], float]
            ) -> tuple[list[int], list[float]]:
    """Per common seed, the least-squares slope of metric on x over `names`."""
    present = [n for n in names if n in cells]
    if len(present) < 2:
        return [], []
    x = np.array([x_of(cells[n]) for n in present], np.float64)
    maps = [_by_seed(cells, n, metric) for n in present]
    seeds = sorted(set.intersection(*[set(m) for m in maps]))
    out = []
    for s in seeds:
        y = np.array([m[s] for m in maps], np.float64)
        out.append(float(np.polyfit(x, y, 1)[0]))
    return seeds, out


def _entry(label: str, metric: str, kind: str, cells_used: Sequence[str], seeds, values,
           claim: str = "") -> dict[str, Any]:
    return {"name": label, "metric": metric, "kind": kind, "cells": list(cells_used),
            "seeds": list(seeds), "values": list(values), "claim": claim}


def small_and_reference(study) -> tuple[int, int]:
    """(the smallest batch of the grid, the reference batch: 128 if it ran, else the largest)."""
    batches = sorted(study.batches)
    return batches[0], REFERENCE_BATCH if REFERENCE_BATCH in batches else batches[-1]


def comparison_families(cells: Mapping[str, Any], study) -> dict[str, list[dict[str, Any]]]:
    """Every family of the module docstring, each entry with its per-seed values and
    `inference.compare_family`'s result over its family ("inference")."""
    small, ref = small_and_reference(study)
    norms = [n for n in grid.NORMS if f"{n}/b{small}" in cells or f"{n}/b{ref}" in cells]
    name = grid.cell_name
    fam: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "small_batch", "sensitivity", "norms", "separation", "regularization", "mismatch",
        "exploratory")}

    def add(family, label, metric, kind, terms, claim=""):
        seeds, values = _combine(cells, terms, metric)
        fam[family].append(_entry(label, metric, kind, [n for _, n in terms], seeds, values,
                                  claim))

    for n in norms:
        add("small_batch", f"{NORM_LABELS[n]}: batch {small} - batch {ref}", "test_accuracy",
            "difference", [(1, name(n, small)), (-1, name(n, ref))])
    for n in norms:
        if n != "layer":
            add("sensitivity", f"{NORM_LABELS[n]} - LN: (batch {small} - batch {ref})",
                "test_accuracy", "difference in differences",
                [(1, name(n, small)), (-1, name(n, ref)), (-1, name("layer", small)),
                 (1, name("layer", ref))])
    for n in norms:
        if n != "batch":
            add("norms", f"batch {small}: {NORM_LABELS[n]} - BN", "test_accuracy", "difference",
                [(1, name(n, small)), (-1, name("batch", small))])
    for n in norms:
        if n != "batch":
            add("norms", f"batch {ref}: BN - {NORM_LABELS[n]}", "test_accuracy", "difference",
                [(1, name("batch", ref)), (-1, name(n, ref))])

    g_ref = study.ghost_grad_batch
    for s in sorted({small, study.fixed_bn_batch}):
        if s >= g_ref:
            continue
        ghost = name("batch", g_ref, ghost=s)
        add("separation", f"both: BN batch {s} - BN batch {g_ref}", "test_accuracy",
            "difference", [(1, name("batch", s)), (-1, name("batch", g_ref))])
        add("separation", f"BN batch alone: ghost {s} - ghost {g_ref}, gradient batch {g_ref}",
            "test_accuracy", "difference", [(1, ghost), (-1, name("batch", g_ref))])
        add("separation", f"gradient batch alone: {s} - {g_ref}, BN batch {s}", "test_accuracy",
            "difference", [(1, name("batch", s)), (-1, ghost)])
        add("separation", f"gradient batch alone, LN: batch {s} - batch {g_ref}",
            "test_accuracy", "difference", [(1, name("layer", s)), (-1, name("layer", g_ref))])
    for b in study.accum_batches:
        k = b // study.fixed_bn_batch
        if k > 1:
            add("separation", f"device batch alone: {study.fixed_bn_batch} (accumulation) - {b}"
                f" (ghost), BN batch {study.fixed_bn_batch}, gradient batch {b}",
                "test_accuracy", "difference",
                [(1, name("batch", b, accum=k)),
                 (-1, name("batch", b, ghost=study.fixed_bn_batch))])

    ghosts = [name("batch", g_ref, ghost=g) for g in sorted({*study.ghost_sizes, g_ref})]
    log_bn = lambda c: math.log2(c["bn_batch"])
    seeds, values = _slopes(cells, ghosts, "gap", log_bn)
    fam["regularization"].append(_entry(
        f"slope of the gap on log2(BN batch), ghost {min(study.ghost_sizes)}..{g_ref} at "
        f"gradient batch {g_ref}", "gap", "slope per doubling", ghosts, seeds, values, "BN-11"))
    smallest_ghost = name("batch", g_ref, ghost=min(study.ghost_sizes))
    add("regularization", f"gap: BN batch {g_ref} - BN batch {min(study.ghost_sizes)}, gradient "
        f"batch {g_ref}", "gap", "difference",
        [(1, name("batch", g_ref)), (-1, smallest_ghost)])
    plain = {n: [name(n, b) for b in sorted(study.batches)] for n in ("batch", "layer")}
    log_b = lambda c: math.log2(c["batch"])
    s_bn, v_bn = _slopes(cells, plain["batch"], "gap", log_b)
    s_ln, v_ln = _slopes(cells, plain["layer"], "gap", log_b)
    fam["regularization"].append(_entry("slope of BN's gap on log2(batch), grid", "gap",
                                        "slope per doubling", plain["batch"], s_bn, v_bn))
    common = sorted(set(s_bn) & set(s_ln))
    d = [v_bn[s_bn.index(s)] - v_ln[s_ln.index(s)] for s in common]
    fam["regularization"].append(_entry("slope of the gap on log2(batch), grid: BN - LN", "gap",
                                        "difference of slopes",
                                        plain["batch"] + plain["layer"], common, d))

    for cname, c in cells.items():
        if c["norm"] == "batch":
            add("mismatch", f"{cname} (BN batch {c['bn_batch']}): eval - train mode",
                "mode_gap", "value", [(1, cname)])
    add("mismatch", f"normalization error: BN batch {small} - BN batch {ref}", "mean_rms",
        "difference", [(1, name("batch", small)), (-1, name("batch", ref))])
    add("mismatch", f"normalization error: ghost {min(study.ghost_sizes)} - BN, gradient batch "
        f"{g_ref}", "mean_rms", "difference", [(1, smallest_ghost), (-1, name("batch", g_ref))])

    # Exploratory (chosen after the first three seeds had run; no verdict rests on them): what
    # BatchNorm computes with batch statistics, and the running statistics' update cadence.
    add("exploratory", f"train-mode test accuracy: BN batch {small} - BN batch {ref}",
        "train_mode_test_accuracy", "difference", [(1, name("batch", small)),
                                                    (-1, name("batch", ref))])
    for b in study.accum_batches:
        k = b // study.fixed_bn_batch
        if k > 1:
            add("exploratory", f"normalization error: accumulation ({k} running-statistics "
                f"updates per step) - ghost {study.fixed_bn_batch} (one), gradient batch {b}",
                "mean_rms", "difference", [(1, name("batch", b, accum=k)),
                                           (-1, name("batch", b, ghost=study.fixed_bn_batch))])
    add("exploratory", f"normalization error: BN batch {max(study.batches)} - BN batch {small}",
        "mean_rms", "difference", [(1, name("batch", max(study.batches))),
                                   (-1, name("batch", small))])

    for entries in fam.values():
        family = inference.compare_family({e["name"]: e["values"] for e in entries})
        for e in entries:
            e["inference"] = family[e["name"]]
    return fam


def find(families: Mapping[str, list[dict]], family: str, label_start: str) -> dict | None:
    """The entry of `family` whose name starts with `label_start` (None if absent or empty)."""
    for e in families.get(family, []):
        if e["name"].startswith(label_start) and e["inference"].get("n"):
            return e
    return None


# --------------------------------------------------------------------------- verdicts


def signed(inf: Mapping[str, Any] | None, *, expect_positive: bool) -> str:
    """"confirmed" when Holm's decision is "differs" with the expected sign, "refuted" when it
    differs with the other sign, else "inconclusive" ("not run" without the comparison)."""
    if inf is None or not inf.get("n"):
        return "not run"
    if inf.get("decision") != "differs":
        return "inconclusive"
    return "confirmed" if (inf["t"]["mean"] > 0) == expect_positive else "refuted"


def verdict_bn16(bn: Mapping[str, Any] | None, ln: Mapping[str, Any] | None) -> str:
    """BN-16, "BN is unstable with small batches; LN is not" (ledger: BN at batch 2 >= 1 pt
    below batch 128 while LN changes < 0.5 pt), on Δ = acc(batch 2) - acc(batch 128):

    confirmed  BN's mean Δ <= -1 pp with its 95 % CI below 0, and LN's CI above -0.5 pp (LN not
               hurt; read one-sided, as the audit's proxy does: LN gaining from 64x more steps
               at equal epochs does not count against a claim that LN is insensitive);
    refuted    BN's CI above -1 pp (BN at batch 2 not 1 pp worse) or LN's CI below -0.5 pp;
    otherwise inconclusive.
    """
    if bn is None or ln is None or not bn.get("n") or not ln.get("n"):
        return "not run"
    b, l = bn["t"], ln["t"]
    if b["mean"] <= -0.01 and b["high"] < 0 and l["low"] > -0.005:
        return "confirmed"
    if b["low"] > -0.01 or l["high"] < -0.005:
        return "refuted"
    return "inconclusive"


def verdict_all_positive(infs: Sequence[Mapping[str, Any]]) -> str:
    """confirmed if every comparison differs with a positive sign, refuted if one differs with
    a negative sign, otherwise inconclusive."""
    infs = [i for i in infs if i is not None and i.get("n")]
    if not infs:
        return "not run"
    if any(i.get("decision") == "differs" and i["t"]["mean"] < 0 for i in infs):
        return "refuted"
    if all(i.get("decision") == "differs" and i["t"]["mean"] > 0 for i in infs):
        return "confirmed"
    return "inconclusive"


def _inf(e):
    return None if e is None else e["inference"]


def verdicts(families: Mapping[str, list[dict]], small: int, ref: int) -> dict[str, Any]:
    """The claims this study tests, each with the comparisons it rests on and its verdict
    (`small`, `ref`: `small_and_reference`)."""
    first = lambda fam, start: _inf(find(families, fam, start))
    bn, ln = first("small_batch", "BN:"), first("small_batch", "LN (C,H,W):")
    out = {
        "BN-16": {"claim": "12.5.1: BN is unstable with small batches; LN is not",
                  "verdict": verdict_bn16(bn, ln), "uses": ["small_batch: BN", "small_batch: LN"]},
        "batch_size_sensitivity": {
            "claim": "12.5.3 table: batch size sensitivity, BN yes (unstable with small batches), "
                     "LN no",
            "verdict": signed(first("sensitivity", "BN - LN"), expect_positive=False),
            "uses": ["sensitivity: BN - LN"]},
        "bn_batch_alone": {
            "claim": "12.5.1 (the same claim, steps held fixed): a small BN batch alone hurts BN",
            "verdict": signed(first("separation", "BN batch alone"), expect_positive=False),
            "uses": ["separation: BN batch alone"]},
        "BN-11": {"claim": "§18 myth 6 / 12.4.4 (2): BN's regularization effect decreases with "
                           "larger batch sizes (the train - test gap grows with the BN batch)",
                  "verdict": signed(first("regularization", "slope of the gap on log2(BN"),
                                    expect_positive=True),
                  "uses": ["regularization: slope over ghost sizes"]},
        "gn_small_batch": {
            "claim": "Interview focus: GN across feature groups is the small-batch CV choice",
            "verdict": signed(first("norms", f"batch {small}: GN (G=4) - BN"),
                              expect_positive=True),
            "uses": ["norms: GN (G=4) - BN at the smallest batch"]},
        "bn_large_batch": {
            "claim": "12.5.3 table: BN is best for CNNs and large-batch training",
            "verdict": verdict_all_positive([e["inference"] for e in families.get("norms", [])
                                             if e["name"].startswith(f"batch {ref}:")]),
            "uses": ["norms: BN - each norm at the reference batch"]},
        "running_stats": {
            "claim": "12.5.1: inference requires running statistics, which may not match the "
                     "test distribution (tested: they match worse after small-batch training)",
            "verdict": signed(first("mismatch", "normalization error: BN batch"),
                              expect_positive=True),
            "uses": ["mismatch: normalization error, smallest batch - reference"]},
    }
    return out


# --------------------------------------------------------------------------- tables


def _pct(s: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    if not math.isfinite(s["mean"]):
        return "-"
    if not math.isfinite(s["low"]):
        return f"{scale * s['mean']:.{digits}f}"
    return f"{scale * s['mean']:.{digits}f} [{scale * s['low']:.{digits}f}, {scale * s['high']:.{digits}f}]"


def grid_table(cells: Mapping[str, Any], metric: str, batches: Sequence[int]) -> str:
    """Norm x batch: mean [95 % CI] over seeds of `metric`."""
    _, label, scale, _ = METRICS[metric]
    norms = [n for n in grid.NORMS if any(f"{n}/b{b}" in cells for b in batches)]
    lines = [f"| {label} | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    for n in norms:
        row = [(_pct(cells[f"{n}/b{b}"]["summary"][metric], scale, 2 if scale == 100 else 3)
                if f"{n}/b{b}" in cells else "-") for b in batches]
        lines.append(f"| {NORM_LABELS[n]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def bn_table(cells: Mapping[str, Any]) -> str:
    """Every BatchNorm cell: its three batches, accuracy, gap, the mode mismatch and the
    running statistics' normalization error per layer."""
    bn = {k: v for k, v in cells.items() if v["norm"] == "batch"}
    layers = []
    for c in bn.values():
        for layer in c["runs"][0]["running_stats"]:
            if layer not in layers:
                layers.append(layer)
    head = ("| cell | BN batch | gradient batch | device batch | lr | test acc % | train - test "
            "pp | train-mode test acc % | eval - train mode pp | same prediction % | "
            + " | ".join(f"rms {l}" for l in layers) + " |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(layers)]
    for name, c in bn.items():
        s = c["summary"]
        agree = np.mean([r["test_modes"]["agreement"] for r in c["runs"]])
        rms = [_pct(_ci([r["running_stats"][l]["mean_rms"] for r in c["runs"]]), 1.0, 3)
               for l in layers]
        lines.append(f"| {name} | {c['bn_batch']} | {c['batch']} | {c['device_batch']} | "
                     f"{c['lr']:.2e} | {_pct(s['test_accuracy'])} | {_pct(s['gap'])} | "
                     f"{_pct(s['train_mode_test_accuracy'])} | {_pct(s['mode_gap'])} | "
                     f"{100 * agree:.1f} | " + " | ".join(rms) + " |")
    return "\n".join(lines) + "\n"


def family_table(entries: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for e in entries:
        _, _, scale, unit = METRICS[e["metric"]]
        rows.append((e["name"], e["kind"], e["inference"], scale, unit))
    if not rows:
        return "(no comparison ran)\n"
    # One table per unit (pp for accuracies, plain for the normalization error).
    out = []
    for scale, unit in sorted({(r[3], r[4]) for r in rows}, reverse=True):
        part = [(n, k, i) for n, k, i, s, u in rows if (s, u) == (scale, unit)]
        table = stats_report.comparison_table(part, what="comparison", scale=scale,
                                              digits=2 if scale == 100 else 4,
                                              unit=unit or "units")
        # The "against" column holds what kind of per-seed value the row tests.
        out.append(table.replace("| comparison | against |", "| comparison | per-seed value |", 1))
    return "\n".join(out)


def results_md(command: str, cfg, out: Mapping[str, Any], wall: float,
               figures: Sequence[str]) -> list[str]:
    cells, fam, study = out["cells"], out["families"], cfg.study
    batches = sorted(study.batches)
    first = next(iter(cells.values()), None)
    md = [f"# Batch size and normalization\n\nCommand: `{command}` ({wall:.0f} s)\n",
          (f"{out['dataset'].get('name', '')}: {cfg.data.limit_train} training images, "
          f"{cfg.train.num_epochs} epochs at every batch (the same examples seen), "
          f"{cfg.optim.name} with lr {cfg.optim.learning_rate:g} at gradient batch "
          f"{study.lr_reference_batch}, scaled by the {study.lr_rule} rule; CNN widths "
          f"{tuple(cfg.model.widths)}; seeds {out['seeds']} (paired). Every cell: mean "
          "[95 % CI, Student's t over seeds]. Accuracies in %, differences in pp.\n")]
    if not out.get("complete", True):
        md.append("**Incomplete: the study was interrupted; these are the finished cells.**\n")
    if first is None:
        return md
    md += ["## Test accuracy\n", grid_table(cells, "test_accuracy", batches),
           "## Train - test gap (eval mode)\n", grid_table(cells, "gap", batches),
           "## BatchNorm cells: BN batch, gradient batch and device batch, and the mismatch\n",
           ("rms = root mean square error of eval mode's normalized value against the "
           f"normalization by the input's own statistics over {study.measure_rows} training "
           "images (`analysis.bn_mismatch.normalization_error`), mean over the layer's "
           "channels.\n"), bn_table(cells)]
    for key, title in (("small_batch", "Smallest against reference batch, per norm"),
                       ("sensitivity", "Batch-size sensitivity relative to LayerNorm"),
                       ("norms", "Norms against BatchNorm"),
                       ("separation", ("Separating the BN batch, the gradient batch and the "
                                      "device batch")),
                       ("regularization", "Regularization (train - test gap) and the BN batch"),
                       ("mismatch", "Train-vs-eval mismatch"),
                       ("exploratory", ("Exploratory (chosen after the first three seeds; no "
                                       "verdict rests on these)"))):
        md += [f"## {title} (Holm over this table)\n", family_table(fam.get(key, []))]
    md.append("## Verdicts\n")
    for key, v in out["verdicts"].items():
        md.append(f"- {key}: {v['verdict']} ({v['claim']})")
    md.append("\nFigures: " + ", ".join(figures) + "\n")
    return md


# --------------------------------------------------------------------------- analysis.md


def _formal(e: Mapping[str, Any] | None) -> str:
    if e is None:
        return "not run"
    _, _, scale, unit = METRICS[e["metric"]]
    return stats_report.formal(e["inference"], scale=scale, digits=2 if scale == 100 else 4,
                               unit=unit or "units")


def analysis_md(command: str, cfg, out: Mapping[str, Any], wall: float) -> str:
    fam, v, cells = out["families"], out["verdicts"], out["cells"]
    f = lambda family, start: find(fam, family, start)
    small, ref = small_and_reference(cfg.study)

    def acc(name):
        c = cells.get(name)
        return "-" if c is None else f"{_pct(c['summary']['test_accuracy'])} %"

    lines = [
        "# Batch size and normalization: the chapter's claims against the measurements\n",
        (f"Command: `{command}` ({wall:.0f} s). Mean [95 % CI] over seeds {out['seeds']}; each "
        "verdict follows the rule stated in `experiments/batch_norm_batch/report.py`, from "
        "Holm-adjusted paired comparisons. Every batch trains the same number of epochs with "
        f"lr ∝ {cfg.study.lr_rule}(batch), so a large batch takes fewer steps: comparisons "
        "across batch sizes carry that effect, which the LayerNorm control and the ghost-batch "
        "cells (fixed gradient batch, same steps) remove.\n"),
        "## 12.5.1 \"Small batches: Noisy statistics, unstable training\" (BN-16)\n",
        (f"BN: batch {small} {acc(f'batch/b{small}')} vs batch {ref} {acc(f'batch/b{ref}')}; "
        f"{_formal(f('small_batch', 'BN:'))}."),
        (f"LN over (C, H, W): batch {small} {acc(f'layer/b{small}')} vs batch {ref} "
        f"{acc(f'layer/b{ref}')}; {_formal(f('small_batch', 'LN (C,H,W):'))}."),
        f"Ledger criterion (BN ≥ 1 pt below, LN not 0.5 pt below): **{v['BN-16']['verdict']}**.",
        (f"With the steps held fixed (gradient batch {cfg.study.ghost_grad_batch}, BN statistics "
        f"over ghost batches): {_formal(f('separation', 'BN batch alone'))}: "
        f"**{v['bn_batch_alone']['verdict']}** for \"a small BN batch alone hurts\"."),
        (f"Train-vs-eval mismatch at BN batch {small}: "
        f"{_formal(f('mismatch', f'batch/b{small} '))} (eval mode minus train mode at the "
        "training BN batch, test accuracy).\n"),
        ("## 12.5.3 table, \"Batch size sensitivity: Yes (unstable with small batches) | No "
        "(per-sample)\"\n"),
        (f"BN's change from batch {ref} to {small} minus LN's: "
        f"{_formal(f('sensitivity', 'BN - LN'))}: **{v['batch_size_sensitivity']['verdict']}** "
        "(negative = BN loses more than LN at the small batch)."),
        "Other norms' change minus LN's: " + "; ".join(
            f"{e['name'].split(':')[0]}: {_formal(e)}" for e in fam.get("sensitivity", [])
            if not e["name"].startswith("BN")) + ".\n",
        "## 12.5.3 table, \"Best for: CNNs, large batch training\" (BN)\n",
        "; ".join(f"{e['name']}: {_formal(e)}" for e in fam.get("norms", [])
                  if e["name"].startswith(f"batch {ref}:"))
        + f". Verdict (BN above every other norm): **{v['bn_large_batch']['verdict']}**.\n",
        ("## §18, \"BatchNorm's regularization effect decreases with larger batch sizes\" "
        "(BN-11)\n"),
        (f"{_formal(f('regularization', 'slope of the gap on log2(BN'))} per doubling of the BN "
        "batch (the gap is train minus test accuracy, eval mode, at a fixed gradient batch and "
        f"the same steps): **{v['BN-11']['verdict']}** (pass: the gap grows with the group size). "
        f"{_formal(f('regularization', 'gap: BN batch'))} between the largest and the smallest "
        "BN batch. On the grid, where steps change too: BN's gap slope "
        f"{_formal(f('regularization', 'slope of BN'))}; minus LN's "
        f"{_formal(f('regularization', 'slope of the gap on log2(batch), grid: BN - LN'))}.\n"),
        "## Interview focus, \"GN: across feature groups (small batch CV)\"\n",
        "At the smallest batch: " + "; ".join(
            f"{e['name'].split(': ', 1)[1]}: {_formal(e)}" for e in fam.get("norms", [])
            if e["name"].startswith(f"batch {small}:"))
        + f". Verdict on GN (G=4) above BN there: **{v['gn_small_batch']['verdict']}**.\n",
        ("## 12.5.1, \"Inference: Requires running statistics, which may not match test "
        "distribution\"\n"),
        (f"{_formal(f('mismatch', 'normalization error: BN batch'))} (rms error of the eval-mode "
        f"normalization, batch {small} minus batch {ref}); "
        f"{_formal(f('mismatch', 'normalization error: ghost'))} (ghost BN at the smallest size "
        f"minus plain BN, same steps): **{v['running_stats']['verdict']}**.\n"),
        "## Exploratory: where the mismatch comes from (no verdict rests on these)\n",
        "\n".join(f"- {e['name']}: {_formal(e)}" for e in fam.get("exploratory", [])) + "\n",
        "Read with the BatchNorm table of results.md: eval mode uses running averages with "
        f"momentum {cfg.model.bn_momentum:g} (about {1 / max(1e-9, 1 - cfg.model.bn_momentum):.0f}"
        " updates of memory), so after few optimizer steps they trail weights that are still "
        "moving; accumulation updates them once per micro-batch. A normalization error that "
        "grows with the gradient batch at a fixed BN batch points to that lag, not to the "
        "noise of small-batch statistics.\n",
        "## Separating the three batches\n",
        "\n".join(f"- {e['name']}: {_formal(e)}" for e in fam.get("separation", [])) + "\n",
        ("What would settle an inconclusive verdict: more seeds (each table gives the smallest "
        "difference its seeds detect at 80 % power) or more epochs, so that the large batches "
        "are trained as far as the small ones.\n"),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def figures(cells: Mapping[str, Any], study, workdir) -> list[str]:
    """Writes FIGURES into `workdir` (those with data); returns their names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    batches = sorted(study.batches)

    def series(names, metric, x_key):
        xs, ys, lo, hi = [], [], [], []
        for n in names:
            if n in cells and math.isfinite(cells[n]["summary"][metric]["mean"]):
                s = cells[n]["summary"][metric]
                _, _, scale, _ = METRICS[metric]
                xs.append(cells[n][x_key])
                ys.append(scale * s["mean"])
                lo.append(scale * (s["mean"] - s["low"]) if math.isfinite(s["low"]) else 0.0)
                hi.append(scale * (s["high"] - s["mean"]) if math.isfinite(s["high"]) else 0.0)
        return xs, ys, [lo, hi]

    def save(fig, ax, name, xlabel, ylabel, title):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(workdir / name, dpi=120)
        plt.close(fig)
        written.append(name)

    for metric, name, ylabel in (("test_accuracy", "accuracy_vs_batch.png", "test accuracy %"),
                                 ("gap", "gap_vs_batch.png", "train - test accuracy, pp")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for n in grid.NORMS:
            xs, ys, err = series([f"{n}/b{b}" for b in batches], metric, "batch")
            if xs:
                ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3,
                            label=NORM_LABELS[n])
        save(fig, ax, name, "batch (BN = gradient = device batch)", ylabel,
             f"{ylabel} against batch size (mean, 95 % CI over seeds)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    g_ref, fixed = study.ghost_grad_batch, study.fixed_bn_batch
    curves = {
        "BN, both batches (grid)": ([f"batch/b{b}" for b in batches], "batch"),
        f"BN batch varied, gradient batch {g_ref} (ghost)":
            ([grid.cell_name("batch", g_ref, ghost=g) for g in sorted({*study.ghost_sizes, g_ref})],
             "bn_batch"),
        f"gradient batch varied, BN batch {fixed} (ghost)":
            ([grid.cell_name("batch", b, ghost=fixed) for b in batches if b >= fixed], "batch"),
        "LN, gradient batch (grid)": ([f"layer/b{b}" for b in batches], "batch"),
    }
    for label, (names, key) in curves.items():
        xs, ys, err = series(names, "test_accuracy", key)
        if xs:
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, label=label)
    save(fig, ax, "separation.png", "the varied batch", "test accuracy %",
         "BN batch against gradient batch (mean, 95 % CI over seeds)")

    # The mismatch: (a) against the BN batch at the ghost part's gradient batch; (b, c) against
    # the gradient batch, with the BN batch equal to it or fixed (ghost, accumulation).
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    at_ref = [grid.cell_name("batch", g_ref, ghost=g) for g in sorted({*study.ghost_sizes, g_ref})]
    fixed_bn = [grid.cell_name("batch", b, ghost=fixed) for b in batches if b >= fixed]
    accum = [grid.cell_name("batch", b, accum=b // fixed) for b in study.accum_batches]
    panels = (
        (axes[0], "mode_gap", "bn_batch", {f"gradient batch {g_ref}": at_ref},
         "BN batch", "eval - train-mode test accuracy, pp"),
        (axes[1], "mode_gap", "batch", {"BN batch = gradient batch": [f"batch/b{b}" for b in batches],
                                        f"BN batch {fixed} (ghost)": fixed_bn,
                                        f"BN batch {fixed} (accumulation)": accum},
         "gradient batch", "eval - train-mode test accuracy, pp"),
        (axes[2], "mean_rms", "batch", {"BN batch = gradient batch": [f"batch/b{b}" for b in batches],
                                        f"BN batch {fixed} (ghost)": fixed_bn,
                                        f"BN batch {fixed} (accumulation)": accum},
         "gradient batch", "normalization error of the running statistics (rms)"),
    )
    for ax, metric, key, groups, xlabel, ylabel in panels:
        for label, names in groups.items():
            xs, ys, err = series(names, metric, key)
            if xs:
                ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, label=label)
        if metric == "mode_gap":
            ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("BatchNorm's train-vs-eval mismatch (mean, 95 % CI over seeds)",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(workdir / "mismatch.png", dpi=120)
    plt.close(fig)
    written.append("mismatch.png")
    return written
