"""Zero / constant initialization and the symmetry of hidden units: python -m experiments.zero_init ...

For every case of `rows.CASES` (initializers of the hidden layers and the head, dropout), trains the
MLP with `loop.fit` in <workdir>/runs/<case> (a finished run is reused) and records, through the
`Symmetry` hook, `analysis.symmetry.unit_symmetry` of every layer at initialization and after each
epoch, next to the validation accuracy; at the end the test accuracy against chance and against
always predicting the most frequent test class, and the share of dead units. Every run trains its
whole budget (early stopping disabled in the config), so the last state is the one tested. Writes
results.json, results.md, accuracy.png and spread_<layer>.png into the workdir.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments.zero_init.rows import CASES
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, plots, run_files
from ml_practical.analysis.activations import STATS_BATCH_SIZE, activation_stats
from ml_practical.analysis.symmetry import unit_symmetry
from ml_practical.config import Section

INIT_FILE = "symmetry_init.json"


@dataclasses.dataclass(frozen=True)
class ZeroInitStudy(Section):
    """The study's own fields.

    Attributes:
      only: comma-separated case names (`rows.CASES`), run in this order; "" = every case.
      constant: the value of the "constant" initializer in the cases.
    """

    section: ClassVar[str] = ""
    only: str
    constant: float

    def check(self):
        for name in self.cases():
            if name not in CASES:
                raise config_lib.ConfigError(f"only: unknown case {name!r}; expected some of "
                                             f"{list(CASES)}")

    def cases(self) -> list[str]:
        chosen = [s.strip() for s in self.only.split(",") if s.strip()]
        return chosen or list(CASES)


class Symmetry(loop.Hook):
    """`unit_symmetry` of every layer: at init (<run>/symmetry_init.json) and after each epoch
    (in the metrics record, as "symmetry/<layer>/<statistic>")."""

    metric_prefixes = ("symmetry/",)  # so early_stopping.monitor may watch them

    def init_state(self, exp, state, runs):
        runs[0].files.write_json(INIT_FILE, unit_symmetry(jax.device_get(state.params)))
        return state

    def metrics(self, event):
        sym = unit_symmetry(jax.device_get(event.state.params))
        event.record.update(run_files.flatten({"symmetry": sym}, sep="/"))


def case_config(cfg: config_lib.Config, name: str) -> config_lib.Config:
    """The training config of one case: the study config with the case's overrides."""
    overrides = {k: (f"constant({cfg.study.constant!r})" if v == "constant" else v)
                 for k, v in CASES[name].items()}
    return config_lib.override(cfg, overrides, what=f"case {name!r}")


def _history(result: loop.FitResult) -> list[dict]:
    init = run_files.RunFiles(result.workdir, tensorboard=False).read_json(INIT_FILE)
    history = [{"epoch": 0, "symmetry": init}]
    for r in result.history:
        sym: dict = {}
        for key, value in r.items():
            if key.startswith("symmetry/"):
                _, layer, stat = key.split("/")
                sym.setdefault(layer, {})[stat] = value
        history.append({"epoch": r["epoch"], "train/loss": r["train/loss"],
                        "val/accuracy": r["val/accuracy"], "symmetry": sym})
    return history


def run_case(cfg: config_lib.Config, name: str, workdir, dataset) -> dict:
    case_cfg = case_config(cfg, name)
    t0 = time.time()
    result = loop.fit(case_cfg, workdir / "runs" / name, dataset=dataset, hooks=[Symmetry()])
    history = _history(result)
    # Dead units explain an accuracy at the majority-class rate: a layer whose units are all zero
    # for every input passes no signal and no gradient.
    acts = activation_stats(
        case_cfg.model, {"params": result.state.params, "batch_stats": result.state.batch_stats},
        jnp.asarray(dataset.test_x[:STATS_BATCH_SIZE]), bins=0)
    return {"case": dict(CASES[name]), "model": config_lib.section_dict(case_cfg.model),
            "history": history, "test/accuracy": result.summary["test/accuracy"],
            "test/loss": result.summary["test/loss"], "final": history[-1]["symmetry"],
            "dead_fraction": {layer: s["act"]["dead_fraction"] for layer, s in acts.items()},
            "train_time_s": time.time() - t0,
            "description": result.summary["model"]}


