"""Xavier vs He vs LSUV on a deep plain MLP: python -m experiments.lsuv --config=experiments/configs/lsuv.py --workdir=...

For each initialization (and seed): build the run with `train.build_experiment`, initialize the
TrainState, and for the "lsuv" row replace its params with `initializers.lsuv`'s (fitted on a
seeded batch of training images, model in eval mode). Then measure every layer's output variance
on held-out validation images (`initializers.layer_output_variances`), the validation loss before
training, and train `train.num_epochs` epochs with the library's jitted epoch function.

Writes into the workdir: config.json (resolved), results.json (everything, including LSUV's
per-layer report and per-step losses), results.md (tables), variance.png (per-layer variance at
init, log scale) and loss.png (training loss along the steps). Prints the tables.
"""

import json
import os
import shlex
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from ml_practical import data as data_lib
from ml_practical import initializers, plots, run_files, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.mark_flags_as_required(["config", "workdir"])

STUDY_FIELDS = ("inits", "seeds", "measure_batch_size", "lsuv")
CURVE_POINTS_PER_EPOCH = 20  # the per-step loss is averaged over chunks for the figure


def parse_inits(text: str) -> list[str]:
  inits = [s.strip() for s in text.split(",") if s.strip()]
  allowed = ["lsuv"] + initializers.names()
  bad = [s for s in inits if s not in allowed]
  if not inits or bad:
    raise ValueError(f"inits: unknown {bad or text!r}; expected a comma-separated subset of "
                     f"{allowed}")
  return inits


def run_config(study: ml_collections.ConfigDict, init: str, seed: int) -> ml_collections.ConfigDict:
  """The training config of one row: the study's base fields, this seed and hidden init."""
  cfg = ml_collections.ConfigDict({k: v for k, v in study.to_dict().items()
                                   if k not in STUDY_FIELDS})
  cfg.seed = seed
  if init != "lsuv":  # the lsuv row keeps the base init; LSUV re-draws every kernel anyway
    cfg.model.hidden_init = init
  return cfg


