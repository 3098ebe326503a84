"""BatchNorm and initialization: python -m experiments.bn_init --config=... --workdir=...

For every cell of `grid` (optimizer x norm x init) and every seed s in `seed` .. `seed + seeds -
1`, trains the CNN of the config in <workdir>/runs/<optimizer>/<norm>/<init>/seed_<s> and keeps
its per-step training loss and accuracy (`loop.StepLog`, <run>/steps/). The seeds of a cell train
as one vmapped program (`loop.fit_seeds`, `seed_mode` "vmap") or one after the other (`loop.fit`,
"sequential"); either way seed s gets the init key PRNGKey(s) and the batch order of seed s, so
the cells of one seed are paired. The "lsuv" cells start from the config's init and, before the
first step, `LSUVInit` re-draws every conv kernel orthogonally and rescales it to unit output
variance (`ml_practical.lsuv`, model in eval mode, on `lsuv.batch_size` training images drawn
with seed s; the head keeps its Xavier init, as in every other cell); its report goes to
<run>/init.json. Every run trains its whole budget (early stopping off) and is tested with its
last weights. A finished run (same config, summary and step files present) is read back, not
retrained.

Measured per run (`measure`): steps until the running mean over `window` steps of the training
loss falls to `target_loss`, and of the training accuracy reaches `target_accuracy`, censored at
the budget (counted as the budget, flagged, never dropped); the mean loss of the first window;
the test accuracy. Compared (`grid`, Holm over the whole family, `inference.compare_family`), per
optimizer, on natural-log steps paired by seed: He + BN against small random + BN, and the
spread of the steps over the inits without a norm against with BN. The verdicts are
`claims.judge`'s rules on those statistics.

Writes into the workdir: results.json (per cell and seed: the per-step curves, the measures, test
accuracy and loss, LSUV's report; per comparison the seeds, per-seed values and differences and
the `compare_family` entry; the verdicts), results.md (tables: mean and 95 % CI over seeds, the
paired comparisons, the verdicts), analysis.md (each chapter claim, the measurement, the verdict),
loss_<optimizer>_<norm>.png (running-mean training loss per init) and steps.png.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import cli
from experiments.ablation.main import finished_run
from experiments.bn_init import claims, grid, measure, report
from experiments.lsuv.main import LSUVOptions
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, lsuv, multiseed, run_files
from ml_practical.analysis import inference
from ml_practical.config import ConfigError, Section, field

INIT_FILE = "init.json"
# The LSUV key of seed s: fold_in(PRNGKey(s), LSUV_TAG) (the lsuv study's tag: any fixed number).
LSUV_TAG = 12_016
CURVE_POINTS = 60  # running-mean points per run kept for the figures


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


@dataclasses.dataclass(frozen=True)
class BNInitStudy(Section):
    """The study's own fields.

    Attributes:
      inits, norms, optimizers: comma-separated axis values (`grid.INITS`, `grid.NORMS`,
        `grid.OPTIMIZERS`); every combination is a cell.
      lr_sgd, lr_adam: the learning rate of each optimizer, the same for every init and norm.
      seeds: number of seeds per cell: `seed` .. `seed + seeds - 1` (the config's `seed` first).
      seed_mode: "vmap" (a cell's seeds as one program, `loop.fit_seeds`) or "sequential".
      target_loss, target_accuracy: the levels a run's running-mean training loss / accuracy must
        reach (`measure.steps_to`).
      window: the running mean's length in steps.
      lsuv: LSUV's options for the "lsuv" cells (its `target_var`, `tol`, `max_iter`, batch).
    """

    section: ClassVar[str] = ""
    inits: str
    norms: str
    optimizers: str
    lr_sgd: float = field(gt=0)
    lr_adam: float = field(gt=0)
    seeds: int = field(ge=1)
    seed_mode: str = field(choices=("sequential", "vmap"))
    target_loss: float = field(gt=0)
    target_accuracy: float = field(gt=0, le=1)
    window: int = field(ge=1)
    lsuv: LSUVOptions

    def check(self):
        for name, table in (("inits", grid.INITS), ("norms", grid.NORMS),
                            ("optimizers", grid.OPTIMIZERS)):
            chosen = _names(getattr(self, name))
            bad = [c for c in chosen if c not in table]
            if not chosen or bad or len(set(chosen)) != len(chosen):
                raise ConfigError(f"{name}: {getattr(self, name)!r}; expected distinct "
                                  f"comma-separated names from {list(table)}")

    def axes(self) -> tuple[list[str], list[str], list[str]]:
        """(optimizers, norms, inits), in the config's order."""
        return _names(self.optimizers), _names(self.norms), _names(self.inits)

    def lr(self, optimizer: str) -> float:
        return {"sgd": self.lr_sgd, "adam": self.lr_adam}[optimizer]


def seed_list(cfg: config_lib.Config) -> list[int]:
    return list(range(cfg.seed, cfg.seed + cfg.study.seeds))


def cell_config(cfg: config_lib.Config, optimizer: str, norm: str, init: str,
                seed: int) -> config_lib.Config:
    """The training config of one cell and seed (the study fields dropped). The "lsuv" cell keeps
    the config's own hidden_init: LSUV re-draws the conv kernels anyway (`LSUVInit`)."""
    overrides: dict[str, Any] = {"model.norm": grid.NORMS[norm],
                                 "optim.name": grid.OPTIMIZERS[optimizer],
                                 "optim.learning_rate": cfg.study.lr(optimizer), "seed": int(seed)}
    if init != "lsuv":
        overrides["model.hidden_init"] = grid.INITS[init]
    name = grid.cell_name(optimizer, norm, init)
    return config_lib.override(cfg, overrides, what=f"cell {name!r}")


def lsuv_batch(dataset: data_lib.Dataset, seed: int, size: int) -> np.ndarray:
    """The training images LSUV fits on at seed `seed` (a seeded draw, in file order)."""
    if size > len(dataset.train_y):
        raise ValueError(f"lsuv.batch_size: {size} exceeds the {len(dataset.train_y)} training "
                         "images")
    idx = np.random.default_rng(seed).permutation(len(dataset.train_y))[:size]
    return np.asarray(dataset.train_x[np.sort(idx)])


class LSUVInit(loop.Hook):
    """Before the first step: LSUV on every conv kernel of each run's fresh state (the head is
    left alone), its report written to <run>/init.json. Works on one state (`loop.fit`) and on a
    seed group's stacked states (`loop.fit_seeds`)."""

    def __init__(self, options: LSUVOptions, batches: dict[int, np.ndarray]):
        self.options, self.batches = options, batches

    def init_state(self, exp, state, runs):
        stacked = jnp.ndim(state.step) == 1
        o = self.options
        apply_eval = lambda variables, x, **kw: exp.model.apply(variables, x, train=False, **kw)
        new_params = []
        for i, run in enumerate(runs):
            params = multiseed.take(state.params, i) if stacked else state.params
            stats = multiseed.take(state.batch_stats, i) if stacked else state.batch_stats
            variables = {"params": params, **({"batch_stats": stats} if stats else {})}
            new, rep = lsuv.lsuv(apply_eval, variables, jnp.asarray(self.batches[run.seed]),
                                 target_var=o.target_var, tol=o.tol, max_iter=o.max_iter,
                                 key=jax.random.fold_in(jax.random.PRNGKey(run.seed), LSUV_TAG),
                                 layer_filter=lambda name: name != "head")
            new_params.append(new["params"])
            if run.files is not None:
                run.files.write_json(INIT_FILE, {"lsuv_report": rep})
        if stacked:
            params = jax.tree.map(lambda *xs: jnp.stack(xs), *new_params)
            state = state.replace(params=params, opt_state=jax.vmap(exp.tx.init)(params))
            return jax.device_put(state, NamedSharding(exp.mesh, P()))
        params = new_params[0]
        return exp.replicate(state.replace(params=params, opt_state=exp.tx.init(params)))


def _finished(path: pathlib.Path, run_cfg: config_lib.Config, num_epochs: int,
              init: str) -> dict[str, Any] | None:
    done = finished_run(path, run_cfg)
    if done is None:
        return None
    files = run_files.RunFiles(path, tensorboard=False)
    if sorted(files.read_steps()) != list(range(1, num_epochs + 1)):
        return None
    if init == "lsuv" and not (path / INIT_FILE).exists():
        return None
    return done[0]


def _has_checkpoints(path: pathlib.Path) -> bool:
    ckpt = run_files.RunFiles(path, tensorboard=False).checkpoint_dir
    return ckpt.exists() and any(ckpt.iterdir())


def run_record(cfg: config_lib.Config, path: pathlib.Path, seed: int, summary: dict,
               init: str, status: str) -> dict[str, Any]:
    """One run's record: its per-step curves, the measures, test metrics, LSUV's report."""
    study = cfg.study
    files = run_files.RunFiles(path, tensorboard=False)
    steps = files.read_steps()
    loss = np.concatenate([np.asarray(steps[e]["loss"], np.float64) for e in sorted(steps)])
    acc = np.concatenate([np.asarray(steps[e]["accuracy"], np.float64) for e in sorted(steps)])
    first = measure.running_mean(loss, study.window)
    measures = {}
    for name, (key, target_field, direction) in grid.MEASURES.items():
        values = loss if key == "loss" else acc
        measures[name] = {"target": getattr(study, target_field),
                          **measure.steps_to(values, getattr(study, target_field), study.window,
                                             direction=direction)}
    out = {"seed": seed, "status": status, "train_time_s": summary.get("wall_time_s"),
           "test_accuracy": summary["test/accuracy"],
           "test_loss": summary["test/loss"], "measures": measures,
           "first_window_loss": float(first[0]) if first.size else math.nan,
           "final_window_loss": float(first[-1]) if first.size else math.nan,
           "nonfinite_steps": int(np.sum(~np.isfinite(loss))),
           "step_loss": loss.tolist(), "step_accuracy": acc.tolist(),
           "curve": measure.curve(loss, study.window, CURVE_POINTS)}
    if init == "lsuv":
        out["lsuv_report"] = files.read_json(INIT_FILE)["lsuv_report"]
    return out


def train_cell(cfg, workdir: pathlib.Path, optimizer: str, norm: str, init: str, seeds, dataset,
               batches, say) -> list[dict[str, Any]]:
    """Trains (or reads back) one cell at every seed; its per-seed records in `seeds` order ([]
    when a signal interrupted it)."""
    name = grid.cell_name(optimizer, norm, init)
    cell_dir = workdir / "runs" / optimizer / norm / init
    cfgs = {s: cell_config(cfg, optimizer, norm, init, s) for s in seeds}
    num_epochs = cfg.train.num_epochs
    done = {s: _finished(loop.seed_dir(cell_dir, s), cfgs[s], num_epochs, init) for s in seeds}
    status = {s: "reused" for s in seeds}

    def hooks():
        h = [loop.StepLog(keys=("loss", "accuracy"))]
        return ([LSUVInit(cfg.study.lsuv, batches)] if init == "lsuv" else []) + h

    t0 = time.time()
    group = [s for s in seeds
             if done[s] is None and not _has_checkpoints(loop.seed_dir(cell_dir, s))]
    if cfg.study.seed_mode == "vmap" and group:
        results = loop.fit_seeds(cfgs[group[0]], group, cell_dir, dataset=dataset, hooks=hooks())
        for s, result in zip(group, results):
            done[s], status[s] = result.summary, f"trained ({len(group)} seeds vmapped)"
    for s in seeds:
        if done[s] is None:
            result = loop.fit(cfgs[s], loop.seed_dir(cell_dir, s), dataset=dataset, hooks=hooks())
            done[s], status[s] = result.summary, "trained"
            if result.summary.get("stop_reason") == "interrupted":
                break
    if any(done[s] is None or done[s].get("stop_reason") == "interrupted" for s in seeds):
        say(f"{name}: interrupted; rerun the same command to go on (finished runs are reused, "
            "this cell's seeds train again)")
        return []
    records = [run_record(cfg, loop.seed_dir(cell_dir, s), s, done[s], init, status[s])
               for s in seeds]
    m = [r["measures"]["loss"] for r in records]
    say(f"{name}: steps to loss {cfg.study.target_loss:g} "
        + ", ".join(f"{x['steps']}{'+' if x['censored'] else ''}" for x in m)
        + "; test accuracy " + ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in records)
        + f" [{', '.join(sorted(set(status.values())))}; {time.time() - t0:.0f} s]")
    return records


def comparisons(cells: dict[str, dict], optimizers, norms, inits) -> dict[str, dict[str, Any]]:
    """The family (`grid`): {name: {"kind", "optimizer", "measure", "seeds", values...,
    "differences", "inference"}}, the differences paired by seed, Holm over all of them."""
    out: dict[str, dict[str, Any]] = {}
    slow, fast = grid.SPEED
    for m in grid.SPEED_MEASURES:
        for opt in optimizers:
            a = cells.get(grid.cell_name(opt, grid.SPEED_NORM, slow))
            b = cells.get(grid.cell_name(opt, grid.SPEED_NORM, fast))
            if a is None or b is None:
                continue
            ra = {r["seed"]: r for r in a["runs"]}
            rb = {r["seed"]: r for r in b["runs"]}
            seeds = sorted(set(ra) & set(rb))
            sa = [ra[s]["measures"][m]["steps"] for s in seeds]
            sb = [rb[s]["measures"][m]["steps"] for s in seeds]
            out[f"speed/{m}/{opt}"] = {
                "kind": "speed", "optimizer": opt, "measure": m, "norm": grid.SPEED_NORM,
                "arm": slow, "against": fast, "seeds": seeds, "arm_steps": sa,
                "against_steps": sb,
                "arm_censored": [ra[s]["measures"][m]["censored"] for s in seeds],
                "against_censored": [rb[s]["measures"][m]["censored"] for s in seeds],
                "differences": (np.log(sa) - np.log(sb)).tolist()}
    wide, narrow = grid.SENSITIVITY
    for m in grid.SENSITIVITY_MEASURES:
        for opt in optimizers:
            if wide not in norms or narrow not in norms:
                continue
            per_norm = {}
            for norm in (wide, narrow):
                per_norm[norm] = {
                    i: {r["seed"]: r for r in cells[grid.cell_name(opt, norm, i)]["runs"]}
                    for i in inits}
            seeds = sorted(set.intersection(*[set(v) for n in per_norm.values()
                                              for v in n.values()]))
            if len(inits) < 2 or not seeds:
                continue
            spread = {norm: [measure.log_spread({i: per_norm[norm][i][s]["measures"][m]["steps"]
                                                 for i in inits}) for s in seeds]
                      for norm in (wide, narrow)}
            out[f"sensitivity/{m}/{opt}"] = {
                "kind": "sensitivity", "optimizer": opt, "measure": m, "arm": wide,
                "against": narrow, "inits": list(inits), "seeds": seeds,
                "arm_spread": spread[wide], "against_spread": spread[narrow],
                "censored": {norm: sum(per_norm[norm][i][s]["measures"][m]["censored"]
                                       for i in inits for s in seeds) for norm in (wide, narrow)},
                "differences": np.subtract(spread[wide], spread[narrow]).tolist()}
    family = inference.compare_family({k: c["differences"] for k, c in out.items()})
    for k, inf in family.items():
        out[k]["inference"] = inf
    return out


def summarize_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure the geometric mean of the steps with the 95 % t interval of log steps, the
    censored count; the test accuracy's mean and 95 % t interval (over the cell's seeds)."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for m in grid.MEASURES:
        logs = [math.log(r["measures"][m]["steps"]) for r in runs]
        t = inference.paired_t(logs)
        out[m] = {"geomean": math.exp(t["mean"]), "low": math.exp(t["low"]),
                  "high": math.exp(t["high"]),
                  "censored": sum(r["measures"][m]["censored"] for r in runs),
                  "steps": [r["measures"][m]["steps"] for r in runs]}
    for key in ("test_accuracy", "first_window_loss", "final_window_loss"):
        t = inference.paired_t([r[key] for r in runs])
        out[key] = {"mean": t["mean"], "low": t["low"], "high": t["high"],
                    "values": [r[key] for r in runs]}
    return out


