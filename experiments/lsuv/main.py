"""Xavier vs He vs LSUV on a deep plain MLP: python -m experiments.lsuv --config=experiments/configs/lsuv.py --workdir=...

For each initialization (and seed), `loop.fit` trains the run in <workdir>/runs/<init>/seed_<s>
with the `AtInit` hook, which, before the first step, replaces the "lsuv" row's params with
`lsuv.lsuv`'s (fitted on a seeded batch of training images, model in eval mode) and records every
layer's output variance on held-out validation images (`lsuv.layer_output_variances`) and the
validation loss at init in <run>/init.json; `loop.StepLog` keeps the per-step training loss. Every
run trains its whole budget (early stopping disabled in the config).

Writes into the workdir: results.json (everything, including LSUV's per-layer report and the
per-step losses), results.md (tables), variance.png (per-layer variance at init, log scale) and
loss.png (training loss along the steps). Prints the tables.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax
import numpy as np

from experiments import cli
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import initializers, loop, lsuv, plots, run_files
from ml_practical.config import ConfigError, Section, field

CURVE_POINTS_PER_EPOCH = 20  # the per-step loss is averaged over chunks for the figure
INIT_FILE = "init.json"
# The LSUV key: fold_in(PRNGKey(seed), LSUV_TAG); 12.1.6 is the chapter's section, any fixed tag.
LSUV_TAG = 12_016


@dataclasses.dataclass(frozen=True)
class LSUVOptions(Section):
    """LSUV's options (the paper's Tol_var and T_max are `tol` and `max_iter`)."""

    section: ClassVar[str] = "lsuv"
    batch_size: int = field(ge=1)
    target_var: float = field(gt=0)
    tol: float = field(gt=0)
    max_iter: int = field(ge=1)


@dataclasses.dataclass(frozen=True)
class LSUVStudy(Section):
    """The study's own fields.

    Attributes:
      inits: comma-separated rows: "lsuv" or any `initializers.names()` entry for the hidden
        layers (the head stays Xavier); the "lsuv" row re-draws every kernel, head included.
      seeds: runs seeds 0 .. seeds - 1.
      measure_batch_size: validation images on which the per-layer variances are taken.
      lsuv: LSUV's options.
    """

    section: ClassVar[str] = ""
    inits: str
    seeds: int = field(ge=1)
    measure_batch_size: int = field(ge=1)
    lsuv: LSUVOptions

    def check(self):
        allowed = ["lsuv"] + initializers.names()
        inits = self.init_list()
        bad = [s for s in inits if s not in allowed]
        if not inits or bad:
            raise ConfigError(f"inits: unknown {bad or self.inits!r}; expected a comma-separated "
                              f"subset of {allowed}")

    def init_list(self) -> list[str]:
        return [s.strip() for s in self.inits.split(",") if s.strip()]


class AtInit(loop.Hook):
    """Before training: LSUV for the "lsuv" row, then the per-layer variances and the validation
    metrics of the initial state, written to <run>/init.json."""

    def __init__(self, init: str, seed: int, options: LSUVOptions, lsuv_x, measure_x):
        self.init, self.seed, self.options = init, seed, options
        self.lsuv_x, self.measure_x = lsuv_x, measure_x

    def init_state(self, exp, state, runs):
        t0 = time.time()
        report = None
        apply_eval = lambda variables, x, **kw: exp.model.apply(variables, x, train=False, **kw)
        if self.init == "lsuv":
            o = self.options
            new_vars, report = lsuv.lsuv(
                apply_eval, {"params": state.params}, self.lsuv_x, target_var=o.target_var,
                tol=o.tol, max_iter=o.max_iter,
                key=jax.random.fold_in(jax.random.PRNGKey(self.seed), LSUV_TAG))
            params = new_vars["params"]
            state = exp.replicate(state.replace(params=params, opt_state=exp.tx.init(params)))
        lsuv_time = time.time() - t0
        variances = lsuv.layer_output_variances(apply_eval, {"params": state.params},
                                                self.measure_x)
        initial = exp.evaluate(state.params, state.batch_stats, exp.val_split)
        runs[0].files.write_json(INIT_FILE, {
            "variance_at_init": variances, "lsuv_report": report,
            "lsuv_time_s": lsuv_time if report is not None else None,
            "initial_val_loss": initial["loss"], "initial_val_accuracy": initial["accuracy"]})
        return state


class EpochLine(loop.Hook):
    """One line per epoch on stdout."""

    def __init__(self, label: str):
        self.label = label

    def on_epoch_end(self, event):
        r = event.record
        print(f"  {self.label} epoch {event.epoch}: train/loss {r['train/loss']:.4f} "
              f"val/loss {r['val/loss']:.4f} val/accuracy {r['val/accuracy']:.4f} "
              f"({r['epoch_time_s']:.1f} s)", flush=True)


def run_config(cfg: config_lib.Config, init: str, seed: int) -> config_lib.Config:
    """The training config of one row: the study's base fields, this seed and hidden init."""
    overrides = {"seed": seed}
    if init != "lsuv":  # the lsuv row keeps the base init; LSUV re-draws every kernel anyway
        overrides["model.hidden_init"] = init
    return config_lib.override(cfg, overrides, what=f"row {init!r}")


