"""Xavier vs He vs LSUV on a deep plain MLP: python -m experiments.lsuv --config=experiments/configs/lsuv.py --workdir=...

For each activation, initialization and seed, `loop.fit` trains the run in
<workdir>/runs/<activation>/<init>/seed_<s> with the `AtInit` hook, which, before the first step,
replaces the "lsuv" row's params with `lsuv.lsuv`'s (fitted on a seeded batch of training images,
model in eval mode) and records every layer's output variance on held-out validation images
(`lsuv.layer_output_variances`) and the validation loss at init in <run>/init.json;
`loop.StepLog` keeps the per-step training loss. Every run trains its whole budget (early stopping
disabled in the config) and is tested on the test set with its last weights.

Seeds and comparisons (the statistics of the report):
  * Seed s is shared by every row of every activation: the same batch order (`seed = s`), the same
    init key (the Xavier and He rows scale the same N(0, 1) draws; LSUV re-draws every kernel
    orthogonally from fold_in(PRNGKey(s), LSUV_TAG)) and the same LSUV fitting batch. Differences
    are therefore paired by seed.
  * Per activation, LSUV against each other row (without an "lsuv" row: every row against the
    first), on two measures: (1) test accuracy after the budget; (2) the distance of the
    initialized network from unit variance, max over layers of |log10 Var(layer output)| on the
    validation batch (decades; 0 = every layer at variance 1, LSUV's target). Each comparison is
    the per-seed paired difference LSUV minus the other row.
  * The family is every comparison of the study (both measures, every activation): Holm's
    adjustment is over all of them (`inference.compare_family`). Each verdict sentence of
    results.md is a comparison's paired-t interval and Holm decision (`stats_report.formal`); the
    chapter's "matches or beats Xavier and He" is judged per activation from those decisions, with
    "matches" meaning the 95 % interval lies within +-MATCH_MARGIN (equivalence, `decide`).

Writes into the workdir: results.json (everything, including LSUV's per-layer report, the
per-step losses, the per-seed values of every comparison and its inference), results.md (tables
and verdicts), variance.png (per-layer variance at init, log scale) and loss.png (training loss
along the steps). Prints the tables.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax
import numpy as np

from experiments import cli, stats_report
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import initializers, loop, lsuv, models, plots, run_files
from ml_practical.analysis import inference
from ml_practical.config import ConfigError, Section, field

CURVE_POINTS_PER_EPOCH = 20  # the per-step loss is averaged over chunks for the figure
INIT_FILE = "init.json"
# The LSUV key: fold_in(PRNGKey(seed), LSUV_TAG); 12.1.6 is the chapter's section, any fixed tag.
LSUV_TAG = 12_016
# "LSUV matches X": the 95 % interval of the accuracy difference lies within +-0.3 pp, the
# tolerance the claims ledger set for this comparison (INIT-18) before it was run.
MATCH_MARGIN = 0.003


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
      activations: comma-separated hidden activations (`models.ACTIVATIONS`); every row runs
        with each.
      seeds: runs seeds 0 .. seeds - 1 (paired across rows and activations).
      measure_batch_size: validation images on which the per-layer variances are taken.
      lsuv: LSUV's options.
    """

    section: ClassVar[str] = ""
    inits: str
    activations: str
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
        acts = self.activation_list()
        bad = [a for a in acts if a not in models.ACTIVATIONS]
        if not acts or bad:
            raise ConfigError(f"activations: unknown {bad or self.activations!r}; expected a "
                              f"comma-separated subset of {sorted(models.ACTIVATIONS)}")

    def init_list(self) -> list[str]:
        return [s.strip() for s in self.inits.split(",") if s.strip()]

    def activation_list(self) -> list[str]:
        return [s.strip() for s in self.activations.split(",") if s.strip()]


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


def run_config(cfg: config_lib.Config, init: str, seed: int,
               activation: str | None = None) -> config_lib.Config:
    """The training config of one row: the study's base fields, this seed, activation and init."""
    overrides = {"seed": seed}
    if activation is not None:
        overrides["model.activation"] = activation
    if init != "lsuv":  # the lsuv row keeps the base init; LSUV re-draws every kernel anyway
        overrides["model.hidden_init"] = init
    return config_lib.override(cfg, overrides, what=f"row {init!r}")


