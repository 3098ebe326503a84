"""Clipping by value vs by global norm, per step: python -m experiments.clipping --config=... --workdir=...

For each learning rate and each clip ("none", "value", "global_norm"), `loop.fit` trains the MLP in
<workdir>/runs/lr<lr>_<clip> with the optimizer's clip slot recording every step
(`optim.make_optimizer(record_clip=True)`, `clip_recorder.recording_clip`: the same updates) and
`loop.StepLog` keeping the records; the study reports how often the clip fired, the cosine between
the clipped and the raw gradient, per-layer gradient norms and the final test accuracy. Every run
trains its whole budget, diverged or not (early stopping disabled, no stop on skipped steps, the
inline guard skipping each non-finite step). Writes results.json, results.md, cosine_lr*.png and
grad_norms_lr*_*.png into the workdir.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from experiments import cli
from ml_practical import clip_recorder
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, plots, run_files
from ml_practical.analysis.activations import STATS_BATCH_SIZE, activation_stats
from ml_practical.config import ConfigError, Section, field

# The per-step records kept (`clip_recorder.step_metrics` plus the step's loss and skip flag).
STEP_KEYS = ("loss", "skipped", "cosine", "clipped", "element_fraction", "raw_norm",
             "clipped_norm", "raw_max_abs", "raw_layer_norms")


@dataclasses.dataclass(frozen=True)
class ClippingStudy(Section):
    """The study's own fields.

    Attributes:
      learning_rates: comma-separated; one set of three runs per learning rate.
      clip_norm_tau: optax.clip_by_global_norm(tau).
      clip_value_tau: optax.clip(tau): each gradient entry to [-tau, tau].
      plot_window: curves show means over blocks of this many steps.
    """

    section: ClassVar[str] = ""
    learning_rates: str
    clip_norm_tau: float = field(gt=0)
    clip_value_tau: float = field(gt=0)
    plot_window: int = field(ge=1)

    def check(self):
        self.lr_list()

    def lr_list(self) -> list[float]:
        try:
            lrs = [float(s) for s in self.learning_rates.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"learning_rates: {self.learning_rates!r}; expected "
                              "comma-separated numbers") from None
        if not lrs or any(not lr > 0 for lr in lrs):
            raise ConfigError(f"learning_rates: {self.learning_rates!r}; expected "
                              "comma-separated numbers > 0")
        return lrs


class ClipRecords(loop.Hook):
    """The clip record of every step (`clip_recorder.step_metrics`) as per-step metrics."""

    step_metrics = staticmethod(clip_recorder.step_metrics)


def _steps(files: run_files.RunFiles) -> dict:
    """The run's per-step records, epochs concatenated; "raw_layer_norms/<layer>" nested again."""
    by_epoch = files.read_steps()
    flat = {k: np.concatenate([by_epoch[e][k] for e in sorted(by_epoch)])
            for k in by_epoch[min(by_epoch)]}
    out: dict = {}
    for key, values in flat.items():
        name, _, layer = key.partition("/")
        if layer:
            out.setdefault(name, {})[layer] = values
        else:
            out[key] = values
    return out, by_epoch


def _run(cfg, dataset, lr, kind, tau, workdir):
    run_cfg = config_lib.override(cfg, {"optim.learning_rate": lr, "optim.clip": kind,
                                        "optim.clip_value": tau}, what=f"lr {lr:g} clip {kind}")
    t0 = time.time()
    result = loop.fit(run_cfg, workdir / "runs" / f"lr{lr:g}_{kind}", dataset=dataset,
                      hooks=[ClipRecords(), loop.StepLog(keys=STEP_KEYS)], record_clip=True)
    steps, by_epoch = _steps(run_files.RunFiles(result.workdir, tensorboard=False))
    epochs = [{"epoch": r["epoch"], "train/loss": float(np.mean(by_epoch[r["epoch"]]["loss"])),
               "val/accuracy": r["val/accuracy"],
               "skipped_steps": int(by_epoch[r["epoch"]]["skipped"].sum())}
              for r in result.history]
    # A run that ends at the majority-class accuracy without NaNs has usually lost its ReLUs.
    acts = activation_stats(
        run_cfg.model, {"params": result.state.params, "batch_stats": result.state.batch_stats},
        jnp.asarray(dataset.test_x[:STATS_BATCH_SIZE]), bins=0)
    summary = clip_recorder.summarize_records(steps, norm_tau=cfg.study.clip_norm_tau,
                                              value_tau=cfg.study.clip_value_tau)
    return {"lr": lr, "clip": kind, "tau": tau, "summary": summary, "epochs": epochs,
            "test/accuracy": result.summary["test/accuracy"],
            "test/loss": result.summary["test/loss"],
            "dead_fraction": {layer: a["act"]["dead_fraction"] for layer, a in acts.items()},
            "train_time_s": time.time() - t0, "model": result.summary["model"],
            "steps": {k: (v.tolist() if not isinstance(v, dict) else
                          {n: a.tolist() for n, a in v.items()})
                      for k, v in steps.items()
                      if k in STEP_KEYS and k not in ("skipped",)}}