def run_one(cfg, init, seed, workdir, dataset, lsuv_x, measure_x):
    hooks = [AtInit(init, seed, cfg.study.lsuv, lsuv_x, measure_x),
             loop.StepLog(keys=("loss",)), EpochLine(f"{init:>14} seed {seed}")]
    result = loop.fit(run_config(cfg, init, seed), workdir / "runs" / init / f"seed_{seed}",
                      dataset=dataset, hooks=hooks)
    files = run_files.RunFiles(result.workdir, tensorboard=False)
    at_init = files.read_json(INIT_FILE)
    steps = files.read_steps()
    step_losses = [float(v) for epoch in sorted(steps) for v in steps[epoch]["loss"]]
    steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
    return {"init": init, "seed": seed, **at_init, "history": result.history,
            "step_loss": step_losses, "steps_per_epoch": steps_per_epoch,
            "model": result.summary["model"]}


def _mean_std(values):
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return float(values.mean()), std


def _fmt(mean, std, digits=4):
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def summarize(runs, inits, num_epochs):
    """Per-init means over seeds of the numbers the tables show."""
    out = {}
    for init in inits:
        rs = [r for r in runs if r["init"] == init]
        layers = list(rs[0]["variance_at_init"])
        row = {"variance_at_init": {l: _mean_std([r["variance_at_init"][l] for r in rs])[0]
                                    for l in layers},
               "initial_val_loss": _mean_std([r["initial_val_loss"] for r in rs])}
        for epoch in sorted({1, num_epochs}):
            for key in ("train/loss", "val/loss", "val/accuracy"):
                row[f"epoch{epoch}/{key}"] = _mean_std([r["history"][epoch - 1][key] for r in rs])
        out[init] = row
    return out