def unit_variance_distance(variances) -> float:
    """max over layers of |log10 Var|: how many decades the worst layer is from variance 1."""
    v = np.asarray(list(variances.values()), np.float64)
    with np.errstate(divide="ignore"):
        return float(np.max(np.abs(np.log10(v)))) if v.size else float("nan")


def run_one(cfg, init, seed, workdir, dataset, lsuv_x, measure_x, activation):
    hooks = [AtInit(init, seed, cfg.study.lsuv, lsuv_x, measure_x),
             loop.StepLog(keys=("loss",)), EpochLine(f"{activation:>8} {init:>14} seed {seed}")]
    result = loop.fit(run_config(cfg, init, seed, activation),
                      workdir / "runs" / activation / init / f"seed_{seed}",
                      dataset=dataset, hooks=hooks)
    files = run_files.RunFiles(result.workdir, tensorboard=False)
    at_init = files.read_json(INIT_FILE)
    steps = files.read_steps()
    step_losses = [float(v) for epoch in sorted(steps) for v in steps[epoch]["loss"]]
    steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
    return {"activation": activation, "init": init, "seed": seed, **at_init,
            "unit_variance_distance": unit_variance_distance(at_init["variance_at_init"]),
            "test_accuracy": result.summary["test/accuracy"],
            "test_loss": result.summary["test/loss"], "history": result.history,
            "step_loss": step_losses, "steps_per_epoch": steps_per_epoch,
            "model": result.summary["model"]}


def _mean_std(values):
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return float(values.mean()), std


def _fmt(mean, std, digits=4):
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _arm(activation, init):
    return f"{activation}/{init}"


def summarize(runs, inits, num_epochs, activations=None):
    """Per (activation, init) means over seeds of the numbers the tables show, keyed
    "<activation>/<init>"."""
    out = {}
    for act in activations or sorted({r["activation"] for r in runs}):
        for init in inits:
            rs = [r for r in runs if r["init"] == init and r["activation"] == act]
            layers = list(rs[0]["variance_at_init"])
            row = {"variance_at_init": {l: _mean_std([r["variance_at_init"][l] for r in rs])[0]
                                        for l in layers},
                   "initial_val_loss": _mean_std([r["initial_val_loss"] for r in rs]),
                   "test_accuracy": _mean_std([r["test_accuracy"] for r in rs]),
                   "unit_variance_distance": _mean_std([r["unit_variance_distance"] for r in rs])}
            for epoch in sorted({1, num_epochs}):
                for key in ("train/loss", "val/loss", "val/accuracy"):
                    row[f"epoch{epoch}/{key}"] = _mean_std([r["history"][epoch - 1][key]
                                                            for r in rs])
            out[_arm(act, init)] = row
    return out


MEASURES = {  # measure -> (per-run key, what the tables call it, scale, digits, unit)
    "test_accuracy": ("test_accuracy", "test accuracy", 100.0, 2, "pp"),
    "unit_variance": ("unit_variance_distance", "max over layers of |log10 Var| at init", 1.0, 3,
                      "decades"),
}


def comparisons(runs, inits, activations):
    """The study's family: {name: {"activation", "measure", "arm", "against", "seeds",
    "arm_values", "against_values"}}, values per common seed (see the module docstring)."""
    reference = "lsuv" if "lsuv" in inits else inits[0]
    out = {}
    for act in activations:
        by = {(r["init"], r["seed"]): r for r in runs if r["activation"] == act}
        for other in (i for i in inits if i != reference):
            seeds = sorted(s for (i, s) in by if i == reference and (other, s) in by)
            for measure, (key, *_rest) in MEASURES.items():
                a = [by[reference, s][key] for s in seeds]
                b = [by[other, s][key] for s in seeds]
                if not np.all(np.isfinite(np.subtract(a, b))):
                    continue  # a vanished variance: no distance to compare
                out[f"{act}/{measure}/{reference}-{other}"] = {
                    "activation": act, "measure": measure, "arm": reference, "against": other,
                    "seeds": seeds, "arm_values": a, "against_values": b}
    for c in out.values():
        c["differences"] = np.subtract(c["arm_values"], c["against_values"]).tolist()
    family = inference.compare_family({k: c["differences"] for k, c in out.items()})
    for k, inf in family.items():
        out[k]["inference"] = inf
    return out