def main(argv):
    run = cli.start(argv, "experiments.bn_init", study=BNInitStudy)
    cfg, workdir = run.cfg, run.workdir
    study = cfg.study
    optimizers, norms, inits = study.axes()
    seeds = seed_list(cfg)
    for opt in optimizers:  # every cell's config is checked before anything trains
        for norm in norms:
            for init in inits:
                cell_config(cfg, opt, norm, init, seeds[-1])
    t0 = time.time()
    dataset = data_lib.load_dataset(cfg.data)
    batches = ({s: lsuv_batch(dataset, s, study.lsuv.batch_size) for s in seeds}
               if "lsuv" in inits else {})
    steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
    budget = steps_per_epoch * cfg.train.num_epochs
    say = lambda line: print(line, flush=True)
    say(f"{len(optimizers) * len(norms) * len(inits)} cells x {len(seeds)} seeds, {budget} steps "
        f"each ({cfg.train.num_epochs} epochs of {steps_per_epoch}), seed mode {study.seed_mode}")
    cells: dict[str, dict[str, Any]] = {}
    for opt in optimizers:
        for norm in norms:
            for init in inits:
                runs = train_cell(cfg, workdir, opt, norm, init, seeds, dataset, batches, say)
                if not runs:  # interrupted: cli.run exits with 128 + the signal
                    return
                cells[grid.cell_name(opt, norm, init)] = {
                    "optimizer": opt, "norm": norm, "init": init,
                    "config": {"optim.name": grid.OPTIMIZERS[opt],
                               "optim.learning_rate": study.lr(opt),
                               "model.norm": grid.NORMS[norm], "hidden_init": grid.INITS[init]},
                    "summary": summarize_cell(runs), "runs": runs}
    comps = comparisons(cells, optimizers, norms, inits)
    verdicts = claims.judge(comps)
    wall = time.time() - t0

    figures = report.figures(workdir, cells, optimizers, norms, inits, study, budget)
    setup = report.setup_line(cfg, dataset, budget, steps_per_epoch, seeds)
    train_time = sum(r["train_time_s"] or 0.0 for c in cells.values() for r in c["runs"])
    results = {"dataset": dataset.info(), "seeds": seeds, "budget_steps": budget,
               "training_time_s": train_time,
               "steps_per_epoch": steps_per_epoch, "setup": setup,
               "axes": {"optimizers": optimizers, "norms": norms, "inits": inits},
               "cells": cells, "comparisons": comps, "verdicts": verdicts}
    timing = (f"{wall:.0f} s for this command; the runs' training took {train_time:.0f} s, summed "
              "from their summaries")
    md = report.results_md(run.command, timing, setup, cells, comps, verdicts, study, figures)
    analysis = report.analysis_md(run.command, timing, setup, cells, comps, verdicts, study)
    run_files.atomic_write_text(workdir / "analysis.md", analysis)
    cli.finish(run, wall, results, md, figures)
