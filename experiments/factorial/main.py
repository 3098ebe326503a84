"""Order-free attribution of the chapter's six techniques: a two-level fractional factorial design.

  python -m experiments.factorial --config=experiments/configs/factorial.py --workdir=...

The chapter's cumulative ablation (experiments/ablation, rows 1..8, each adding one technique to
its parent) credits a technique with "row k minus row k-1", a number that depends on which
techniques were already on: with an interaction, another order gives another credit. This study
measures every technique in many contexts at once and splits the total without an order.

Design (the decisions, fixed here and in `factors.py`):
- Factors: the six techniques of the ablation's rows, two levels each, coded 0 (off) / 1 (on):
  init (N(0, 0.01^2) hidden and output vs He hidden with Xavier output), bn (none vs BatchNorm
  before the ReLU), dropout (0 vs 0.2), l2 (coupled, 0 vs 1e-4), smoothing (0 vs 0.1), augment
  (none vs "shift_rotate"). The all-off cell is the ablation's row 1 (small_init), the all-on cell
  its row 8 (augment); the other factors of the base config are the ablation's (Adam, lr, batch).
- `design` "half": the 2^(6-1) half fraction with defining relation I = ABCDEF, 32 cells (those
  with an even number of techniques on). Resolution VI: every main effect is aliased only with a
  five-way interaction and every two-way interaction only with a four-way one, which the
  estimates assume to be zero. "full": all 64 cells. `factors` varies a subset (the others stay
  off); a half fraction over fewer than five factors aliases two-way interactions with each
  other or with main effects and is refused.
- Each cell x seed is one run (`ablation.main.train_rows` on the cells as a table of parentless
  rows: finished runs are reused, interrupted ones resumed). Seeds are paired across cells: seed s
  is the same init key, dropout / augmentation keys and batch order in every cell.
- Estimates: per seed, ordinary least squares of test accuracy on the +-1-coded model with an
  intercept, the main effects and the two-way interactions (1 + 6 + 15 columns, orthogonal in
  this design; `analysis.factorial`). An effect is 2 b: main effect = mean(on) - mean(off) over
  the cells; an interaction is half the change of one factor's effect when the other is switched
  on. Each seed gives one estimate of each effect; the table reports their mean with the paired t
  and exact bootstrap intervals over seeds and Holm's adjustment over the table of 21 effects
  (`analysis.inference.compare_family`).
- Shapley values of v(S) = test accuracy with exactly the techniques in S on, under the fitted
  model (0/1 coding v(S) = c0 + sum_{i in S} a_i + sum_{i<j in S} c_ij): phi_i = a_i + 1/2 sum_j
  c_ij, per seed, CI over seeds, Holm over the six. The phi_i sum to v(all) - v(none). Exact only
  if three-way and higher interactions vanish; under this model phi_i equals the main effect (the
  Shapley and the balanced-average value coincide without three-way terms). The design's ten
  remaining columns (three-way alias pairs, ABC = DEF) are reported as the check of that
  assumption: a real three-way effect e would move each of its three factors' phi by e / 3.
- The chapter's order: what the ablation's order would credit each technique, from the fitted
  model (v(first r on) - v(first r-1 on)), against phi; and measured directly from the cells of
  the ablation's rows that lie in the fraction (rows 1, 4, 6, 8 of the half fraction: each step
  adds two techniques). Rows 3, 5 and 7 lie outside it, and row 2 (Xavier) is no cell, so their
  steps cannot be read off. With `ablation_results` (an ablation results.json) its measured
  contributions are shown next to phi (another budget: compared, not paired).

Writes into the workdir: runs/<cell>/seed_<s>/ (one `loop.fit` each), results.json, results.md
(`report.format_results`), analysis.md and factorial.png (main effects, Shapley values and the
chapter-order credits with 95 % intervals; the interaction plots of bn x dropout, bn x l2 and
smoothing x augment).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import time
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from experiments import cli
from experiments.ablation import main as ablation
from experiments.factorial import factors as factors_lib
from experiments.factorial import report
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import multiseed, run_files
from ml_practical.analysis import factorial as ff
from ml_practical.analysis import inference
from ml_practical.analysis import seeds as seed_stats
from ml_practical.config import Section, field

DESIGNS = ("half", "full")
# The interactions the chapter discusses: BatchNorm's noise as a regularizer that "reduces the
# need for aggressive dropout"; L2 on kernels that BatchNorm makes scale-invariant; two
# regularizers of the targets / inputs.
CHAPTER_INTERACTIONS = (("bn", "dropout"), ("bn", "l2"), ("smoothing", "augment"))


@dataclasses.dataclass(frozen=True)
class FactorialStudy(Section):
    """The study's own top-level config fields; every other field is the base training config.

    Attributes:
      seeds: every cell runs with seeds 0 .. seeds - 1.
      design: "half" (the 2^(k-1) fraction with I = product of all k factors) or "full" (2^k).
      factors: comma-separated factor names to vary (`factors.NAMES`); "" = all six. The others
        are held at their off level.
      seed_mode: as in the ablation ("auto": vmap on GPU/TPU, sequential on CPU).
      ablation_results: an ablation study's results.json whose contributions are shown next to
        the Shapley values; "" = none.
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    design: str = field(choices=DESIGNS)
    factors: str
    seed_mode: str = field(choices=multiseed.SEED_MODES)
    ablation_results: str

    def check(self):
        try:
            names = factors_lib.select_factors(self.factors)
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None
        k = len(names)
        try:
            ff.check_estimable(ff.model_terms(k, 2), design_words(self.design, k), k, names)
        except ValueError as e:
            raise config_lib.ConfigError(f"design: {self.design!r} over {k} factors: {e}") from None
        if self.ablation_results and not pathlib.Path(self.ablation_results).is_file():
            raise config_lib.ConfigError(
                f"ablation_results: {self.ablation_results!r} is not a file; expected the "
                "results.json of an ablation study (python -m experiments.ablation) or ''")