def format_comparisons(comps, seeds):
    lines = [f"Paired comparisons over {seeds} seed(s): Δ = {{arm}} − {{against}} on the same "
             f"seed; Holm over all {len(comps)} comparisons of the study.", ""]
    for measure, (_, what, scale, digits, unit) in MEASURES.items():
        rows = [(f"{c['arm']}, {c['activation']}", c["against"], c["inference"])
                for c in comps.values() if c["measure"] == measure]
        if rows:
            lines += [f"## {what[0].upper()}{what[1:]}", "",
                      stats_report.comparison_table(rows, scale=scale, digits=digits, unit=unit)]
    lines += ["## Verdicts", ""]
    for c in comps.values():
        _, what, scale, digits, unit = MEASURES[c["measure"]]
        inf = c["inference"]
        mean = float(inf["mean"])
        if inf["decision"] == "differs" and c["measure"] == "test_accuracy":
            verdict = f"{c['arm']} is {'better' if mean > 0 else 'worse'} than {c['against']}"
        elif inf["decision"] == "differs":
            verdict = (f"{c['arm']} starts {'closer to' if mean < 0 else 'further from'} unit "
                       f"variance than {c['against']}")
        elif (c["measure"] == "test_accuracy"
              and inference.decide(inf, margin=MATCH_MARGIN) == "equivalent"):
            verdict = (f"{c['arm']} matches {c['against']} within ±{100 * MATCH_MARGIN:.1f} pp "
                       "(equivalence)")
        elif float(inf["t"]["p"]) <= float(inf["alpha"]):
            verdict = ("the paired-t interval excludes 0, but the difference does not survive "
                       "Holm's adjustment over the family")
        else:
            verdict = (f"these seeds cannot tell {c['arm']} from {c['against']} (they detect "
                       f"{stats_report.number(inf['mde'], scale, digits)} {unit} at 80 % power)")
        lines.append(f"- {c['activation']}, {what}: {c['arm']} − {c['against']}: "
                     f"{stats_report.formal(inf, scale, digits, unit)}; {verdict}.")
    claims = chapter_claim(comps)
    if claims:
        lines += ["", "## The chapter's claim", "",
                  "LSUV \"matches or beats both Xavier and He\" (test "
                  f"accuracy; matches = 95 % CI within ±{100 * MATCH_MARGIN:.1f} pp):", ""]
        lines += [f"- {act}: {verdict}" for act, verdict in claims.items()]
    return "\n".join(lines) + "\n"


def chapter_claim(comps):
    """Per activation: whether LSUV's accuracy comparisons support the chapter's "matches or
    beats": every one beats (Holm) or is equivalent within MATCH_MARGIN; contradicted if one is
    worse (Holm); otherwise not decided."""
    out = {}
    for act in dict.fromkeys(c["activation"] for c in comps.values()):
        cs = [c for c in comps.values() if c["activation"] == act and c["arm"] == "lsuv"
              and c["measure"] == "test_accuracy"]
        if not cs:
            continue
        worse = [c["against"] for c in cs if c["inference"]["decision"] == "differs"
                 and float(c["inference"]["mean"]) < 0]
        ok = [c for c in cs if (c["inference"]["decision"] == "differs"
                                and float(c["inference"]["mean"]) > 0)
              or inference.decide(c["inference"], margin=MATCH_MARGIN) == "equivalent"]
        if worse:
            out[act] = f"contradicted: LSUV is worse than {', '.join(worse)}."
        elif len(ok) == len(cs):
            out[act] = "supported: LSUV beats or matches every other row."
        else:
            out[act] = "not decided by these seeds (neither a loss nor a match/win for every row)."
    return out


