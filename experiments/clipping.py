"""Clipping by value vs by global norm, per step: python -m experiments.clipping --config=... --workdir=...

For each learning rate and each clip ("none", "value", "global_norm"), trains the MLP with
`clipping.make_recording_epoch` (one jitted scan per epoch; per-step records come back once per
epoch) and reports how often the clip fired, the cosine between the clipped and the raw gradient,
per-layer gradient norms and the final test accuracy. Writes results.json, results.md,
cosine_lr*.png and grad_norms_lr*_*.png into the workdir.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from ml_practical import clipping
from ml_practical import data as data_lib
from ml_practical import diagnostics, models, optim, plots, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.mark_flags_as_required(["config", "workdir"])


def _run(cfg, dataset, lr, kind, tau, images, labels, val_split, test_split):
  model = models.make_model(cfg.model)
  optim_cfg = cfg.optim.to_dict()
  optim_cfg.update(learning_rate=lr, clip="none")
  steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
  # The recording clip first, like optim.make_optimizer's own clip: the same update rule.
  tx = optax.chain(clipping.recording_clip(kind, tau),
                   optim.make_optimizer(optim_cfg, total_steps=steps_per_epoch * cfg.train.num_epochs))
  state = train.create_train_state(model, tx, jax.random.PRNGKey(cfg.seed),
                                   dataset.train_x.shape[1:])
  epoch_fn = clipping.make_recording_epoch(model, tx)
  evaluate = train.make_evaluate(model, cfg.train.eval_batch_size)
  per_step, epochs = [], []
  t0 = time.time()
  for epoch in range(1, cfg.train.num_epochs + 1):
    idx = data_lib.batch_indices(cfg.seed, epoch, len(dataset.train_y), cfg.train.batch_size)
    state, steps = epoch_fn(state, images, labels, jnp.asarray(idx))
    steps = jax.device_get(steps)
    per_step.append(steps)
    val = evaluate(state.params, state.batch_stats, val_split)
    epochs.append({"epoch": epoch, "train/loss": float(np.mean(steps["loss"])),
                   "val/accuracy": val["accuracy"], "skipped_steps": int(steps["skipped"].sum())})
  test = evaluate(state.params, state.batch_stats, test_split)
  # A run that ends at the majority-class accuracy without NaNs has usually lost its ReLUs.
  acts = diagnostics.activation_stats(
      model, {"params": state.params, "batch_stats": state.batch_stats},
      jnp.asarray(dataset.test_x[:diagnostics.STATS_BATCH_SIZE]), bins=0)
  steps = jax.tree.map(lambda *xs: np.concatenate(xs), *per_step)
  summary = clipping.summarize(steps, norm_tau=cfg.clip_norm_tau, value_tau=cfg.clip_value_tau)
  return {"lr": lr, "clip": kind, "tau": tau, "summary": summary, "epochs": epochs,
          "test/accuracy": test["accuracy"], "test/loss": test["loss"],
          "dead_fraction": {layer: a["act"]["dead_fraction"] for layer, a in acts.items()},
          "train_time_s": time.time() - t0,
          "steps": {k: (v.tolist() if not isinstance(v, dict) else
                        {n: a.tolist() for n, a in v.items()})
                    for k, v in steps.items()
                    if k in ("loss", "cosine", "clipped", "element_fraction", "raw_norm",
                             "clipped_norm", "raw_max_abs", "raw_layer_norms")}}


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
        f"| {r['lr']:g} | {r['clip']} | {r['tau']:g} | {_fmt(100 * s['clipped_fraction'], '.1f')}% "
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
  workdir, command = cli.start(argv, "experiments.clipping", _WORKDIR.value)
  cfg = _CONFIG.value
  try:
    lrs = [float(s) for s in cfg.learning_rates.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"learning_rates: {cfg.learning_rates!r}; expected comma-separated numbers")
  if not lrs:
    raise ValueError("learning_rates: empty; expected comma-separated numbers")
  t0 = time.time()
  dataset = data_lib.load_dataset(cfg.data)
  images, labels = jnp.asarray(dataset.train_x), jnp.asarray(dataset.train_y)
  bs = cfg.train.eval_batch_size
  val_split = train.put_split(dataset.val_x, dataset.val_y, bs)
  test_split = train.put_split(dataset.test_x, dataset.test_y, bs)
  clips = [("none", 1.0), ("value", cfg.clip_value_tau), ("global_norm", cfg.clip_norm_tau)]
  runs, figures = [], []
  for lr in lrs:
    lr_runs = []
    for kind, tau in clips:
      r = _run(cfg, dataset, lr, kind, tau, images, labels, val_split, test_split)
      s = r["summary"]
      print(f"lr {lr:g} clip {kind}: clipped {100 * s['clipped_fraction']:.1f}% of steps, cosine "
            f"mean {s['cosine_mean']:.4f} min {s['cosine_min']:.4f}, test accuracy "
            f"{100 * r['test/accuracy']:.2f}% ({r['train_time_s']:.0f} s)", flush=True)
      lr_runs.append(r)
      w = cfg.plot_window
      layer_norms = r["steps"]["raw_layer_norms"]
      n_blocks = len(clipping.block_means(r["steps"]["raw_norm"], w))
      name = f"grad_norms_lr{lr:g}_{kind}.png"
      plots.plot_lines(
          [w * (i + 0.5) for i in range(n_blocks)],
          {layer: clipping.block_means(v, w) for layer, v in layer_norms.items()}
          | {"global (raw)": clipping.block_means(r["steps"]["raw_norm"], w)},
          workdir / name, xlabel="step", ylabel="raw gradient L2 norm",
          title=f"Per-layer gradient norms, lr {lr:g}, clip {kind}"
                + ("" if kind == "none" else f" (tau {tau:g})") + f"; means of {w} steps",
          logy=True)
      figures.append(name)
    name = f"cosine_lr{lr:g}.png"
    x = [cfg.plot_window * (i + 0.5)
         for i in range(len(clipping.block_means(lr_runs[0]["steps"]["cosine"], cfg.plot_window)))]
    plots.plot_lines(
        x, {f"{r['clip']}" + ("" if r["clip"] == "none" else f" (tau {r['tau']:g})"):
            clipping.block_means(r["steps"]["cosine"], cfg.plot_window) for r in lr_runs},
        workdir / name, xlabel="step", ylabel="cos(clipped gradient, raw gradient)",
        title=f"Direction kept by clipping, lr {lr:g}; means of {cfg.plot_window} steps")
    figures.append(name)
    runs += lr_runs
  wall = time.time() - t0

  md = [f"# Gradient clipping: by value vs by global norm\n\nCommand: `{command}` ({wall:.0f} s)\n",
        f"{'-'.join(str(v) for v in (784, *cfg.model.widths, cfg.model.num_classes))} ReLU MLP, "
        f"no normalization, He init, {cfg.optim.name} {cfg.optim.momentum:g}, batch "
        f"{cfg.train.batch_size}, {cfg.train.num_epochs} epochs, seed {cfg.seed}. Per step: "
        "cosine between the clipped and the raw gradient (all parameters as one vector), whether "
        "the clip fired, and the share of gradient entries it changed. The last two 'raw' "
        f"columns say how often the raw gradient exceeded the other clip's threshold "
        f"(global norm {cfg.clip_norm_tau:g}, max |g_i| {cfg.clip_value_tau:g}). Dead units: "
        "share of each hidden layer's units that are zero for all of the first "
        f"{diagnostics.STATS_BATCH_SIZE} test images after training. Medians, means and "
        "extremes are over the steps with a finite gradient norm.\n",
        _table(runs, cfg.clip_norm_tau, cfg.clip_value_tau), "Figures: " + ", ".join(figures) + "\n"]
  cli.finish(workdir, command, cfg, wall, {"dataset": dataset.info(), "runs": runs}, md, figures)


if __name__ == "__main__":
  app.run(main)
