"""BatchNorm and the learning rate: python -m experiments.bn_lr --config=... --workdir=...

Chapter 12.4.4 says BN "allows higher learning rates -> 10x or more vs without BN". For every
architecture of the study (`archs`: the plain CNN of the config's model section, and a CIFAR
ResNet of `resnet_depth` and `resnet_width_multiplier`), every norm ("batch", "none"), every
learning rate of the log grid (`grid.learning_rates(lr_min, lr_max, lr_per_decade)`) and every
seed s in `seed` .. `seed + seeds - 1`, trains the fixed budget of the config with plain SGD in
<workdir>/runs/<arch>/<norm>/lr<lr>/seed_<s> (`loop.fit`; with `seed_mode` "vmap", or "auto" on a
GPU/TPU, and the training set on the device, one (arch, norm, lr)'s seeds train as one vmapped
program, `loop.fit_seeds`). A run whose summary.json exists with the same config is read back,
not retrained, so a finished study regenerates its report in seconds. Every run trains its whole
budget unless the non-finite guard stops it (`train.max_consecutive_skips`), and its last state
is tested; the `InitialLoss` hook records the loss of the initial parameters on the first batch.

Seed s gives every run the same data order (and, within an architecture and norm, the same init
key), so BN and no-norm runs of a seed are paired. What is derived, per architecture and seed
(definitions in `grid`'s docstring): the largest stable rate and the largest rate reaching
`threshold` test accuracy, with and without BN, their ratio and its outcome against `factor`
(the claim's 10), and the best test accuracy over the grid (rate chosen on validation
accuracy). Statistics (`analysis.inference.compare_family`, paired over seeds): family "main",
per architecture, BN minus none in the best accuracy, in log10 of the largest rate reaching the
threshold and in log10 of the largest stable rate (Holm over the six); family "per_lr", BN minus
none in test accuracy at each rate (Holm over those). The claim's verdict is `grid.claim_verdict`
on the per-seed outcomes (the grid is discrete, so the count of seeds decides, not a t interval);
a robustness table repeats it at other thresholds from the same runs.

Writes results.json (per run: the record; per architecture: per-seed largest rates, ratios,
outcomes, the curves; the comparisons with their `compare_family` entries; the claim), results.md,
analysis.md (`report`), accuracy_vs_lr.png and train_loss_vs_lr.png into the workdir.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from experiments import cli
from experiments.ablation.main import finished_run
from experiments.bn_lr import grid, report
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, models, multiseed, run_files
from ml_practical.analysis import inference
from ml_practical.config import ConfigError, Section, field

CLAIM = {
    "id": "BN-10", "section": "12.4.4 (items 1 and 4)",
    "quote": "1. Smooths the loss landscape → allows larger learning rates → faster training ... "
             "4. Allows higher learning rates → 10x or more vs without BN",
    "ledger": "MNIST 6-layer MLP, SGD, lr grid in ×√10 steps from 1e-3 to 10, 3 epochs. Pass if "
              "the largest lr reaching ≥ 95 % test with BN is ≥ 10× the largest without",
}


@dataclasses.dataclass(frozen=True)
class BNLrStudy(Section):
    """The study's own fields; the training sections are the CNN arm's config.

    Attributes:
      seeds: seeds `seed` .. `seed` + seeds - 1 of every (arch, norm, lr).
      archs: comma-separated subset of `grid.ARCHS`, in this order.
      lr_min, lr_max: the grid's smallest and largest rates, both 10 ** (k / lr_per_decade).
      lr_per_decade: grid rates per decade (2: x sqrt(10) steps).
      threshold: X of "the largest lr reaching X test accuracy" (a fraction).
      factor: the claim's ratio ("10x or more").
      resnet_depth: the ResNet arm's depth (cifar variant: 6n + 2).
      resnet_width_multiplier: the ResNet arm's channels times this (16-32-64 at 1).
      seed_mode: "auto" (vmap on GPU/TPU), "sequential" or "vmap" (`loop.fit_seeds`; only with
        `data.placement` "device").
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    archs: str
    lr_min: float = field(gt=0)
    lr_max: float = field(gt=0)
    lr_per_decade: int = field(ge=1)
    threshold: float = field(gt=0, lt=1)
    factor: float = field(gt=1)
    resnet_depth: int = field(ge=8)
    resnet_width_multiplier: float = field(gt=0)
    seed_mode: str = field(choices=multiseed.SEED_MODES)

    def check(self):
        for name in self.arch_list():
            if name not in grid.ARCHS:
                raise ConfigError(f"archs: unknown {name!r}; expected some of {list(grid.ARCHS)}")
        if not self.arch_list():
            raise ConfigError(f"archs: {self.archs!r}; expected some of {list(grid.ARCHS)}")
        try:
            grid.exponents(self.lr_min, self.lr_max, self.lr_per_decade)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def arch_list(self) -> list[str]:
        return [s.strip() for s in self.archs.split(",") if s.strip()]

    def seed_list(self, first: int) -> list[int]:
        return list(range(first, first + self.seeds))

    def lrs(self) -> list[tuple[int, float]]:
        """(k, lr) of the grid, smallest rate first."""
        return [(k, 10 ** (k / self.lr_per_decade))
                for k in grid.exponents(self.lr_min, self.lr_max, self.lr_per_decade)]


