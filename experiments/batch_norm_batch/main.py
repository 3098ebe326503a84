"""Batch size and normalization: python -m experiments.batch_norm_batch --config=... --workdir=...

For every cell of `grid.build_cells` (norm x gradient batch, plus BatchNorm's ghost-batch and
gradient-accumulation cells, which vary the BN batch, the gradient batch and the device batch
independently) and every seed s in `seed` .. `seed + seeds - 1`, trains the CNN of the config
with `loop.fit` (or the cell's seeds as one vmapped `loop.fit_seeds`, `seed_mode`) in
<workdir>/runs/<norm>/<cell>/seed_<s>, for the same number of epochs at every batch (the same
examples seen), with the learning rate scaled from `optim.learning_rate` at `lr_reference_batch`
by `lr_rule` (`grid.scaled_lr`). Every run trains its whole budget (early stopping off) and its
last state is measured by the `Measure` hook (`analysis.bn_mismatch`), written to
<run>/bn_measures.json:

  * test and training-set accuracy / loss in eval mode (running statistics) and in train mode
    at the cell's BN batch (statistics of consecutive groups of that many rows; the running
    statistics untouched): the train-vs-eval mismatch;
  * the train/test gap: training-set accuracy minus test accuracy, both in eval mode;
  * per BatchNorm layer, the error eval mode makes by normalizing with the running statistics
    instead of the statistics of the layer's input over `measure_rows` training images
    (`bn_mismatch.running_stat_mismatch`, the network in eval mode).

A run whose summary.json and bn_measures.json exist with the same config is read back, not
retrained (a rerun regenerates the report). Seed s gives every cell the init key PRNGKey(s) and,
at the same gradient batch, the same batch order, so the cells of one seed are paired and every
comparison is a per-seed difference (`report.FAMILIES`; `analysis.inference.compare_family`
per family, Holm within it).

Writes into the workdir: results.json (per cell and seed every measure; per family the
comparisons with their per-seed values and `compare_family` entries; the verdicts), results.md
(tables with 95 % CIs), analysis.md (each chapter claim against the measurement and its
verdict) and the figures `report.FIGURES`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, ClassVar

import numpy as np

from experiments import cli
from experiments.ablation.main import finished_run
from experiments.batch_norm_batch import grid, report
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, multiseed
from ml_practical.analysis import bn_mismatch
from ml_practical.config import ConfigError, Section, field

MEASURES_FILE = "bn_measures.json"


@dataclasses.dataclass(frozen=True)
class BatchNormBatchStudy(Section):
    """The study's own fields (`grid` defines the cells they select).

    Attributes:
      seeds: seeds `seed` .. `seed + seeds - 1`, paired across cells.
      parts: comma-separated `grid.PARTS` ("grid,ghost,accum").
      norms: comma-separated `grid.NORMS` keys of the grid part ("" = all).
      batches: the grid's gradient batches (also the ghost part's gradient batches at a fixed BN
        batch, those >= fixed_bn_batch).
      lr_rule: `grid.LR_RULES`: how the learning rate follows the gradient batch.
      lr_reference_batch: the gradient batch at which the lr is `optim.learning_rate`.
      ghost_grad_batch: the ghost part's fixed gradient batch.
      ghost_sizes: the ghost part's BN batches at `ghost_grad_batch`.
      fixed_bn_batch: the BN batch held fixed while the gradient batch varies (ghost and accum).
      accum_batches: gradient batches run as micro-batches of `fixed_bn_batch` rows.
      measure_rows: training images over which each BN layer's input statistics are taken.
      seed_mode: `multiseed.SEED_MODES`: "auto" is vmap on GPU/TPU, sequential on CPU.
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    parts: str
    norms: str
    batches: tuple[int, ...] = field(ge=1)
    lr_rule: str = field(choices=grid.LR_RULES)
    lr_reference_batch: int = field(ge=1)
    ghost_grad_batch: int = field(ge=1)
    ghost_sizes: tuple[int, ...] = field(ge=1)
    fixed_bn_batch: int = field(ge=1)
    accum_batches: tuple[int, ...] = field(ge=1)
    measure_rows: int = field(ge=1)
    seed_mode: str = field(choices=multiseed.SEED_MODES)

    def check(self):
        bad = [p for p in self.part_list() if p not in grid.PARTS]
        if bad or not self.part_list():
            raise ConfigError(f"parts: {bad or self.parts!r}; expected a comma-separated subset "
                              f"of {list(grid.PARTS)}")
        bad = [n for n in self.norm_list() if n not in grid.NORMS]
        if bad:
            raise ConfigError(f"norms: unknown {bad}; expected a comma-separated subset of "
                              f"{list(grid.NORMS)}")
        try:
            self.cells()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def part_list(self) -> list[str]:
        return [p.strip() for p in self.parts.split(",") if p.strip()]

    def norm_list(self) -> list[str]:
        return [n.strip() for n in self.norms.split(",") if n.strip()] or list(grid.NORMS)

    def cells(self) -> dict[str, grid.Cell]:
        return grid.build_cells(parts=self.part_list(), norms=self.norm_list(),
                                batches=self.batches, ghost_grad_batch=self.ghost_grad_batch,
                                ghost_sizes=self.ghost_sizes, fixed_bn_batch=self.fixed_bn_batch,
                                accum_batches=self.accum_batches)


