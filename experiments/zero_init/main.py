"""Zero / constant initialization and the symmetry of hidden units: python -m experiments.zero_init ...

For every case of `rows.CASES` (initializers of the hidden layers and the head, dropout) and every
seed s in `seed` .. `seed + seeds - 1`, trains the MLP with `loop.fit` in
<workdir>/runs/<case>/seed_<s> (a finished run is reused) and records, through the `Symmetry`
hook, `analysis.symmetry.unit_symmetry` of every layer at initialization and after each epoch,
next to the validation accuracy; at the end the test accuracy against chance and against always
predicting the most frequent test class, and the share of dead units. Every run trains its whole
budget (early stopping disabled in the config), so the last state is the one tested.

The comparisons (`rows.COMPARISONS`, those whose two cases ran): each zero / constant case against
the random-init reference "he", and "constant_dropout" against "constant", all on test accuracy.
Seed s gives every case the same batch order and dropout keys (and "he" its init key), so the
runs of one seed are paired: each comparison is the per-seed difference, with its paired-t and
bootstrap 95 % intervals, Holm's adjustment over the comparisons, the smallest difference the
design detects at 80 % power and a decision (`analysis.inference.compare_family`). The report's
verdicts are those decisions, not a reading of means and sds.

Writes results.json (per case and seed: test accuracy, symmetry history, dead units; per
comparison: the seeds, the per-seed differences and the `compare_family` entry), results.md,
accuracy.png and spread_<layer>.png into the workdir.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, stats_report
from experiments.zero_init.rows import CASES, COMPARISONS
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, plots, run_files
from ml_practical.analysis import inference
from ml_practical.analysis import seeds as seed_stats
from ml_practical.analysis.activations import STATS_BATCH_SIZE, activation_stats
from ml_practical.analysis.symmetry import unit_symmetry
from ml_practical.config import Section, field

INIT_FILE = "symmetry_init.json"


@dataclasses.dataclass(frozen=True)
class ZeroInitStudy(Section):
    """The study's own fields.

    Attributes:
      only: comma-separated case names (`rows.CASES`), run in this order; "" = every case.
      constant: the value of the "constant" initializer in the cases.
      seeds: number of seeds per case: `seed`, `seed` + 1, ... (the config's `seed` is the first).
    """

    section: ClassVar[str] = ""
    only: str
    constant: float
    seeds: int = field(ge=1)

    def check(self):
        for name in self.cases():
            if name not in CASES:
                raise config_lib.ConfigError(f"only: unknown case {name!r}; expected some of "
                                             f"{list(CASES)}")

    def cases(self) -> list[str]:
        chosen = [s.strip() for s in self.only.split(",") if s.strip()]
        return chosen or list(CASES)


def seed_list(cfg: config_lib.Config) -> list[int]:
    """The study's seeds: `seed` .. `seed + seeds - 1`."""
    return list(range(cfg.seed, cfg.seed + cfg.study.seeds))


def comparisons(names) -> list[tuple[str, str]]:
    """`rows.COMPARISONS` whose two cases are both in `names`, in the table's order."""
    return [(a, b) for a, b in COMPARISONS if a in names and b in names]


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


def case_config(cfg: config_lib.Config, name: str, seed: int | None = None) -> config_lib.Config:
    """The training config of one case and seed: the study config with the case's overrides (and
    `seed`, when given)."""
    overrides = {k: (f"constant({cfg.study.constant!r})" if v == "constant" else v)
                 for k, v in CASES[name].items()}
    if seed is not None:
        overrides["seed"] = int(seed)
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


def run_case(cfg: config_lib.Config, name: str, seed: int, workdir, dataset) -> dict:
    """One case at one seed, in <workdir>/runs/<case>/seed_<seed>: its per-seed record."""
    case_cfg = case_config(cfg, name, seed)
    t0 = time.time()
    result = loop.fit(case_cfg, loop.seed_dir(workdir / "runs" / name, seed), dataset=dataset,
                      hooks=[Symmetry()])
    history = _history(result)
    # Dead units explain an accuracy at the majority-class rate: a layer whose units are all zero
    # for every input passes no signal and no gradient.
    acts = activation_stats(
        case_cfg.model, {"params": result.state.params, "batch_stats": result.state.batch_stats},
        jnp.asarray(dataset.test_x[:STATS_BATCH_SIZE]), bins=0)
    return {"seed": seed, "test/accuracy": result.summary["test/accuracy"],
            "test/loss": result.summary["test/loss"], "history": history,
            "final": history[-1]["symmetry"],
            "dead_fraction": {layer: s["act"]["dead_fraction"] for layer, s in acts.items()},
            "train_time_s": time.time() - t0, "description": result.summary["model"]}


def case_record(cfg: config_lib.Config, name: str, runs: list[dict]) -> dict:
    """A case over its seeds: the case, its model section, the per-seed runs, accuracy stats."""
    mean, std = seed_stats.summarize_seeds([r["test/accuracy"] for r in runs])
    return {"case": dict(CASES[name]),
            "model": config_lib.section_dict(case_config(cfg, name).model),
            "description": runs[0]["description"], "runs": runs,
            "test_accuracy": {"mean": mean, "std": std,
                              "values": [r["test/accuracy"] for r in runs]}}


def compare_cases(cases: dict, pairs) -> list[dict]:
    """The report's comparisons on test accuracy, paired by seed, with Holm over `pairs`.

    Returns:
      [{"case", "against", "metric", "seeds" (common, sorted), "differences" (case - against per
      common seed), "inference": `inference.compare_family`'s entry}].
    """
    out = []
    for a, b in pairs:
        acc = [{r["seed"]: r["test/accuracy"] for r in cases[n]["runs"]} for n in (a, b)]
        common = sorted(set(acc[0]) & set(acc[1]))
        out.append({"case": a, "against": b, "metric": "test/accuracy", "seeds": common,
                    "differences": seed_stats.paired_difference(*acc)["paired_differences"]})
    family = inference.compare_family({f"{c['case']} - {c['against']}": c["differences"]
                                       for c in out})
    for c in out:
        c["inference"] = family[f"{c['case']} - {c['against']}"]
    return out


def _distinct(values, num_units) -> str:
    lo, hi = min(values), max(values)
    return f"{lo} / {num_units}" if lo == hi else f"{lo}-{hi} / {num_units}"


def _table(results, hidden):
    head = ("| case | hidden init | head init | dropout | "
            + " | ".join(f"{h} spread | {h} distinct units" for h in hidden)
            + " | dead units " + " / ".join(hidden) + " | test accuracy (mean ± sd) |")
    lines = [head, "|---|---|---|---:|" + "---:|---:|" * len(hidden) + "---:|---:|"]
    for name, r in results.items():
        m, runs = r["model"], r["runs"]
        cells = []
        for h in hidden:
            cells += [f"{max(x['final'][h]['spread'] for x in runs):.3g}",
                      _distinct([x["final"][h]["distinct_units"] for x in runs],
                                runs[0]["final"][h]["num_units"])]
        dead = " / ".join(f"{100 * np.mean([x['dead_fraction'][h] for x in runs]):.0f}%"
                          for h in hidden)
        acc = r["test_accuracy"]
        lines.append(f"| {name} | {m['hidden_init']} | {m['output_init']} | {m['drop_rate']:g} | "
                     + " | ".join(cells) + f" | {dead} | "
                     f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}% |")
    return "\n".join(lines) + "\n"


def verdict(comp: dict) -> str:
    """One report line for a comparison: who is above whom only when Holm's decision says so."""
    inf, a, b = comp["inference"], comp["case"], comp["against"]
    if inf.get("decision") == "differs":
        head = f"{a} is {'above' if inf['mean'] > 0 else 'below'} {b} on test accuracy"
    else:
        head = f"no difference shown between {a} and {b} in test accuracy"
    return f"- {head}: {stats_report.formal(inf)}."


def _symmetry_line(name: str, r: dict, hidden) -> str:
    """Which hidden layers kept bit-identical units (spread 0) in every seed."""
    runs = r["runs"]
    spread = {h: max(x["final"][h]["spread"] for x in runs) for h in hidden}
    same = [h for h in hidden if spread[h] == 0.0]
    apart = [h for h in hidden if spread[h] != 0.0]
    where = f"in every seed ({len(runs)})"
    if not apart:
        return (f"- {name}: the units of every hidden layer stay bit-identical {where}: each "
                "layer computes one unit.")
    differ = ", ".join(f"{h} (largest spread {spread[h]:.3g})" for h in apart)
    if not same:
        return f"- {name}: the units of every hidden layer differ after training: {differ}."
    return (f"- {name}: the units of {', '.join(same)} stay bit-identical {where} (one unit per "
            f"layer); those of {differ} differ.")


def report(run, cfg, results, comps, *, chance, majority, wall, figures, hidden) -> list[str]:
    seeds = seed_list(cfg)
    description = next(iter(results.values()))["description"]
    md = [f"# Zero and constant initialization\n\nCommand: `{run.command}` ({wall:.0f} s)\n",
          f"{description}; {cfg.optim.name} lr {cfg.optim.learning_rate:g}, batch "
          f"{cfg.train.batch_size}, {cfg.train.num_epochs} epoch(s), seeds {seeds[0]}.."
          f"{seeds[-1]} ({len(seeds)}; seed s gives every case the same batch order and dropout "
          "keys). Spread = max over pairs of units of max |w_i - w_j| over their incoming weights "
          "and bias (`analysis.symmetry.unit_spread`), the largest over seeds; distinct units = "
          "number of different incoming weight vectors (range over seeds); dead units = share of "
          "units that are zero for all of the first "
          f"{STATS_BATCH_SIZE} test images at the end (mean over seeds). Chance = "
          f"{100 * chance:.0f}%; always predicting the most frequent test class = "
          f"{100 * majority:.2f}%.\n",
          _table(results, hidden)]
    if comps:
        md += ["## Paired comparisons of test accuracy\n",
               "Per-seed differences (case minus the case it is compared with, same seed); "
               "intervals by Student's paired t and by the exact bootstrap over seeds; p-values "
               f"Holm-adjusted over the {len(comps)} comparisons; 'detectable' is the smallest "
               "true difference this many seeds detect at 80 % power, from the measured sd "
               "(`analysis.inference`).\n",
               stats_report.comparison_table(
                   [(c["case"], c["against"], c["inference"]) for c in comps], what="case"),
               "Verdicts (Holm-adjusted paired t at level 0.05):\n",
               "\n".join(verdict(c) for c in comps) + "\n"]
    sym = [n for n, r in results.items() if r["model"]["hidden_init"] != "he_normal"]
    if sym:
        md += ["Symmetry (the chapter's claim, 12.1.2: units started equal stay equal):\n",
               "\n".join(_symmetry_line(n, results[n], hidden) for n in sym) + "\n"]
    md.append("Figures: " + ", ".join(figures) + "\n")
    return md


def main(argv):
    run = cli.start(argv, "experiments.zero_init", study=ZeroInitStudy)
    cfg, workdir = run.cfg, run.workdir
    names, seeds = cfg.study.cases(), seed_list(cfg)
    for name in names:
        case_config(cfg, name, seeds[-1])  # every case's config is checked before anything runs
    t0 = time.time()
    dataset = data_lib.load_dataset(cfg.data)
    majority = float(np.bincount(dataset.test_y).max() / len(dataset.test_y))
    chance = 1.0 / dataset.num_classes
    results = {}
    for name in names:
        runs = []
        for seed in seeds:
            r = run_case(cfg, name, seed, workdir, dataset)
            spreads = ", ".join(f"{h} {s['spread']:.3g} ({s['distinct_units']}/{s['num_units']} "
                                "distinct)" for h, s in r["final"].items())
            print(f"{name} seed {seed}: test accuracy {100 * r['test/accuracy']:.2f}%; spread "
                  f"{spreads} ({r['train_time_s']:.0f} s)", flush=True)
            runs.append(r)
        results[name] = case_record(cfg, name, runs)
    comps = compare_cases(results, comparisons(names))
    wall = time.time() - t0

    hidden = [h for h in next(iter(results.values()))["runs"][0]["dead_fraction"]]
    plots.plot_contributions(
        names, [100 * (results[n]["test_accuracy"]["mean"] - chance) for n in names],
        [100 * results[n]["test_accuracy"]["std"] for n in names], workdir / "accuracy.png",
        title=f"Test accuracy above chance ({100 * chance:.0f}%), {cfg.train.num_epochs} "
              f"epoch(s), mean ± sd over {len(seeds)} seed(s)",
        ylabel=f"accuracy - chance (pp); majority class: {100 * (majority - chance):+.2f}")
    epochs = list(range(cfg.train.num_epochs + 1))
    figures = ["accuracy.png"]
    for h in hidden:
        plots.plot_lines(
            epochs, {n: [max(r["history"][e]["symmetry"][h]["spread"] for r in results[n]["runs"])
                         for e in epochs] for n in names},
            workdir / f"spread_{h}.png", xlabel="epoch (0 = initialization)",
            ylabel="max |w_i - w_j| over pairs of units (largest over seeds)",
            title=f"{h}: largest difference between two units' incoming weights")
        figures.append(f"spread_{h}.png")

    out = {"dataset": dataset.info(), "seeds": seeds, "chance_accuracy": chance,
           "majority_class_accuracy": majority, "cases": results, "comparisons": comps}
    md = report(run, cfg, results, comps, chance=chance, majority=majority, wall=wall,
                figures=figures, hidden=hidden)
    cli.finish(run, wall, out, md, figures)