def design_words(design: str, k: int) -> list[list[int]]:
    """The generator words of `design` over k factors: [[0..k-1]] for "half", none for "full"."""
    return [list(range(k))] if design == "half" else []


def study_design(study: FactorialStudy) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """(active factor names, (n_cells, k) levels, generator words) of the study's design."""
    names = factors_lib.select_factors(study.factors)
    words = design_words(study.design, len(names))
    return names, ff.fractional_factorial(len(names), words), words


def run_study(cfg: config_lib.Config, workdir, dataset: data_lib.Dataset | None = None, *,
              log: Callable[[str], None] | None = None,
              command: str | None = None) -> dict[str, Any]:
    """Trains (or reuses) every cell x seed and returns the results dict (nothing else written).

    Args:
      cfg: the parsed study config (`config.parse(raw, study=FactorialStudy)`).
      workdir: the study directory; runs go to <workdir>/runs/<cell>/seed_<s>.
      dataset: a Dataset to use instead of loading `cfg.data` (tests; your own arrays).
      log: called with one line per run.
      command: the command line, recorded.
    """
    say = log or (lambda _: None)
    t0 = time.time()
    names, levels, words = study_design(cfg.study)
    table = factors_lib.cell_table(levels, names)
    cells = list(table)
    ablation.check_shared_data(cfg, cells, table)
    if dataset is None:
        dataset = data_lib.load_dataset(cfg.data)
    seed_mode = multiseed.resolve_seed_mode(cfg.study.seed_mode)
    seeds = list(range(cfg.study.seeds))
    say(f"{cfg.study.design} design over {len(names)} factors: {len(cells)} cells x "
        f"{len(seeds)} seeds = {len(cells) * len(seeds)} runs ({seed_mode})")
    runs, interrupted = ablation.train_rows(cfg, workdir, cells, seeds, dataset,
                                            seed_mode=seed_mode, table=table, log=say)
    from ml_practical import models
    model = models.describe(cfg.model, dataset.train_x.shape[1:])
    return collect(cfg, runs, table=table, names=names, levels=levels, words=words,
                   dataset_info=dataset.info(), model=model, wall_time_s=time.time() - t0,
                   command=command, complete=not interrupted, seed_mode=seed_mode)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, std = seed_stats.summarize_seeds(values)
    return {"mean": mean, "std": std, "values": [float(v) for v in values]}


