"""Clipping by value vs by global norm, per step: python -m experiments.clipping --config=... --workdir=...

For each learning rate, each clip ("none", "value", "global_norm") and each seed s in `seed` ..
`seed + seeds - 1`, `loop.fit` trains the MLP in <workdir>/runs/lr<lr>_<clip>/seed_<s> with the
optimizer's clip slot recording every step (`optim.make_optimizer(record_clip=True)`,
`clip_recorder.recording_clip`: the same updates) and `loop.StepLog` keeping the records; the study
reports how often the clip fired, the cosine between the clipped and the raw gradient, per-layer
gradient norms, the share of steps the inline guard skipped because their loss or gradient was not
finite (divergence) and the final test accuracy. Every run trains its whole budget, diverged or
not (early stopping disabled, no stop on skipped steps, the inline guard skipping each non-finite
step). The clip statistics are over the applied steps (`good_steps`).

The comparisons (`COMPARISONS`, at every learning rate): each clip against no clipping, and
global norm against value, on two metrics (`METRICS`): the test accuracy, and the share of skipped
steps (how the chapter's "clipping prevents divergence" shows). Seed s gives
every arm the same init key and batch order, so the runs of one seed are paired: each comparison
is the per-seed difference, with its paired-t and bootstrap 95 % intervals, Holm's adjustment over
all the comparisons of both metrics, the smallest difference the design detects at 80 % power and
a decision (`analysis.inference.compare_family`). The report's verdicts are those decisions.

Writes results.json (per run: the clip summary, per-epoch records, dead units, test accuracy; the
per-step records of the first seed; per comparison: the seeds, the per-seed differences and the
`compare_family` entry), results.md, cosine_lr*.png and grad_norms_lr*_*.png (first seed) into
the workdir.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from experiments import cli, stats_report
from ml_practical import clip_recorder
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, plots, run_files
from ml_practical.analysis import inference
from ml_practical.analysis import seeds as seed_stats
from ml_practical.analysis.activations import STATS_BATCH_SIZE, activation_stats
from ml_practical.config import ConfigError, Section, field

# The per-step records kept (`clip_recorder.step_metrics` plus the step's loss and skip flag).
STEP_KEYS = ("loss", "skipped", "cosine", "clipped", "element_fraction", "raw_norm",
             "clipped_norm", "raw_max_abs", "raw_layer_norms")
CLIPS = ("none", "value", "global_norm")
# The report's comparisons (clip, against) at each learning rate.
COMPARISONS = (("value", "none"), ("global_norm", "none"), ("global_norm", "value"))
# The metrics compared: run-record key -> (words, markdown scale, unit). Both are fractions.
METRICS = {"test/accuracy": ("test accuracy", 100.0, "pp"),
           "skipped_fraction": ("share of steps skipped for a non-finite loss or gradient",
                                100.0, "pp")}


@dataclasses.dataclass(frozen=True)
class ClippingStudy(Section):
    """The study's own fields.

    Attributes:
      learning_rates: comma-separated; one set of three runs per learning rate.
      clip_norm_tau: optax.clip_by_global_norm(tau).
      clip_value_tau: optax.clip(tau): each gradient entry to [-tau, tau].
      plot_window: curves show means over blocks of this many steps.
      seeds: number of seeds per run: `seed`, `seed` + 1, ... (the config's `seed` is the first).
    """

    section: ClassVar[str] = ""
    learning_rates: str
    clip_norm_tau: float = field(gt=0)
    clip_value_tau: float = field(gt=0)
    plot_window: int = field(ge=1)
    seeds: int = field(ge=1)

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


def seed_list(cfg: config_lib.Config) -> list[int]:
    """The study's seeds: `seed` .. `seed + seeds - 1`."""
    return list(range(cfg.seed, cfg.seed + cfg.study.seeds))


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


def run_config(cfg, lr, kind, tau, seed) -> config_lib.Config:
    """The `loop.fit` config of one run: learning rate, clip and threshold, seed."""
    return config_lib.override(cfg, {"optim.learning_rate": lr, "optim.clip": kind,
                                     "optim.clip_value": tau, "seed": int(seed)},
                               what=f"lr {lr:g} clip {kind}")


def good_steps(steps: dict) -> dict:
    """The per-step records of the steps the inline guard applied. On a skipped step (non-finite
    loss or gradient) the optimizer, hence the clip slot, does not run, and its record repeats the
    last applied step's: those repeats are not measurements."""
    keep = np.asarray(steps["skipped"]) == 0
    return {k: ({n: np.asarray(a)[keep] for n, a in v.items()} if isinstance(v, dict)
                else np.asarray(v)[keep]) for k, v in steps.items()}


def _masked(values, skipped):
    """Per-step values with the skipped steps as NaN (gaps in a figure)."""
    return np.where(np.asarray(skipped) > 0, np.nan, np.asarray(values, np.float64))


def _run(cfg, dataset, lr, kind, tau, seed, workdir, *, keep_steps: bool):
    run_cfg = run_config(cfg, lr, kind, tau, seed)
    t0 = time.time()
    result = loop.fit(run_cfg, loop.seed_dir(workdir / "runs" / f"lr{lr:g}_{kind}", seed),
                      dataset=dataset, hooks=[ClipRecords(), loop.StepLog(keys=STEP_KEYS)],
                      record_clip=True)
    steps, by_epoch = _steps(run_files.RunFiles(result.workdir, tensorboard=False))
    epochs = [{"epoch": r["epoch"], "train/loss": float(np.mean(by_epoch[r["epoch"]]["loss"])),
               "val/accuracy": r["val/accuracy"],
               "skipped_steps": int(by_epoch[r["epoch"]]["skipped"].sum())}
              for r in result.history]
    # A run that ends at the majority-class accuracy without NaNs has usually lost its ReLUs.
    acts = activation_stats(
        run_cfg.model, {"params": result.state.params, "batch_stats": result.state.batch_stats},
        jnp.asarray(dataset.test_x[:STATS_BATCH_SIZE]), bins=0)
    skipped = np.asarray(steps["skipped"]) > 0
    summary = clip_recorder.summarize_records(good_steps(steps), norm_tau=cfg.study.clip_norm_tau,
                                              value_tau=cfg.study.clip_value_tau)
    summary["skipped_steps"] = int(skipped.sum())  # summary["steps"] counts the applied ones
    record = {"lr": lr, "clip": kind, "tau": tau, "seed": seed, "summary": summary,
              "epochs": epochs, "test/accuracy": result.summary["test/accuracy"],
              "test/loss": result.summary["test/loss"], "steps_run": int(skipped.size),
              "skipped_fraction": float(skipped.mean()),
              "dead_fraction": {layer: a["act"]["dead_fraction"] for layer, a in acts.items()},
              "train_time_s": time.time() - t0, "model": result.summary["model"]}
    if keep_steps:  # the figures' seed; every seed's steps stay in its run files
        record["steps"] = {k: (v.tolist() if not isinstance(v, dict) else
                               {n: a.tolist() for n, a in v.items()})
                           for k, v in steps.items() if k in STEP_KEYS}
    return record


def compare_runs(runs: list[dict], lrs) -> list[dict]:
    """The report's comparisons, paired by seed, with Holm over all of them (both metrics).

    Returns:
      [{"lr", "clip", "against", "metric", "seeds" (common, sorted), "differences" (clip minus
      against, per common seed), "inference": `inference.compare_family`'s entry}].
    """
    by_arm: dict = {}
    for r in runs:
        by_arm.setdefault((r["lr"], r["clip"]), []).append(r)
    out = []
    for metric in METRICS:
        for lr in lrs:
            for a, b in COMPARISONS:
                if (lr, a) not in by_arm or (lr, b) not in by_arm:
                    continue
                va, vb = ({r["seed"]: r[metric] for r in by_arm[(lr, k)]} for k in (a, b))
                out.append({"lr": lr, "clip": a, "against": b, "metric": metric,
                            "seeds": sorted(set(va) & set(vb)),
                            "differences": seed_stats.paired_difference(va, vb)[
                                "paired_differences"]})
    key = lambda c: f"{c['metric']}: lr {c['lr']:g} {c['clip']} - {c['against']}"
    family = inference.compare_family({key(c): c["differences"] for c in out})
    for c in out:
        c["inference"] = family[key(c)]
    return out


def _fmt(x, spec):
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def _finite(values, reduce=np.mean):
    """`reduce` over the finite values (a run whose every step was non-finite has NaN stats)."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(reduce(v)) if v else None


def _table(runs, norm_tau, value_tau):
    lines = ["| lr | clip | tau | steps clipped | mean cosine | min cosine | entries clipped "
             f"| raw norm median | raw norm > {norm_tau:g} | raw max abs > {value_tau:g} "
             "| dead units | seeds with skipped steps | test accuracy (mean ± sd) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    arms: dict = {}
    for r in runs:
        arms.setdefault((r["lr"], r["clip"]), []).append(r)
    for (lr, clip), rs in arms.items():
        s = lambda k, reduce=np.mean: _finite([r["summary"][k] for r in rs], reduce)
        pct = lambda x, spec: "n/a" if x is None else _fmt(100 * x, spec) + "%"
        layers = list(rs[0]["dead_fraction"])
        dead = " / ".join(_fmt(100 * np.mean([r["dead_fraction"][k] for r in rs]), ".0f") + "%"
                          for k in layers)
        diverged = sum(r["summary"]["skipped_steps"] > 0 for r in rs)
        acc = seed_stats.summarize_seeds([r["test/accuracy"] for r in rs])
        skipped = np.mean([r["skipped_fraction"] for r in rs])
        lines.append(
            f"| {lr:g} | {clip} | {rs[0]['tau']:g} "
            f"| {pct(s('clipped_fraction'), '.1f')} "
            f"| {_fmt(s('cosine_mean'), '.4f')} | {_fmt(s('cosine_min', np.min), '.4f')} "
            f"| {pct(s('element_fraction_mean'), '.3g') if clip == 'value' else '-'} "
            f"| {_fmt(s('raw_norm_median'), '.3g')} "
            f"| {pct(s('would_clip_global_norm'), '.1f')} "
            f"| {pct(s('would_clip_value'), '.1f')} "
            f"| {dead} | {diverged} / {len(rs)}"
            + (f" ({100 * skipped:.1f}% of steps)" if diverged else "")
            + f" | {100 * acc[0]:.2f} ± {100 * acc[1]:.2f}% |")
    return "\n".join(lines) + "\n"


def verdict(comp: dict) -> str:
    """One report line for a comparison: which clip is higher only when Holm's decision says so."""
    inf = comp["inference"]
    words, scale, unit = METRICS[comp["metric"]]
    a, b = comp["clip"], comp["against"]
    if inf.get("decision") == "differs":
        head = (f"lr {comp['lr']:g}: {a} has a {'higher' if inf['mean'] > 0 else 'lower'} "
                f"{words} than {b}")
    else:
        head = f"lr {comp['lr']:g}: no difference shown between {a} and {b} in {words}"
    return f"- {head}: {stats_report.formal(inf, scale=scale, unit=unit)}."


def report(run, cfg, runs, comps, *, wall, figures) -> list[str]:
    study, seeds = cfg.study, seed_list(cfg)
    md = [f"# Gradient clipping: by value vs by global norm\n\nCommand: `{run.command}` "
          f"({wall:.0f} s)\n",
          f"{runs[0]['model']}, He init, {cfg.optim.name} {cfg.optim.momentum:g}, batch "
          f"{cfg.train.batch_size}, {cfg.train.num_epochs} epochs, seeds {seeds[0]}..{seeds[-1]} "
          f"({len(seeds)}; seed s gives every run the same init key and batch order). Per step: "
          "cosine between the clipped and the raw gradient (all parameters as one vector), "
          "whether the clip fired, and the share of gradient entries it changed. The last two "
          "'raw' columns say how often the raw gradient exceeded the other clip's threshold "
          f"(global norm {study.clip_norm_tau:g}, max |g_i| {study.clip_value_tau:g}). Dead "
          "units: share of each hidden layer's units that are zero for all of the first "
          f"{STATS_BATCH_SIZE} test images after training. Skipped steps: steps whose loss or "
          "gradient was not finite, which the inline guard did not apply (a diverged run). "
          "Medians, means and extremes are over the applied steps; each column is the mean over "
          "seeds (min cosine: the minimum).\n",
          _table(runs, study.clip_norm_tau, study.clip_value_tau)]
    if comps:
        md += ["## Paired comparisons\n",
               "Per-seed differences (clip minus the clip it is compared with, same seed and "
               "learning rate); intervals by Student's paired t and by the exact bootstrap over "
               f"seeds; p-values Holm-adjusted over all {len(comps)} comparisons of both tables; "
               "'detectable' is the smallest true difference this many seeds detect at 80 % "
               "power, from the measured sd (`analysis.inference`).\n"]
        for metric, (words, scale, unit) in METRICS.items():
            rows = [(f"lr {c['lr']:g} {c['clip']}", c["against"], c["inference"])
                    for c in comps if c["metric"] == metric]
            if rows:
                md += [f"{words[0].upper() + words[1:]}:\n",
                       stats_report.comparison_table(rows, what="clip", scale=scale, unit=unit)]
        md += ["Verdicts (Holm-adjusted paired t at level 0.05):\n",
               "\n".join(verdict(c) for c in comps) + "\n"]
    md.append(f"Figures (seed {seeds[0]}): " + ", ".join(figures) + "\n")
    return md


def main(argv):
    run = cli.start(argv, "experiments.clipping", study=ClippingStudy)
    cfg, workdir, study = run.cfg, run.workdir, run.cfg.study
    seeds, lrs = seed_list(cfg), study.lr_list()
    clips = [("none", 1.0), ("value", study.clip_value_tau), ("global_norm", study.clip_norm_tau)]
    for lr in lrs:
        for kind, tau in clips:
            run_config(cfg, lr, kind, tau, seeds[-1])  # every config is checked before any run
    t0 = time.time()
    dataset = data_lib.load_dataset(cfg.data)
    runs, figures = [], []
    w = study.plot_window
    for lr in lrs:
        first = []  # the first seed's run of each clip: the figures
        for kind, tau in clips:
            for seed in seeds:
                r = _run(cfg, dataset, lr, kind, tau, seed, workdir, keep_steps=seed == seeds[0])
                s = r["summary"]
                print(f"lr {lr:g} clip {kind} seed {seed}: clipped "
                      f"{100 * s['clipped_fraction']:.1f}% of steps, cosine mean "
                      f"{s['cosine_mean']:.4f} min {s['cosine_min']:.4f}, skipped steps "
                      f"{s['skipped_steps']}, test accuracy {100 * r['test/accuracy']:.2f}% "
                      f"({r['train_time_s']:.0f} s)", flush=True)
                runs.append(r)
                if seed == seeds[0]:
                    first.append(r)
            r = first[-1]
            skip = r["steps"]["skipped"]  # gaps: a block with a skipped step has no mean
            layer_norms = r["steps"]["raw_layer_norms"]
            n_blocks = len(plots.block_means(r["steps"]["raw_norm"], w))
            name = f"grad_norms_lr{lr:g}_{kind}.png"
            plots.plot_lines(
                [w * (i + 0.5) for i in range(n_blocks)],
                {layer: plots.block_means(_masked(v, skip), w) for layer, v in layer_norms.items()}
                | {"global (raw)": plots.block_means(_masked(r["steps"]["raw_norm"], skip), w)},
                workdir / name, xlabel="step", ylabel="raw gradient L2 norm",
                title=f"Per-layer gradient norms, lr {lr:g}, clip {kind}"
                      + ("" if kind == "none" else f" (tau {tau:g})")
                      + f"; means of {w} steps, seed {seeds[0]}",
                logy=True)
            figures.append(name)
        name = f"cosine_lr{lr:g}.png"
        x = [w * (i + 0.5) for i in range(len(plots.block_means(first[0]["steps"]["cosine"], w)))]
        plots.plot_lines(
            x, {f"{r['clip']}" + ("" if r["clip"] == "none" else f" (tau {r['tau']:g})"):
                plots.block_means(_masked(r["steps"]["cosine"], r["steps"]["skipped"]), w)
                for r in first},
            workdir / name, xlabel="step", ylabel="cos(clipped gradient, raw gradient)",
            title=f"Direction kept by clipping, lr {lr:g}; means of {w} steps, seed {seeds[0]}")
        figures.append(name)
    comps = compare_runs(runs, lrs)
    wall = time.time() - t0
    md = report(run, cfg, runs, comps, wall=wall, figures=figures)
    cli.finish(run, wall, {"dataset": dataset.info(), "seeds": seeds, "runs": runs,
                           "comparisons": comps}, md, figures)