class InitialLoss(loop.Hook):
    """Adds "train/initial_loss" to the first epoch's record: the first step's loss, i.e. the
    initial parameters' loss on the first batch (in training mode, before any update)."""

    metric_names = ("train/initial_loss",)

    def metrics(self, event):
        if event.epoch != 1:
            return
        for record, steps in zip(event.records, event.step_metrics):
            if record is not None and steps is not None:
                record["train/initial_loss"] = float(np.asarray(steps["loss"])[0])


def arch_config(cfg: config_lib.Config, arch: str) -> config_lib.Config:
    """The training config of an architecture (without the study fields): the study config for
    the CNN; for the ResNet the same data, optimizer and budget with a CIFAR ResNet of
    `resnet_depth` x `resnet_width_multiplier` (shortcut A) and the CNN's `SHARED_MODEL_FIELDS`."""
    tree = config_lib.to_dict(config_lib.override(cfg, {}, what="arch"))
    if arch == "cnn":
        if cfg.model_name != "cnn":
            raise ConfigError(f"model.name: {cfg.model_name!r}; the study's training sections "
                              "are its CNN arm, expected 'cnn'")
        return config_lib.parse(tree)
    if arch != "resnet":
        raise ValueError(f"arch: {arch!r}; expected one of {grid.ARCHS}")
    model = {"name": "resnet", "variant": "cifar", "depth": cfg.study.resnet_depth,
             "width_multiplier": cfg.study.resnet_width_multiplier, "shortcut": "A"}
    model.update({k: tree["model"][k] for k in grid.SHARED_MODEL_FIELDS})
    tree["model"] = model
    try:
        return config_lib.parse(tree)
    except ConfigError as e:
        raise ConfigError(f"the ResNet arm: {e}") from None


def run_config(arch_cfg: config_lib.Config, norm: str, lr: float, seed: int) -> config_lib.Config:
    """One run's config: the architecture's config with the norm, the rate and the seed."""
    return config_lib.override(arch_cfg, {"model.norm": norm, "optim.learning_rate": lr,
                                          "seed": int(seed)},
                               what=f"norm {norm!r} lr {grid.lr_name(lr)}")


def run_dir(workdir, arch: str, norm: str, lr: float, seed: int) -> pathlib.Path:
    return loop.seed_dir(pathlib.Path(workdir) / "runs" / arch / norm / f"lr{grid.lr_name(lr)}",
                         seed)


def _num(x) -> float | None:
    """A stored metric as a float (results files write non-finite floats as strings)."""
    return None if x is None else float(x)


def run_record(arch: str, norm: str, k: int, lr: float, seed: int, summary: dict,
               history: list[dict], *, per_decade: int, majority: float,
               entropy: float) -> dict[str, Any]:
    """One run's record (`grid`'s definitions) from its summary and metrics history."""
    first, last = (history[0], history[-1]) if history else ({}, {})
    rec = {"arch": arch, "norm": norm, "lr": lr, "log10_lr": k / per_decade, "seed": seed,
           "test_accuracy": _num(summary.get("test/accuracy")),
           "test_loss": _num(summary.get("test/loss")),
           "val_accuracy": _num(last.get("val/accuracy")),
           "initial_loss": _num(first.get("train/initial_loss")),
           "final_train_loss": _num(last.get("train/loss")),
           "final_train_accuracy": _num(last.get("train/accuracy")),
           "skipped_steps": int(sum(int(h.get("train/skipped_steps", 0)) for h in history)),
           "stop_reason": summary.get("stop_reason"), "epochs_run": summary.get("epochs_run"),
           "wall_time_s": _num(summary.get("wall_time_s"))}
    rec["diverged"] = grid.is_diverged(rec)
    rec["collapsed"] = grid.is_collapsed(rec, majority)
    rec["stable"] = grid.is_stable(rec, majority, entropy)
    return rec