def _family(per_seed: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return inference.compare_family({k: [float(x) for x in v] for k, v in per_seed.items()})


def collect(cfg: config_lib.Config, runs: Mapping[str, list[dict[str, Any]]], *,
            table: Mapping[str, Any], names: Sequence[str], levels: np.ndarray,
            words: Sequence[Sequence[int]], dataset_info: Mapping[str, Any], model: str,
            wall_time_s: float, command: str | None = None, complete: bool = True,
            seed_mode: str | None = None) -> dict[str, Any]:
    """The results dict from the per-run records (`ablation.train_rows`' format).

    The analysis uses the seeds that finished in every cell (the design is replicated per seed).

    Returns:
      {"study", "factors", "cells", "effects", "shapley", "higher_order", "chapter_order",
       "interactions", "ablation", "versions"}; accuracies and effects as fractions.
    """
    k = len(names)
    cells = list(table)
    by_seed = {c: {r["seed"]: r for r in runs.get(c, [])} for c in cells}
    seeds = list(range(cfg.study.seeds))
    used = [s for s in seeds if all(s in by_seed[c] for c in cells)]
    cell_out = {}
    for c, lv in zip(cells, levels):
        recs = sorted(by_seed[c].values(), key=lambda r: r["seed"])
        level = {n: 0 for n in factors_lib.NAMES} | dict(zip(names, map(int, lv)))
        cell_out[c] = {"index": table[c].row_id, "label": table[c].label,
                       "levels": level, "ablation_row": factors_lib.ablation_row(level),
                       "overrides": dict(table[c].overrides),
                       "test_accuracy": _stats([r["test_accuracy"] for r in recs]) if recs else None,
                       "runs": recs}
    out: dict[str, Any] = {
        "study": {"dataset": dict(dataset_info), "model": model, "seeds": seeds,
                  "seeds_analysed": used, "design": cfg.study.design, "factors": list(names),
                  "generators": [[names[i] for i in w] for w in words],
                  "resolution": ff.resolution(words, k), "cells": len(cells),
                  "runs": sum(len(v) for v in runs.values()), "complete": complete,
                  "wall_time_s": wall_time_s, "command": command, "seed_mode": seed_mode,
                  "train_time_s": sum(r["wall_time_s"] for v in runs.values() for r in v)},
        "factors": [{"name": f.name, "label": f.label, "ablation_row": f.row,
                     "off": dict(f.off), "on": dict(f.on)} for f in factors_lib.FACTORS],
        "cells": cell_out,
        "versions": _versions(),
    }
    if used:
        y = np.array([[by_seed[c][s]["test_accuracy"] for s in used] for c in cells])
        out.update(analyse(y, np.asarray(levels), names, words))
    else:
        out.update({"effects": [], "shapley": [], "higher_order": [], "chapter_order": None,
                    "interactions": []})
    out["ablation"] = (compare_ablation(cfg.study.ablation_results, out, names)
                       if cfg.study.ablation_results and used else None)
    return run_files.to_jsonable(out)


def analyse(y: np.ndarray, levels: np.ndarray, names: Sequence[str],
            words: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Effects, Shapley values, the three-way check, the chapter's order and the 2x2 means.

    Args:
      y: (n_cells, n_seeds) test accuracies, cells in `levels` order, seeds paired.
      levels: (n_cells, k) 0 / 1 levels of the active factors `names`.
      words: the design's generator words.
    """
    k = len(names)
    terms = ff.model_terms(k, 2)
    coef = ff.fit(levels, y, terms)                       # (n_terms, n_seeds)
    label = [ff.term_name(t, names) for t in terms]

    def alias_names(t):
        return [ff.term_name(a, names) for a in ff.aliases(t, words, k)]

    eff = _family({label[i]: 2 * coef[i] for i in range(1, len(terms))})
    effects = [{"term": [names[j] for j in t], "name": label[i], "order": len(t),
                "aliases": alias_names(t), "per_seed": (2 * coef[i]).tolist(),
                "inference": eff[label[i]]} for i, t in enumerate(terms) if t]

    _, a, c = ff.zero_one_coefficients(coef, terms, k)
    phi = ff.shapley_two_way(a, c)                        # (k, n_seeds)
    phi_inf = _family({n: phi[i] for i, n in enumerate(names)})
    full_on, full_off = np.ones((1, k), np.int8), np.zeros((1, k), np.int8)
    model_total = (ff.predict(coef, terms, full_on) - ff.predict(coef, terms, full_off))[0]
    shapley = [{"factor": n, "per_seed": phi[i].tolist(), "inference": phi_inf[n]}
               for i, n in enumerate(names)]

    rest = ff.residual_terms(terms, words, k)
    higher = []
    if rest:
        coef_sat = ff.fit(levels, y, terms + rest)
        hi_inf = _family({ff.term_name(t, names): 2 * coef_sat[len(terms) + j]
                          for j, t in enumerate(rest)})
        higher = [{"term": [names[j] for j in t], "name": ff.term_name(t, names),
                   "aliases": alias_names(t), "per_seed": (2 * coef_sat[len(terms) + j]).tolist(),
                   "inference": hi_inf[ff.term_name(t, names)]} for j, t in enumerate(rest)]

    return {"effects": effects,
            "shapley": shapley,
            "shapley_total": {"sum_phi": phi.sum(axis=0).tolist(),
                              "model_all_minus_none": model_total.tolist(),
                              "measured_all_minus_none": _measured_total(y, levels)},
            "higher_order": higher,
            "chapter_order": chapter_order(y, levels, names, coef, terms, phi),
            "interactions": interaction_means(y, levels, names, eff)}


def _measured_total(y, levels) -> list[float] | None:
    lv = np.asarray(levels)
    on, off = np.flatnonzero(lv.all(axis=1)), np.flatnonzero((lv == 0).all(axis=1))
    if not (len(on) and len(off)):
        return None
    return (y[on[0]] - y[off[0]]).tolist()


def chapter_order(y, levels, names, coef, terms, phi) -> dict[str, Any]:
    """The ablation's order (FACTORS order) over the active factors: model credits and measured steps.

    The chain's cell r has the first r active factors on. From the fitted model, the credit of
    factor r is v(chain r) - v(chain r-1) per seed, compared (paired) with its Shapley value. The
    chain cells that lie in the design give measured steps (one or more factors each), compared
    with the sum of those factors' Shapley values.
    """
    k = len(names)
    lv = np.asarray(levels)

    def v(cell):
        return ff.predict(coef, terms, np.asarray(cell)[None, :])[0]

    credits = ff.ordered_credits(v, list(range(k)), k)    # (k, n_seeds)
    credit_inf = _family({n: credits[i] for i, n in enumerate(names)})
    gap_inf = _family({n: credits[i] - phi[i] for i, n in enumerate(names)})
    model_rows = [{"factor": n, "per_seed": credits[i].tolist(), "inference": credit_inf[n],
                   "minus_shapley": {"per_seed": (credits[i] - phi[i]).tolist(),
                                     "inference": gap_inf[n]}} for i, n in enumerate(names)]
    chain = []
    for r in range(k + 1):
        cell = np.array([1] * r + [0] * (k - r), np.int8)
        hit = np.flatnonzero((lv == cell).all(axis=1))
        level = {n: 0 for n in factors_lib.NAMES} | dict(zip(names, cell.tolist()))
        chain.append({"on": list(names[:r]), "cell": factors_lib.cell_name(names[:r]),
                      "in_design": bool(len(hit)), "ablation_row": factors_lib.ablation_row(level),
                      "index": int(hit[0]) if len(hit) else None})
    present = [r for r, ch in enumerate(chain) if ch["in_design"]]
    steps, step_d, gap_d = [], {}, {}
    for r1, r2 in zip(present, present[1:]):
        d = y[chain[r2]["index"]] - y[chain[r1]["index"]]
        added = list(names[r1:r2])
        key = " + ".join(added)
        step_d[key] = d
        gap_d[key] = d - phi[r1:r2].sum(axis=0)
        steps.append({"from": chain[r1]["cell"], "to": chain[r2]["cell"], "added": added,
                      "from_row": chain[r1]["ablation_row"], "to_row": chain[r2]["ablation_row"],
                      "per_seed": d.tolist(), "shapley_sum": phi[r1:r2].sum(axis=0).tolist()})
    step_inf, gap_inf2 = _family(step_d), _family(gap_d)
    for s in steps:
        key = " + ".join(s["added"])
        s["inference"] = step_inf[key]
        s["minus_shapley"] = {"per_seed": gap_d[key].tolist(), "inference": gap_inf2[key]}
    for ch in chain:
        ch.pop("index")
    return {"order": list(names), "model_credits": model_rows, "chain": chain,
            "measured_steps": steps}


def interaction_means(y, levels, names, eff) -> list[dict[str, Any]]:
    """For each chapter interaction among the active factors: the 2x2 cell-group means per seed."""
    lv = np.asarray(levels)
    out = []
    for a, b in CHAPTER_INTERACTIONS:
        if a not in names or b not in names:
            continue
        i, j = names.index(a), names.index(b)
        means = [[y[(lv[:, i] == p) & (lv[:, j] == q)].mean(axis=0).tolist() for q in (0, 1)]
                 for p in (0, 1)]
        out.append({"factors": [a, b], "name": f"{a} × {b}", "means": means,
                    "inference": eff[f"{a} × {b}"]})
    return out


def compare_ablation(path: str, results: Mapping[str, Any], names: Sequence[str]
                     ) -> dict[str, Any]:
    """The ablation's measured contribution of each active factor (its row minus the row before it
    in the chain small_init -> he -> he_bn -> ... -> augment; Xavier skipped) next to phi."""
    ab = json.loads(pathlib.Path(path).read_text())
    exps = ab.get("experiments", {})
    chain = [factors_lib.FIRST_ROW] + [f.row for f in factors_lib.FACTORS]
    phi = {s["factor"]: s for s in results["shapley"]}
    rows = []
    for r, f in enumerate(factors_lib.FACTORS, start=1):
        if f.name not in names:
            continue
        child, parent = chain[r], chain[r - 1]
        entry = {"factor": f.name, "row": child, "parent": parent, "comparison": None,
                 "shapley": phi[f.name]["inference"]}
        if child in exps and parent in exps:
            a = {x["seed"]: x["test_accuracy"] for x in exps[child]["runs"]}
            b = {x["seed"]: x["test_accuracy"] for x in exps[parent]["runs"]}
            common = sorted(set(a) & set(b))
            if common:
                entry["comparison"] = inference.compare([a[s] - b[s] for s in common])
                entry["seeds"] = common
        rows.append(entry)
    study = ab.get("study", {})
    cfg = ab.get("config", {})
    return {"path": str(path), "dataset": study.get("dataset", {}),
            "model": study.get("model", {}).get("description"),
            "num_epochs": cfg.get("train", {}).get("num_epochs"),
            "early_stopping": cfg.get("early_stopping", {}).get("monitor"), "rows": rows}


def _versions() -> dict[str, str]:
    from ml_practical import checkpointing
    return {**checkpointing.library_versions(), "python": platform.python_version()}


def execute(run: cli.Start, dataset: data_lib.Dataset | None = None, *,
            log: Callable[[str], None] | None = None, quiet: bool = False) -> dict[str, Any]:
    """The study from a parsed `cli.Start`: runs, results.json / results.md (`cli.finish`),
    analysis.md and the figure."""
    t0 = time.time()
    results = run_study(run.cfg, run.workdir, dataset, log=log, command=run.command)
    figures = report.write_figures(results, run.workdir)
    run_files.atomic_write_text(run.workdir / "analysis.md", report.format_analysis(results))
    results["study"]["wall_time_s"] = time.time() - t0
    cli.finish(run, time.time() - t0, results, report.format_results(results), figures,
               quiet=quiet)
    return results


def main(argv):
    run = cli.start(argv, "experiments.factorial", study=FactorialStudy)
    execute(run, log=lambda s: print(s, flush=True))