def run_one(study, init, seed, dataset, lsuv_x, measure_x, log):
  cfg = run_config(study, init, seed)
  exp = train.build_experiment(cfg, dataset=dataset)
  state = exp.init_state()
  t0 = time.time()
  report = None
  apply_eval = lambda variables, x, **kw: exp.model.apply(variables, x, train=False, **kw)
  if init == "lsuv":
    new_vars, report = initializers.lsuv(
        apply_eval, {"params": state.params}, lsuv_x, target_var=study.lsuv.target_var,
        tol=study.lsuv.tol, max_iter=study.lsuv.max_iter,
        key=jax.random.fold_in(jax.random.PRNGKey(seed), 12_016))  # 12.1.6: any fixed tag
    params = new_vars["params"]
    state = jax.device_put(state.replace(params=params, opt_state=exp.tx.init(params)),
                           NamedSharding(exp.mesh, P()))
  lsuv_time = time.time() - t0
  variances = initializers.layer_output_variances(apply_eval, {"params": state.params}, measure_x)
  initial = exp.evaluate(state.params, state.batch_stats, exp.val_split)
  history, step_losses = [], []
  for epoch in range(1, cfg.train.num_epochs + 1):
    t_epoch = time.time()
    state, step_metrics = exp.run_epoch(state, epoch)
    record = {"epoch": epoch, **train.summarize_epoch(step_metrics)}
    for name, value in exp.evaluate(state.params, state.batch_stats, exp.val_split).items():
      record[f"val/{name}"] = value
    record["epoch_time_s"] = time.time() - t_epoch
    history.append(record)
    step_losses.extend(float(v) for v in step_metrics["loss"])
    log(f"  {init:>14} seed {seed} epoch {epoch}: train/loss {record['train/loss']:.4f} "
        f"val/loss {record['val/loss']:.4f} val/accuracy {record['val/accuracy']:.4f} "
        f"({record['epoch_time_s']:.1f} s)")
  return {"init": init, "seed": seed, "variance_at_init": variances, "lsuv_report": report,
          "lsuv_time_s": lsuv_time if report is not None else None,
          "initial_val_loss": initial["loss"], "initial_val_accuracy": initial["accuracy"],
          "history": history, "step_loss": step_losses,
          "steps_per_epoch": exp.steps_per_epoch}


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
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  study = _CONFIG.value
  workdir = _WORKDIR.value
  inits = parse_inits(study.inits)
  if not isinstance(study.seeds, int) or study.seeds < 1:
    raise ValueError(f"seeds: {study.seeds!r}; expected an integer >= 1")
  os.makedirs(workdir, exist_ok=True)
  command = "python -m experiments.lsuv " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  run_files.atomic_write_text(os.path.join(workdir, "config.json"),
                              json.dumps(run_files.to_jsonable(study), indent=2) + "\n")
  log = lambda s: print(s, flush=True)
  t_start = time.time()

  dataset = data_lib.load_dataset(study.data)
  if study.measure_batch_size > len(dataset.val_y):
    raise ValueError(f"measure_batch_size: {study.measure_batch_size} exceeds the "
                     f"{len(dataset.val_y)} validation images")
  measure_x = dataset.val_x[:study.measure_batch_size]
  runs = []
  for seed in range(study.seeds):
    lsuv_idx = np.random.default_rng(seed).permutation(len(dataset.train_y))
    lsuv_x = dataset.train_x[np.sort(lsuv_idx[:study.lsuv.batch_size])]
    for init in inits:
      runs.append(run_one(study, init, seed, dataset, lsuv_x, measure_x, log))

  num_epochs = study.train.num_epochs
  summary = summarize(runs, inits, num_epochs)
  tables = format_tables(summary, runs, inits, num_epochs, study.seeds)
  wall = time.time() - t_start

  layers = list(summary[inits[0]]["variance_at_init"])
  x = list(range(1, len(layers) + 1))
  plots.plot_lines(x, {i: [summary[i]["variance_at_init"][l] for l in layers] for i in inits},
                   os.path.join(workdir, "variance.png"),
                   xlabel=f"layer (1-{len(layers) - 1}: hidden Dense, {len(layers)}: head)",
                   ylabel="output variance at init", logy=True,
                   title=f"Per-layer output variance at init, {len(layers) - 1}x"
                         f"{study.model.widths[0]} ReLU MLP, MNIST")
  curves = {}
  for init in inits:
    losses = np.mean([r["step_loss"] for r in runs if r["init"] == init], axis=0)
    chunk = max(1, runs[0]["steps_per_epoch"] // CURVE_POINTS_PER_EPOCH)
    n = len(losses) // chunk
    curves[init] = losses[:n * chunk].reshape(n, chunk).mean(axis=1)
  steps = (np.arange(len(next(iter(curves.values())))) + 0.5) * chunk / runs[0]["steps_per_epoch"]
  plots.plot_lines(steps, curves, os.path.join(workdir, "loss.png"), xlabel="epoch",
                   ylabel=f"training loss (mean over {chunk} steps)", logy=True,
                   title="Training loss, SGD + momentum" if study.optim.name == "momentum"
                         else f"Training loss, {study.optim.name}")

  results = {"command": command, "wall_time_s": wall, "dataset": dataset.info(),
             "devices": [str(d) for d in jax.devices()], "summary": summary, "runs": runs}
  run_files.atomic_write_text(os.path.join(workdir, "results.json"),
                              json.dumps(run_files.to_jsonable(results), indent=1) + "\n")
  run_files.atomic_write_text(os.path.join(workdir, "results.md"),
                              f"Command: `{command}`\n\nWall time: {wall:.0f} s\n\n{tables}\n")
  print()
  print(tables)
  print(f"\nWrote config.json, results.json, results.md, variance.png, loss.png to {workdir} "
        f"({wall:.0f} s).")


if __name__ == "__main__":
  app.run(main)
