"""Zero / constant initialization and the symmetry of hidden units: python -m experiments.zero_init ...

For every case of the config (initializers of the hidden layers and the head, dropout), trains the
MLP with the library's compiled epoch (`train.make_train_epoch`) and records after each epoch
`diagnostics.unit_symmetry` of every layer (epoch 0 = at initialization) and the validation
accuracy; at the end the test accuracy against chance (10%) and against always predicting the most
frequent test class. Writes results.json, results.md, accuracy.png and spread_<layer>.png into
the workdir.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from ml_practical import data as data_lib
from ml_practical import diagnostics, initializers, models, optim, plots, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.mark_flags_as_required(["config", "workdir"])


def _initializer(name, value):
  # "constant" is the one initializer that needs an argument the config carries beside the name.
  return initializers.get(name, value=value) if name == "constant" else initializers.get(name)


def _select(cfg):
  names = list(cfg.cases)
  if not cfg.only:  # "" = every case, sorted by name
    return names
  chosen = [s.strip() for s in cfg.only.split(",") if s.strip()]
  unknown = sorted(set(chosen) - set(names))
  if unknown:
    raise ValueError(f"only: unknown case(s) {unknown}; expected some of {names}")
  return chosen


def _run_case(cfg, case, dataset, test_split, val_split):
  m = cfg.model
  model = models.MLP(widths=tuple(m.widths), num_classes=m.num_classes, activation=m.activation,
                     norm="none", drop_rate=case.drop_rate,
                     hidden_init=_initializer(case.hidden_init, case.value),
                     output_init=_initializer(case.output_init, case.value))
  steps = len(dataset.train_y) // cfg.train.batch_size
  tx = optim.make_optimizer(cfg.optim, total_steps=steps * cfg.train.num_epochs)
  state = train.create_train_state(model, tx, jax.random.PRNGKey(cfg.seed),
                                   dataset.train_x.shape[1:])
  train_epoch = train.make_train_epoch(model, tx, skip_nonfinite=True)
  evaluate = train.make_evaluate(model, cfg.train.eval_batch_size)
  images, labels = jnp.asarray(dataset.train_x), jnp.asarray(dataset.train_y)
  history = [{"epoch": 0, "symmetry": diagnostics.unit_symmetry(jax.device_get(state.params))}]
  t0 = time.time()
  for epoch in range(1, cfg.train.num_epochs + 1):
    idx = data_lib.batch_indices(cfg.seed, epoch, len(dataset.train_y), cfg.train.batch_size)
    state, metrics = train_epoch(state, images, labels, jnp.asarray(idx))
    metrics = jax.device_get(metrics)
    val = evaluate(state.params, state.batch_stats, val_split)
    history.append({"epoch": epoch, "train/loss": float(np.mean(metrics["loss"])),
                    "val/accuracy": val["accuracy"],
                    "symmetry": diagnostics.unit_symmetry(jax.device_get(state.params))})
  test = evaluate(state.params, state.batch_stats, test_split)
  # Dead units explain an accuracy at the majority-class rate: a layer whose units are all zero
  # for every input passes no signal and no gradient.
  acts = diagnostics.activation_stats(
      model, {"params": state.params, "batch_stats": state.batch_stats},
      jnp.asarray(dataset.test_x[:diagnostics.STATS_BATCH_SIZE]), bins=0)
  return {"case": case.to_dict(), "history": history, "test/accuracy": test["accuracy"],
          "test/loss": test["loss"], "final": history[-1]["symmetry"],
          "dead_fraction": {layer: s["act"]["dead_fraction"] for layer, s in acts.items()},
          "train_time_s": time.time() - t0}


def _table(results, hidden):
  head = ("| case | hidden init | head init | dropout | "
          + " | ".join(f"{h} spread | {h} distinct units" for h in hidden)
          + " | dead units " + " / ".join(hidden) + " | test accuracy |")
  lines = [head, "|---|---|---|---:|" + "---:|---:|" * len(hidden) + "---:|---:|"]
  for name, r in results.items():
    c = r["case"]
    inits = [c["hidden_init"] + (f" {c['value']:g}" if c["hidden_init"] == "constant" else ""),
             c["output_init"] + (f" {c['value']:g}" if c["output_init"] == "constant" else "")]
    cells = []
    for h in hidden:
      s = r["final"][h]
      cells += [f"{s['spread']:.3g}", f"{s['distinct_units']} / {s['num_units']}"]
    dead = " / ".join(f"{100 * r['dead_fraction'][h]:.0f}%" for h in hidden)
    lines.append(f"| {name} | {inits[0]} | {inits[1]} | {c['drop_rate']:g} | " + " | ".join(cells)
                 + f" | {dead} | {100 * r['test/accuracy']:.2f}% |")
  return "\n".join(lines) + "\n"


def main(argv):
  workdir, command = cli.start(argv, "experiments.zero_init", _WORKDIR.value)
  cfg = _CONFIG.value
  names = _select(cfg)
  t0 = time.time()
  dataset = data_lib.load_dataset(cfg.data)
  bs = cfg.train.eval_batch_size
  test_split = train.put_split(dataset.test_x, dataset.test_y, bs)
  val_split = train.put_split(dataset.val_x, dataset.val_y, bs)
  majority = float(np.bincount(dataset.test_y).max() / len(dataset.test_y))
  chance = 1.0 / dataset.num_classes
  results = {}
  for name in names:
    results[name] = _run_case(cfg, cfg.cases[name], dataset, test_split, val_split)
    r = results[name]
    spreads = ", ".join(f"{h} {s['spread']:.3g} ({s['distinct_units']}/{s['num_units']} distinct)"
                        for h, s in r["final"].items())
    print(f"{name}: test accuracy {100 * r['test/accuracy']:.2f}%; spread {spreads} "
          f"({r['train_time_s']:.0f} s)", flush=True)
  wall = time.time() - t0

  hidden = [h for h in next(iter(results.values()))["final"] if h.startswith("dense_")]
  plots.plot_contributions(
      names, [100 * (results[n]["test/accuracy"] - chance) for n in names], None,
      workdir / "accuracy.png",
      title=f"Test accuracy above chance ({100 * chance:.0f}%), {cfg.train.num_epochs} epoch(s)",
      ylabel=f"accuracy - chance (pp); majority class: {100 * (majority - chance):+.2f}")
  epochs = list(range(cfg.train.num_epochs + 1))
  figures = ["accuracy.png"]
  for h in hidden:
    plots.plot_lines(
        epochs, {n: [e["symmetry"][h]["spread"] for e in results[n]["history"]] for n in names},
        workdir / f"spread_{h}.png", xlabel="epoch (0 = initialization)",
        ylabel="max |w_i - w_j| over pairs of units",
        title=f"{h}: largest difference between two units' incoming weights")
    figures.append(f"spread_{h}.png")

  out = {"dataset": dataset.info(), "chance_accuracy": chance,
         "majority_class_accuracy": majority, "cases": results}
  md = [f"# Zero and constant initialization\n\nCommand: `{command}` ({wall:.0f} s)\n",
        f"{'-'.join(str(w) for w in (784, *cfg.model.widths, cfg.model.num_classes))} "
        f"{cfg.model.activation} MLP, {cfg.optim.name} lr {cfg.optim.learning_rate:g}, batch "
        f"{cfg.train.batch_size}, {cfg.train.num_epochs} epoch(s), seed {cfg.seed}. Spread = "
        "max over pairs of units of max |w_i - w_j| over their incoming weights and bias "
        "(`diagnostics.unit_spread`); distinct units = number of different incoming weight "
        "vectors; dead units = share of units that are zero for all of the first "
        f"{diagnostics.STATS_BATCH_SIZE} test images at the end. Chance = {100 * chance:.0f}%; always predicting the most frequent test class = "
        f"{100 * majority:.2f}%.\n",
        _table(results, hidden), "Figures: " + ", ".join(figures) + "\n"]
  cli.finish(workdir, command, cfg, wall, out, md, figures)


if __name__ == "__main__":
  app.run(main)