def _fmt(x, spec):
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def _table(runs, norm_tau, value_tau):
    lines = ["| lr | clip | tau | steps clipped | mean cosine | min cosine | entries clipped "
             f"| raw norm median | raw norm > {norm_tau:g} | raw max abs > {value_tau:g} "
             "| dead units | test accuracy |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        s = r["summary"]
        diverged = s["nonfinite_steps"] > 0
        lines.append(
            f"| {r['lr']:g} | {r['clip']} | {r['tau']:g} "
            f"| {_fmt(100 * s['clipped_fraction'], '.1f')}% "
            f"| {_fmt(s['cosine_mean'], '.4f')} | {_fmt(s['cosine_min'], '.4f')} "
            f"| {_fmt(100 * s['element_fraction_mean'], '.3g') + '%' if r['clip'] == 'value' else '-'} "
            f"| {_fmt(s['raw_norm_median'], '.3g')} "
            f"| {_fmt(100 * s['would_clip_global_norm'], '.1f')}% "
            f"| {_fmt(100 * s['would_clip_value'], '.1f')}% "
            f"| {' / '.join(_fmt(100 * v, '.0f') + '%' for v in r['dead_fraction'].values())} "
            f"| {100 * r['test/accuracy']:.2f}%"
            + (f" (diverged: {s['nonfinite_steps']} non-finite steps)" if diverged else "") + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    run = cli.start(argv, "experiments.clipping", study=ClippingStudy)
    cfg, workdir, study = run.cfg, run.workdir, run.cfg.study
    t0 = time.time()
    dataset = data_lib.load_dataset(cfg.data)
    clips = [("none", 1.0), ("value", study.clip_value_tau), ("global_norm", study.clip_norm_tau)]
    runs, figures = [], []
    w = study.plot_window
    for lr in study.lr_list():
        lr_runs = []
        for kind, tau in clips:
            r = _run(cfg, dataset, lr, kind, tau, workdir)
            s = r["summary"]
            print(f"lr {lr:g} clip {kind}: clipped {100 * s['clipped_fraction']:.1f}% of steps, "
                  f"cosine mean {s['cosine_mean']:.4f} min {s['cosine_min']:.4f}, test accuracy "
                  f"{100 * r['test/accuracy']:.2f}% ({r['train_time_s']:.0f} s)", flush=True)
            lr_runs.append(r)
            layer_norms = r["steps"]["raw_layer_norms"]
            n_blocks = len(plots.block_means(r["steps"]["raw_norm"], w))
            name = f"grad_norms_lr{lr:g}_{kind}.png"
            plots.plot_lines(
                [w * (i + 0.5) for i in range(n_blocks)],
                {layer: plots.block_means(v, w) for layer, v in layer_norms.items()}
                | {"global (raw)": plots.block_means(r["steps"]["raw_norm"], w)},
                workdir / name, xlabel="step", ylabel="raw gradient L2 norm",
                title=f"Per-layer gradient norms, lr {lr:g}, clip {kind}"
                      + ("" if kind == "none" else f" (tau {tau:g})") + f"; means of {w} steps",
                logy=True)
            figures.append(name)
        name = f"cosine_lr{lr:g}.png"
        x = [w * (i + 0.5) for i in range(len(plots.block_means(lr_runs[0]["steps"]["cosine"], w)))]
        plots.plot_lines(
            x, {f"{r['clip']}" + ("" if r["clip"] == "none" else f" (tau {r['tau']:g})"):
                plots.block_means(r["steps"]["cosine"], w) for r in lr_runs},
            workdir / name, xlabel="step", ylabel="cos(clipped gradient, raw gradient)",
            title=f"Direction kept by clipping, lr {lr:g}; means of {w} steps")
        figures.append(name)
        runs += lr_runs
    wall = time.time() - t0

    md = [f"# Gradient clipping: by value vs by global norm\n\nCommand: `{run.command}` "
          f"({wall:.0f} s)\n",
          f"{runs[0]['model']}, He init, {cfg.optim.name} {cfg.optim.momentum:g}, batch "
          f"{cfg.train.batch_size}, {cfg.train.num_epochs} epochs, seed {cfg.seed}. Per step: "
          "cosine between the clipped and the raw gradient (all parameters as one vector), "
          "whether the clip fired, and the share of gradient entries it changed. The last two "
          "'raw' columns say how often the raw gradient exceeded the other clip's threshold "
          f"(global norm {study.clip_norm_tau:g}, max |g_i| {study.clip_value_tau:g}). Dead "
          "units: share of each hidden layer's units that are zero for all of the first "
          f"{STATS_BATCH_SIZE} test images after training. Medians, means and extremes are over "
          "the steps with a finite gradient norm.\n",
          _table(runs, study.clip_norm_tau, study.clip_value_tau),
          "Figures: " + ", ".join(figures) + "\n"]
    cli.finish(run, wall, {"dataset": dataset.info(), "runs": runs}, md, figures)