def _has_checkpoints(path: pathlib.Path) -> bool:
    ckpt = path / "checkpoints"
    return ckpt.exists() and any(ckpt.iterdir())


def train_group(cfgs: dict[int, config_lib.Config], dirs: dict[int, pathlib.Path],
                dataset: data_lib.Dataset, *, seed_mode: str) -> dict[int, tuple]:
    """Trains (or reads back) one (arch, norm, lr) at every seed: {seed: (summary, history,
    status)}."""
    seeds = list(cfgs)
    out = {}
    for s in seeds:
        done = finished_run(dirs[s], cfgs[s])
        if done is not None:
            out[s] = (*done, "read back")
    todo = [s for s in seeds if s not in out]
    group = [s for s in todo if not _has_checkpoints(dirs[s])]
    first = cfgs[seeds[0]]
    if seed_mode == "vmap" and first.data.placement == "device" and len(group) > 1:
        results = loop.fit_seeds(cfgs[group[0]], group, dirs[group[0]].parent, dataset=dataset,
                                 hooks=[InitialLoss()])
        for s, r in zip(group, results):
            out[s] = (r.summary, r.history, f"trained, {len(group)} seeds vmapped")
    for s in todo:
        if s not in out:
            r = loop.fit(cfgs[s], dirs[s], dataset=dataset, hooks=[InitialLoss()])
            out[s] = (r.summary, r.history, "trained")
    return out


def _t_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean and the t interval of the mean over seeds (finite values only)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"n": 0, "mean": None, "low": None, "high": None, "values": list(values)}
    t = inference.paired_t(v) if len(v) > 1 else {"low": math.nan, "high": math.nan}
    return {"n": len(v), "mean": float(np.mean(v)), "low": float(t["low"]),
            "high": float(t["high"]), "values": list(values)}


def per_seed(runs: list[dict], arch: str, seeds: Sequence[int], study: BNLrStudy,
             threshold: float) -> list[dict]:
    """Per seed of one architecture: largest rates, best accuracy, ratios and outcomes."""
    lr_max = study.lrs()[-1][1]
    out = []
    for s in seeds:
        entry: dict[str, Any] = {"seed": s}
        for norm in grid.NORMS:
            rs = [r for r in runs if r["arch"] == arch and r["norm"] == norm and r["seed"] == s]
            best = grid.best_by_val(rs)
            finite = [r["test_accuracy"] for r in rs if r["test_accuracy"] is not None]
            entry[norm] = {
                "largest_stable_lr": grid.largest_stable_lr(rs),
                "largest_lr_reaching": grid.largest_lr_reaching(rs, threshold),
                "best_lr": None if best is None else best["lr"],
                "best_test_accuracy": None if best is None else best["test_accuracy"],
                "max_test_accuracy": max(finite) if finite else None}
        for what, key in (("reaching", "largest_lr_reaching"), ("stable", "largest_stable_lr")):
            bn, none = entry["batch"][key], entry["none"][key]
            entry[f"ratio_{what}"] = grid.ratio(bn, none)
            entry[f"outcome_{what}"] = grid.seed_outcome(bn, none, lr_max, study.factor)
        out.append(entry)
    return out


def robustness(runs: list[dict], archs: Sequence[str], seeds: Sequence[int],
               study: BNLrStudy) -> list[dict]:
    """The claim's per-seed outcomes and verdict at other thresholds, from the same runs."""
    lr_max = study.lrs()[-1][1]
    rows = []
    for x in sorted(set(grid.ROBUSTNESS_THRESHOLDS) | {study.threshold}):
        row: dict[str, Any] = {"threshold": x, "archs": {}}
        for arch in archs:
            outcomes, ratios = [], []
            for s in seeds:
                ls = [grid.largest_lr_reaching(
                    [r for r in runs if r["arch"] == arch and r["norm"] == n and r["seed"] == s],
                    x) for n in grid.NORMS]
                ratios.append(grid.ratio(*ls))
                outcomes.append(grid.seed_outcome(*ls, lr_max, study.factor))
            row["archs"][arch] = {"ratios": ratios, "outcomes": outcomes,
                                  "verdict": grid.claim_verdict(outcomes, study.factor)}
        rows.append(row)
    return rows