def _table(results, hidden):
    head = ("| case | hidden init | head init | dropout | "
            + " | ".join(f"{h} spread | {h} distinct units" for h in hidden)
            + " | dead units " + " / ".join(hidden) + " | test accuracy |")
    lines = [head, "|---|---|---|---:|" + "---:|---:|" * len(hidden) + "---:|---:|"]
    for name, r in results.items():
        m = r["model"]
        cells = []
        for h in hidden:
            s = r["final"][h]
            cells += [f"{s['spread']:.3g}", f"{s['distinct_units']} / {s['num_units']}"]
        dead = " / ".join(f"{100 * r['dead_fraction'][h]:.0f}%" for h in hidden)
        lines.append(f"| {name} | {m['hidden_init']} | {m['output_init']} | {m['drop_rate']:g} | "
                     + " | ".join(cells) + f" | {dead} | {100 * r['test/accuracy']:.2f}% |")
    return "\n".join(lines) + "\n"


def main(argv):
    run = cli.start(argv, "experiments.zero_init", study=ZeroInitStudy)
    cfg, workdir = run.cfg, run.workdir
    names = cfg.study.cases()
    for name in names:
        case_config(cfg, name)  # every case's config is checked before anything runs
    t0 = time.time()
    dataset = data_lib.load_dataset(cfg.data)
    majority = float(np.bincount(dataset.test_y).max() / len(dataset.test_y))
    chance = 1.0 / dataset.num_classes
    results = {}
    for name in names:
        results[name] = run_case(cfg, name, workdir, dataset)
        r = results[name]
        spreads = ", ".join(f"{h} {s['spread']:.3g} ({s['distinct_units']}/{s['num_units']} "
                            "distinct)" for h, s in r["final"].items())
        print(f"{name}: test accuracy {100 * r['test/accuracy']:.2f}%; spread {spreads} "
              f"({r['train_time_s']:.0f} s)", flush=True)
    wall = time.time() - t0

    hidden = [h for h in next(iter(results.values()))["dead_fraction"]]
    plots.plot_contributions(
        names, [100 * (results[n]["test/accuracy"] - chance) for n in names], None,
        workdir / "accuracy.png",
        title=f"Test accuracy above chance ({100 * chance:.0f}%), {cfg.train.num_epochs} epoch(s)",
        ylabel=f"accuracy - chance (pp); majority class: {100 * (majority - chance):+.2f}")
    epochs = list(range(cfg.train.num_epochs + 1))
    figures = ["accuracy.png"]
    for h in hidden:
        plots.plot_lines(
            epochs, {n: [e["symmetry"][h]["spread"] for e in results[n]["history"]]
                     for n in names},
            workdir / f"spread_{h}.png", xlabel="epoch (0 = initialization)",
            ylabel="max |w_i - w_j| over pairs of units",
            title=f"{h}: largest difference between two units' incoming weights")
        figures.append(f"spread_{h}.png")

    out = {"dataset": dataset.info(), "chance_accuracy": chance,
           "majority_class_accuracy": majority, "cases": results}
    description = next(iter(results.values()))["description"]
    md = [f"# Zero and constant initialization\n\nCommand: `{run.command}` ({wall:.0f} s)\n",
          f"{description}; {cfg.optim.name} lr {cfg.optim.learning_rate:g}, batch "
          f"{cfg.train.batch_size}, {cfg.train.num_epochs} epoch(s), seed {cfg.seed}. Spread = "
          "max over pairs of units of max |w_i - w_j| over their incoming weights and bias "
          "(`analysis.symmetry.unit_spread`); distinct units = number of different incoming "
          "weight vectors; dead units = share of units that are zero for all of the first "
          f"{STATS_BATCH_SIZE} test images at the end. Chance = {100 * chance:.0f}%; always "
          f"predicting the most frequent test class = {100 * majority:.2f}%.\n",
          _table(results, hidden), "Figures: " + ", ".join(figures) + "\n"]
    cli.finish(run, wall, out, md, figures)