def format_tables(summary, runs, inits, num_epochs, seeds):
    layers = list(summary[inits[0]]["variance_at_init"])
    lines = [f"Per-layer output variance at init (Dense output, before ReLU; validation batch; "
             f"mean over {seeds} seed(s))", "",
             "| layer | " + " | ".join(inits) + " |", "|---|" + "---:|" * len(inits)]
    for l in layers:
        lines.append(f"| {l} | " + " | ".join(f"{summary[i]['variance_at_init'][l]:.3g}"
                                              for i in inits) + " |")
    epochs = sorted({1, num_epochs})
    head = ["init", "val loss at init"] + [f"train loss ep{e}" for e in epochs] + [
        f"val loss ep{e}" for e in epochs] + [f"val acc ep{e}" for e in epochs]
    lines += ["", f"Training (train loss: mean over the epoch's steps; {seeds} seed(s))", "",
              "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i in inits:
        s = summary[i]
        cells = [i, _fmt(*s["initial_val_loss"])]
        cells += [_fmt(*s[f"epoch{e}/train/loss"]) for e in epochs]
        cells += [_fmt(*s[f"epoch{e}/val/loss"]) for e in epochs]
        cells += [_fmt(*s[f"epoch{e}/val/accuracy"]) for e in epochs]
        lines.append("| " + " | ".join(cells) + " |")
    lsuv_runs = [r for r in runs if r["lsuv_report"] is not None]
    if lsuv_runs:
        r = lsuv_runs[0]
        lines += ["", f"LSUV report (seed {r['seed']}; variance on its fitting batch; "
                  f"{r['lsuv_time_s']:.1f} s)", "",
                  "| layer | var before | var after | iterations | scale | converged |",
                  "|---|---:|---:|---:|---:|---|"]
        for row in r["lsuv_report"]:
            lines.append(f"| {row['layer']} | {row['var_before']:.4g} | {row['var_after']:.4g} | "
                         f"{row['iterations']} | {row['scale']:.4g} | {row['converged']} |")
    return "\n".join(lines)


def main(argv):
    run = cli.start(argv, "experiments.lsuv", study=LSUVStudy)
    cfg, workdir, study = run.cfg, run.workdir, run.cfg.study
    inits = study.init_list()
    t_start = time.time()

    dataset = data_lib.load_dataset(cfg.data)
    if study.measure_batch_size > len(dataset.val_y):
        raise ValueError(f"measure_batch_size: {study.measure_batch_size} exceeds the "
                         f"{len(dataset.val_y)} validation images")
    measure_x = dataset.val_x[:study.measure_batch_size]
    runs = []
    for seed in range(study.seeds):
        lsuv_idx = np.random.default_rng(seed).permutation(len(dataset.train_y))
        lsuv_x = dataset.train_x[np.sort(lsuv_idx[:study.lsuv.batch_size])]
        for init in inits:
            runs.append(run_one(cfg, init, seed, workdir, dataset, lsuv_x, measure_x))

    num_epochs = cfg.train.num_epochs
    summary = summarize(runs, inits, num_epochs)
    tables = format_tables(summary, runs, inits, num_epochs, study.seeds)
    wall = time.time() - t_start

    layers = list(summary[inits[0]]["variance_at_init"])
    x = list(range(1, len(layers) + 1))
    plots.plot_lines(x, {i: [summary[i]["variance_at_init"][l] for l in layers] for i in inits},
                     workdir / "variance.png",
                     xlabel=f"layer (1-{len(layers) - 1}: hidden Dense, {len(layers)}: head)",
                     ylabel="output variance at init", logy=True,
                     title=f"Per-layer output variance at init, {runs[0]['model']}, "
                           f"{dataset.name}")
    curves = {}
    chunk = max(1, runs[0]["steps_per_epoch"] // CURVE_POINTS_PER_EPOCH)
    for init in inits:
        mean_loss = np.mean([r["step_loss"] for r in runs if r["init"] == init], axis=0)
        curves[init] = plots.block_means(mean_loss[:len(mean_loss) // chunk * chunk], chunk)
    steps = (np.arange(len(next(iter(curves.values())))) + 0.5) * chunk / runs[0]["steps_per_epoch"]
    plots.plot_lines(steps, curves, workdir / "loss.png", xlabel="epoch",
                     ylabel=f"training loss (mean over {chunk} steps)", logy=True,
                     title="Training loss, SGD + momentum" if cfg.optim.name == "momentum"
                           else f"Training loss, {cfg.optim.name}")
    results = {"dataset": dataset.info(), "summary": summary, "runs": runs}
    md = [f"Command: `{run.command}`\n\nWall time: {wall:.0f} s\n\n{tables}\n"]
    cli.finish(run, wall, results, md, ["variance.png", "loss.png"])