def _log10(x):
    return None if x is None else math.log10(x)


def compare(arches: dict[str, dict], runs: list[dict], lrs) -> dict[str, list[dict]]:
    """The two comparison families, each paired by seed with Holm over the family.

    Returns:
      {"main": [...], "per_lr": [...]}; each entry {"arch", "metric", ("lr"), "seeds",
      "differences" (BN minus none per common seed), "inference": `compare_family`'s entry}.
    """
    main_rows = []
    for arch, a in arches.items():
        for metric, get in (("best_test_accuracy", lambda e: e["best_test_accuracy"]),
                            ("log10_largest_lr_reaching",
                             lambda e: _log10(e["largest_lr_reaching"])),
                            ("log10_largest_stable_lr", lambda e: _log10(e["largest_stable_lr"]))):
            pairs = [(e["seed"], get(e["batch"]), get(e["none"])) for e in a["per_seed"]]
            pairs = [(s, b, n) for s, b, n in pairs if b is not None and n is not None]
            main_rows.append({"arch": arch, "metric": metric, "seeds": [p[0] for p in pairs],
                              "differences": [b - n for _, b, n in pairs]})
    per_lr = []
    for arch in arches:
        for _, lr in lrs:
            acc = {n: {r["seed"]: r["test_accuracy"] for r in runs
                       if r["arch"] == arch and r["norm"] == n and r["lr"] == lr
                       and r["test_accuracy"] is not None} for n in grid.NORMS}
            common = sorted(set(acc["batch"]) & set(acc["none"]))
            per_lr.append({"arch": arch, "metric": "test_accuracy", "lr": lr, "seeds": common,
                           "differences": [acc["batch"][s] - acc["none"][s] for s in common]})
    out = {}
    for name, rows in (("main", main_rows), ("per_lr", per_lr)):
        key = lambda c: f"{c['arch']}: {c['metric']}" + (f" lr {grid.lr_name(c['lr'])}"
                                                         if "lr" in c else "")
        family = inference.compare_family({key(c): c["differences"] for c in rows})
        for c in rows:
            c["inference"] = family[key(c)]
        out[name] = rows
    return out


def curves(runs: list[dict], arch: str, lrs) -> dict[str, list[dict]]:
    """Per norm and rate: test accuracy and final train loss over seeds, stable / diverged
    counts."""
    out = {}
    for norm in grid.NORMS:
        rows = []
        for k, lr in lrs:
            rs = [r for r in runs if r["arch"] == arch and r["norm"] == norm and r["lr"] == lr]
            rows.append({"lr": lr, "k": k, "n": len(rs),
                         "test_accuracy": _t_summary([r["test_accuracy"] for r in rs]),
                         "final_train_loss": _t_summary([r["final_train_loss"] for r in rs]),
                         "stable": sum(bool(r["stable"]) for r in rs),
                         "diverged": sum(bool(r["diverged"]) for r in rs),
                         "collapsed": sum(bool(r["collapsed"]) for r in rs)})
        out[norm] = rows
    return out


def analyse(runs: list[dict], cfg: config_lib.Config, archs: Sequence[str],
            seeds: Sequence[int]) -> dict[str, Any]:
    """Everything the report states, from the run records."""
    study = cfg.study
    lrs = study.lrs()
    arches = {}
    for arch in archs:
        ps = per_seed(runs, arch, seeds, study, study.threshold)
        arches[arch] = {
            "per_seed": ps, "curves": curves(runs, arch, lrs),
            "verdict": grid.claim_verdict([e["outcome_reaching"] for e in ps], study.factor),
            "verdict_stable": grid.claim_verdict([e["outcome_stable"] for e in ps],
                                                 study.factor),
            "count_reaching": sum(e["outcome_reaching"] == f">= {study.factor:g}" for e in ps),
            "count_stable": sum(e["outcome_stable"] == f">= {study.factor:g}" for e in ps)}
    comps = compare(arches, runs, lrs)
    claim = {**CLAIM, "threshold": study.threshold, "factor": study.factor,
             "per_arch": {a: arches[a]["verdict"] for a in archs},
             "per_arch_stable": {a: arches[a]["verdict_stable"] for a in archs},
             "verdict": grid.overall_verdict([arches[a]["verdict"] for a in archs]),
             "verdict_stable": grid.overall_verdict([arches[a]["verdict_stable"]
                                                     for a in archs])}
    return {"archs": arches, "comparisons": comps, "claim": claim,
            "robustness": robustness(runs, archs, seeds, study)}