def format_tables(summary, runs, inits, num_epochs, seeds):
    arms = list(summary)
    layers = list(summary[arms[0]]["variance_at_init"])
    lines = [f"Per-layer output variance at init (Dense output, before the activation; validation "
             f"batch; mean over {seeds} seed(s))", "",
             "| layer | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for l in layers:
        lines.append(f"| {l} | " + " | ".join(f"{summary[a]['variance_at_init'][l]:.3g}"
                                              for a in arms) + " |")
    epochs = sorted({1, num_epochs})
    head = ["activation/init", "val loss at init"] + [f"train loss ep{e}" for e in epochs] + [
        f"val loss ep{e}" for e in epochs] + [f"val acc ep{e}" for e in epochs] + [
        "test acc", "max abs log10 var"]
    lines += ["", f"Training (train loss: mean over the epoch's steps; mean +- sd over {seeds} "
              "seed(s), descriptive: the comparisons above carry the inference)", "",
              "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for a in arms:
        s = summary[a]
        cells = [a, _fmt(*s["initial_val_loss"])]
        cells += [_fmt(*s[f"epoch{e}/train/loss"]) for e in epochs]
        cells += [_fmt(*s[f"epoch{e}/val/loss"]) for e in epochs]
        cells += [_fmt(*s[f"epoch{e}/val/accuracy"]) for e in epochs]
        cells += [_fmt(*s["test_accuracy"]), _fmt(*s["unit_variance_distance"], digits=3)]
        lines.append("| " + " | ".join(cells) + " |")
    for r in [r for r in runs if r["lsuv_report"] is not None and r["seed"] == runs[0]["seed"]]:
        lines += ["", f"LSUV report ({r['activation']}, seed {r['seed']}; variance on its fitting "
                  f"batch; {r['lsuv_time_s']:.1f} s)", "",
                  "| layer | var before | var after | iterations | scale | converged |",
                  "|---|---:|---:|---:|---:|---|"]
        for row in r["lsuv_report"]:
            lines.append(f"| {row['layer']} | {row['var_before']:.4g} | {row['var_after']:.4g} | "
                         f"{row['iterations']} | {row['scale']:.4g} | {row['converged']} |")
    return "\n".join(lines)


def main(argv):
    run = cli.start(argv, "experiments.lsuv", study=LSUVStudy)
    cfg, workdir, study = run.cfg, run.workdir, run.cfg.study
    inits, activations = study.init_list(), study.activation_list()
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
        for act in activations:
            for init in inits:
                runs.append(run_one(cfg, init, seed, workdir, dataset, lsuv_x, measure_x, act))

    num_epochs = cfg.train.num_epochs
    summary = summarize(runs, inits, num_epochs, activations)
    comps = comparisons(runs, inits, activations)
    tables = format_tables(summary, runs, inits, num_epochs, study.seeds)
    stats = format_comparisons(comps, study.seeds)
    wall = time.time() - t_start

    arms = list(summary)
    layers = list(summary[arms[0]]["variance_at_init"])
    x = list(range(1, len(layers) + 1))
    plots.plot_lines(x, {a: [summary[a]["variance_at_init"][l] for l in layers] for a in arms},
                     workdir / "variance.png",
                     xlabel=f"layer (1-{len(layers) - 1}: hidden Dense, {len(layers)}: head)",
                     ylabel="output variance at init", logy=True,
                     title=f"Per-layer output variance at init, {runs[0]['model']}, "
                           f"{dataset.name}")
    curves = {}
    chunk = max(1, runs[0]["steps_per_epoch"] // CURVE_POINTS_PER_EPOCH)
    for act in activations:
        for init in inits:
            mean_loss = np.mean([r["step_loss"] for r in runs
                                 if r["init"] == init and r["activation"] == act], axis=0)
            curves[_arm(act, init)] = plots.block_means(
                mean_loss[:len(mean_loss) // chunk * chunk], chunk)
    steps = (np.arange(len(next(iter(curves.values())))) + 0.5) * chunk / runs[0]["steps_per_epoch"]
    plots.plot_lines(steps, curves, workdir / "loss.png", xlabel="epoch",
                     ylabel=f"training loss (mean over {chunk} steps)", logy=True,
                     title="Training loss, SGD + momentum" if cfg.optim.name == "momentum"
                           else f"Training loss, {cfg.optim.name}")
    results = {"dataset": dataset.info(), "seeds": list(range(study.seeds)),
               "activations": activations, "summary": summary, "comparisons": comps,
               "runs": runs}
    md = [f"Command: `{run.command}`\n\nWall time: {wall:.0f} s\n\n{stats}\n{tables}\n"]
    cli.finish(run, wall, results, md, ["variance.png", "loss.png"])