def seed_list(cfg: config_lib.Config) -> list[int]:
    return list(range(cfg.seed, cfg.seed + cfg.study.seeds))


def cell_config(cfg: config_lib.Config, cell: grid.Cell, seed: int) -> config_lib.Config:
    """The training config of one cell and seed."""
    s = cfg.study
    overrides = cell.overrides(cfg.optim.learning_rate, s.lr_reference_batch, s.lr_rule)
    overrides["seed"] = int(seed)
    eval_batch = cfg.train.eval_batch_size
    if cell.ghost and eval_batch % cell.ghost:
        # layers.BatchNorm checks that the ghost size divides the batch in eval mode too, where
        # no ghost batch is used; an evaluation batch that is a multiple of it passes (the
        # evaluation itself does not depend on how the split is batched).
        overrides["train.eval_batch_size"] = max(cell.ghost, eval_batch // cell.ghost * cell.ghost)
    return config_lib.override(cfg, overrides, what=f"cell {cell.name!r}")


def run_dir(workdir: pathlib.Path, cell: grid.Cell, seed: int) -> pathlib.Path:
    return loop.seed_dir(workdir / "runs" / cell.run_path, seed)


def measure(model, params, batch_stats, dataset: data_lib.Dataset, *, bn_batch: int,
            measure_rows: int, eps: float) -> dict[str, Any]:
    """The `bn_mismatch` measures of one trained state (see the module docstring)."""
    variables = {"params": params, "batch_stats": batch_stats}
    test = bn_mismatch.evaluate_modes(model, variables, dataset.test_x, dataset.test_y,
                                      bn_batch=bn_batch)
    train = bn_mismatch.evaluate_modes(model, variables, dataset.train_x, dataset.train_y,
                                       bn_batch=bn_batch)
    layers = bn_mismatch.running_stat_mismatch(model, variables,
                                               dataset.train_x[:measure_rows], eps=eps)
    return {"test_modes": test, "train_modes": train, "running_stats": layers,
            "mean_rms": (float(np.mean([v["mean_rms"] for v in layers.values()]))
                         if layers else None)}


class Measure(loop.Hook):
    """At the end of a run, `measure` of each run's tested state into <run>/bn_measures.json."""

    def __init__(self, cell: grid.Cell, *, measure_rows: int, eps: float, stacked: bool):
        self.cell, self.measure_rows, self.eps, self.stacked = cell, measure_rows, eps, stacked

    def on_end(self, exp, state, runs):
        for i, run in enumerate(runs):
            one = multiseed.take(state, i) if self.stacked else state
            out = measure(exp.model, one.params, one.batch_stats, exp.dataset,
                          bn_batch=self.cell.bn_batch, measure_rows=self.measure_rows,
                          eps=self.eps)
            if run.files is not None:
                run.files.write_json(MEASURES_FILE, out)


def _finished(path: pathlib.Path, run_cfg) -> tuple[dict, list, dict] | None:
    done = finished_run(path, run_cfg)
    if done is None or not (path / MEASURES_FILE).exists():
        return None
    return (*done, json.loads((path / MEASURES_FILE).read_text()))


def _record(seed: int, summary: dict, history: list, measures: dict) -> dict[str, Any]:
    test_acc = summary["test/accuracy"]
    train_acc = measures["train_modes"]["eval"]["accuracy"]
    return {"seed": seed, "test_accuracy": test_acc, "test_loss": summary["test/loss"],
            "train_accuracy": train_acc, "gap": train_acc - test_acc,
            "final_train_loss": history[-1]["train/loss"] if history else None,
            "skipped_steps": int(sum(r.get("train/skipped_steps", 0) for r in history)),
            "wall_time_s": summary["wall_time_s"], **measures}


def train_cell(cfg: config_lib.Config, cell: grid.Cell, seeds: list[int], workdir: pathlib.Path,
               dataset: data_lib.Dataset, seed_mode: str) -> tuple[list[dict], str]:
    """Every seed of one cell, trained or read back: ([per-seed record in `seeds` order], how)."""
    cfgs = {s: cell_config(cfg, cell, s) for s in seeds}
    done = {s: _finished(run_dir(workdir, cell, s), cfgs[s]) for s in seeds}
    todo = [s for s in seeds if done[s] is None]
    how = "done earlier"
    measure_hook = lambda stacked: Measure(cell, measure_rows=cfg.study.measure_rows,
                                           eps=cfg.model.norm_epsilon, stacked=stacked)
    if todo and seed_mode == "vmap" and not any(
            (run_dir(workdir, cell, s) / "checkpoints").exists() for s in todo):
        loop.fit_seeds(cfgs[todo[0]], todo, run_dir(workdir, cell, todo[0]).parent,
                       dataset=dataset, hooks=[measure_hook(True)])
        how = f"trained, {len(todo)} seeds vmapped"
    else:
        for s in todo:
            loop.fit(cfgs[s], run_dir(workdir, cell, s), dataset=dataset,
                     hooks=[measure_hook(False)])
            if loop.interrupted_by() is not None:
                break
        how = "trained" if todo else how
    records = []
    for s in seeds:
        got = _finished(run_dir(workdir, cell, s), cfgs[s])
        if got is None:  # interrupted (the summary says so): stop, the rerun resumes
            return records, "interrupted"
        records.append(_record(s, *got))
    return records, how


def main(argv):
    run = cli.start(argv, "experiments.batch_norm_batch", study=BatchNormBatchStudy)
    cfg, workdir = run.cfg, run.workdir
    seeds, cells = seed_list(cfg), cfg.study.cells()
    for cell in cells.values():  # every cell's config is checked before anything trains
        cell_config(cfg, cell, seeds[-1])
    seed_mode = multiseed.resolve_seed_mode(cfg.study.seed_mode)
    t0 = time.time()
    dataset = data_lib.load_dataset(cfg.data)
    results: dict[str, dict[str, Any]] = {}
    for i, cell in enumerate(cells.values(), 1):
        t_cell = time.time()
        runs, how = train_cell(cfg, cell, seeds, workdir, dataset, seed_mode)
        if how == "interrupted":
            print("Interrupted: rerun the same command to resume.", flush=True)
            break
        results[cell.name] = report.cell_record(cell, cell_config(cfg, cell, seeds[0]), runs)
        acc = results[cell.name]["summary"]["test_accuracy"]
        print(f"[{i}/{len(cells)}] {cell.name}: test accuracy {100 * acc['mean']:.2f} % "
              f"[{100 * acc['low']:.2f}, {100 * acc['high']:.2f}] ({how}, "
              f"{time.time() - t_cell:.0f} s)", flush=True)
    wall = time.time() - t0
    families = report.comparison_families(results, cfg.study)
    verdicts = report.verdicts(families, *report.small_and_reference(cfg.study))
    figures = report.figures(results, cfg.study, workdir)
    out = {"dataset": dataset.info(), "seeds": seeds, "seed_mode": seed_mode,
           "lr_rule": cfg.study.lr_rule, "base_lr": cfg.optim.learning_rate,
           "lr_reference_batch": cfg.study.lr_reference_batch,
           "complete": len(results) == len(cells), "cells": results, "families": families,
           "verdicts": verdicts}
    md = report.results_md(run.command, cfg, out, wall, figures)
    (workdir / "analysis.md").write_text(report.analysis_md(run.command, cfg, out, wall))
    cli.finish(run, wall, out, md, figures)