def run_study(cfg: config_lib.Config, workdir, dataset: data_lib.Dataset | None = None, *,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains (or reads back) every arch x norm x lr x seed; returns the results dict."""
    say = log or (lambda _: None)
    study = cfg.study
    archs, seeds, lrs = study.arch_list(), study.seed_list(cfg.seed), study.lrs()
    arch_cfgs = {arch: arch_config(cfg, arch) for arch in archs}
    for arch_cfg in arch_cfgs.values():  # every run's config is checked before anything runs
        for norm in grid.NORMS:
            for _, lr in lrs:
                run_config(arch_cfg, norm, lr, seeds[-1])
    if dataset is None:
        dataset = data_lib.load_dataset(cfg.data)
    majority = float(np.bincount(dataset.train_y).max() / len(dataset.train_y))
    entropy = grid.label_entropy(dataset.train_y)
    seed_mode = multiseed.resolve_seed_mode(study.seed_mode)
    runs, described = [], {}
    total, i = len(archs) * len(grid.NORMS) * len(lrs), 0
    for arch, arch_cfg in arch_cfgs.items():
        for norm in grid.NORMS:
            described[f"{arch}/{norm}"] = models.describe(
                run_config(arch_cfg, norm, lrs[0][1], seeds[0]).model, dataset.train_x.shape[1:])
            for k, lr in lrs:
                i += 1
                t0 = time.time()
                cfgs = {s: run_config(arch_cfg, norm, lr, s) for s in seeds}
                dirs = {s: run_dir(workdir, arch, norm, lr, s) for s in seeds}
                done = train_group(cfgs, dirs, dataset, seed_mode=seed_mode)
                recs = [run_record(arch, norm, k, lr, s, done[s][0], done[s][1],
                                   per_decade=study.lr_per_decade, majority=majority,
                                   entropy=entropy)
                        for s in seeds]
                runs.extend(recs)
                accs = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in recs)
                flags = ", ".join("stable" if r["stable"] else "diverged" if r["diverged"]
                                  else "collapsed" if r["collapsed"] else "not stable"
                                  for r in recs)
                say(f"[{i}/{total}] {arch} {norm} lr {grid.lr_name(lr)}: test accuracy % "
                    f"{accs} ({flags}) [{done[seeds[0]][2]}, {time.time() - t0:.0f} s]")
    results = {"dataset": dataset.info(), "majority_class_share": majority,
               "label_entropy": entropy,
               "seed_mode": seed_mode, "seeds": seeds, "archs_run": archs,
               "learning_rates": [lr for _, lr in lrs], "models": described, "runs": runs}
    results.update(analyse(runs, cfg, archs, seeds))
    return results


def execute(run: cli.Start, dataset: data_lib.Dataset | None = None, *,
            log: Callable[[str], None] | None = None, quiet: bool = False) -> dict[str, Any]:
    """The study from a parsed `cli.Start`: runs, figures, results.json / results.md, analysis.md."""
    t0 = time.time()
    results = run_study(run.cfg, run.workdir, dataset, log=log)
    wall = time.time() - t0
    results["train_time_s"] = float(sum(r["wall_time_s"] or 0.0 for r in results["runs"]))
    figures = report.write_figures(results, run.cfg, run.workdir)
    run_files.atomic_write_text(run.workdir / "analysis.md",
                                report.format_analysis(results, run.cfg))
    cli.finish(run, wall, results, report.format_results(results, run.cfg, run.command, wall),
               figures, quiet=quiet)
    return results


def main(argv):
    run = cli.start(argv, "experiments.bn_lr", study=BNLrStudy)
    execute(run, log=lambda s: print(s, flush=True))
