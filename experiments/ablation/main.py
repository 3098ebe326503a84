"""The chapter's ablation study (section 21, "What actually helps on MNIST?"): every row x seed.

  python -m experiments.ablation --config=experiments/configs/ablation.py --workdir=...

Examples:
  --config.only=he,he_bn                 two rows (finished runs in the workdir are reused)
  --config.only=label_smoothing,adamw    a variant with the row it is compared with
  --config.seeds=5                       seeds 0..4
  --config.seed_mode=vmap                a row's seeds as one vmapped program (default "auto":
                                         vmap on GPU/TPU, sequential on CPU); same results per
                                         seed to float32 rounding, but no checkpoints: an
                                         interrupted row restarts (`loop.fit_seeds`)

The rows are `rows.EXPERIMENTS`; each run is one `loop.fit` (or a vmapped group of seeds) in
<workdir>/runs/<experiment>/seed_<s>/. The dataset is loaded once and shared; a row that would
change the data section is refused. A run whose summary.json exists with the same config is read
back instead of re-run; an interrupted one resumes from its checkpoints. If a fit is interrupted
(Ctrl-C / SIGTERM), the study stops there and reports the finished runs. Seed s gets the init key,
dropout keys and batch order of `seed = s` in either seed mode, and `seed_mode` is not part of a
run's config, so finished runs are reused across modes.

Writes into the workdir (see `report.write_reports`): results.json (per experiment and seed: test
accuracy / loss, best epoch, epochs run, stop reason, wall time, verdict, per-epoch curves;
aggregates; contributions; the study config and library versions; accuracies are fractions),
results.md, curves.png, contributions.png and analysis.md.
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import time
from typing import Any, Callable, Mapping, Sequence

from experiments import cli
from experiments.ablation import report
from experiments.ablation.rows import EXPERIMENTS, AblationStudy, Epochs, Row, resolved_overrides
from experiments.ablation.rows import select_experiments
from ml_practical import config as config_lib
from ml_practical import data as data_lib
from ml_practical import loop, multiseed, run_files
from ml_practical.analysis import curves, inference, seeds as seed_stats

RUNS_DIR = "runs"


def seed_list(study: AblationStudy) -> list[int]:
    """`seeds` (a count n >= 1) as the seeds 0 .. n-1."""
    return list(range(study.seeds))


def experiment_config(cfg: config_lib.Config, name: str, seed: int, *,
                      steps_per_epoch: int | None = None,
                      table: Mapping[str, Row] = EXPERIMENTS) -> config_lib.Config:
    """The `loop.fit` config of one run: the base config, the row's overrides, `seed`.

    Args:
      cfg: the study config (its study fields are dropped).
      name: experiment name.
      seed: the run's seed (init key, dropout/augmentation keys, batch order).
      steps_per_epoch: resolves `Epochs` override values; required when the row has one.

    Raises:
      ConfigError: an override naming a field that does not exist, or a bad value (naming the row).
    """
    overrides: dict[str, Any] = {}
    for key, value in resolved_overrides(name, table).items():
        if isinstance(value, Epochs):
            if steps_per_epoch is None:
                raise ValueError(f"experiment {name!r}: {key} is given in epochs; pass "
                                 "steps_per_epoch to resolve it")
            value = value.resolve(steps_per_epoch)
        overrides[key] = value
    overrides["seed"] = int(seed)
    return config_lib.override(cfg, overrides, what=f"experiment {name!r}")


def check_shared_data(cfg: config_lib.Config, names: Sequence[str],
                      table: Mapping[str, Row] = EXPERIMENTS) -> config_lib.DataConfig:
    """Verifies that every selected row trains on the base config's data, which is loaded once.

    Returns:
      The shared data section.

    Raises:
      ValueError: a row whose overrides change the data section (it would need its own dataset).
    """
    for name in names:
        # Epochs values only touch optim.*; a placeholder resolution is enough to compare data.
        data = experiment_config(cfg, name, 0, steps_per_epoch=1, table=table).data
        if data != cfg.data:
            diff = run_files.config_diff({"data": config_lib.section_dict(cfg.data)},
                                         {"data": config_lib.section_dict(data)}, ignore=())
            raise ValueError(f"experiment {name!r} changes the data section, but the study loads "
                             "the dataset once for all experiments:\n" + "\n".join(diff))
    return cfg.data


def run_dir(workdir, name: str, seed: int) -> pathlib.Path:
    """Where one run lives: <workdir>/runs/<experiment>/seed_<seed> (`loop.seed_dir`)."""
    return loop.seed_dir(pathlib.Path(workdir) / RUNS_DIR / name, seed)


def finished_run(path: pathlib.Path, run_cfg: config_lib.Config
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(summary, history) of a run that finished with this config (not interrupted), else None."""
    summary_path, config_path = path / "summary.json", path / "config.json"
    if not (summary_path.exists() and config_path.exists()):
        return None
    saved = json.loads(config_path.read_text())
    if run_files.config_diff(saved, run_files.to_jsonable(run_cfg)):
        return None  # fit() will refuse the workdir with the list of differences.
    summary = json.loads(summary_path.read_text())
    if summary.get("stop_reason") == "interrupted":
        return None  # resume it
    return summary, run_files.RunFiles(path, tensorboard=False).read_metrics()


def _has_checkpoints(path: pathlib.Path) -> bool:
    ckpt = run_files.RunFiles(path, tensorboard=False).checkpoint_dir
    return ckpt.exists() and any(ckpt.iterdir())


def run_study(cfg: config_lib.Config, workdir, dataset: data_lib.Dataset | None = None, *,
              log: Callable[[str], None] | None = None,
              command: str | None = None) -> dict[str, Any]:
    """Runs every selected experiment x seed, then writes the results and reports.

    Args:
      cfg: the parsed study config (`config.parse(raw, study=AblationStudy)`).
      workdir: the study directory.
      dataset: a Dataset to use instead of loading `cfg.data` (tests; your own arrays). Its
        description is recorded, but only the config decides whether a finished run is reused.
      log: called with one line per run (None: silent).
      command: the command line, recorded in results.json / results.md.

    Returns:
      The results dict that was written to results.json.
    """
    say = log or (lambda _: None)
    t_study = time.time()
    study = cfg.study
    names = select_experiments(study.only)
    check_shared_data(cfg, names)
    if dataset is None:
        dataset = data_lib.load_dataset(cfg.data)
    steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
    seed_mode = multiseed.resolve_seed_mode(study.seed_mode)
    runs, interrupted = train_rows(cfg, workdir, names, seed_list(study), dataset,
                                   seed_mode=seed_mode, log=say)
    adaptive = None
    if adaptive_on(study) and not interrupted:
        runs, interrupted, adaptive = add_seeds(cfg, workdir, names, runs, dataset,
                                                seed_mode=seed_mode, log=say)
    results = collect(cfg, runs, dataset_info=dataset.info(),
                      wall_time_s=time.time() - t_study, command=command, complete=not interrupted,
                      steps_per_epoch=steps_per_epoch, seed_mode=seed_mode,
                      model=model_shapes(cfg, dataset), adaptive=adaptive)
    report.write_reports(results, workdir)
    return results


def adaptive_on(study: AblationStudy) -> bool:
    return study.max_seeds > study.seeds


def adaptive_alpha(study: AblationStudy, alpha: float = 0.05) -> tuple[float, int]:
    """(the level of each look's decision, the most looks the design can take).

    Adding seeds until a test rejects ("optional stopping") inflates the false-positive rate of
    a fixed-n test. Each look here is a Holm-adjusted test at alpha / K, K being the most looks
    possible (the first `seeds`, then one per `seed_step` up to `max_seeds`): by Bonferroni over
    the looks the family-wise error over the whole adaptive design stays <= alpha. Conservative
    (an alpha-spending rule such as O'Brien-Fleming would spend less early), but exact to state.
    """
    looks = 1 + math.ceil(max(0, study.max_seeds - study.seeds) / study.seed_step)
    return alpha / looks, looks


def comparison_family(runs: Mapping[str, list[dict[str, Any]]], names: Sequence[str],
                      table: Mapping[str, Row] = EXPERIMENTS) -> dict[str, dict[str, Any]]:
    """`inference.compare_family` of every row against its parent on test accuracy, over the
    seeds the two have in common (keyed by the row's name)."""
    diffs = {}
    for name in names:
        parent = table[name].parent
        if parent is None or parent not in names or not runs.get(name) or not runs.get(parent):
            continue
        diffs[name] = seed_stats.paired_difference(
            {r["seed"]: r["test_accuracy"] for r in runs[name]},
            {r["seed"]: r["test_accuracy"] for r in runs[parent]})["paired_differences"]
    return inference.compare_family(diffs)


def add_seeds(cfg: config_lib.Config, workdir, names: Sequence[str],
              runs: dict[str, list[dict[str, Any]]], dataset: data_lib.Dataset, *,
              seed_mode: str = "sequential", table: Mapping[str, Row] = EXPERIMENTS,
              log: Callable[[str], None] | None = None
              ) -> tuple[dict[str, list[dict[str, Any]]], bool, dict[str, Any]]:
    """The adaptive mode: more seeds only for the comparisons still undecided, up to a cap.

    At each look every row-vs-parent comparison is classified by `inference.decide` (Holm over
    the table, at `adaptive_alpha`'s per-look level, with the `margin_pp` equivalence margin);
    the rows of the undecided ones get the next `seed_step` seeds (seed s is paired across rows
    as always), until none is undecided or they reach `max_seeds`.

    Returns:
      (runs with the added seeds, interrupted, {"alpha_per_look", "max_looks", "margin",
       "looks": [{"seeds_per_row", "undecided"}], "final": {row: decision}}).
    """
    say = log or (lambda _: None)
    study = cfg.study
    alpha, max_looks = adaptive_alpha(study)
    margin = study.margin_pp / 100.0 or None
    runs = {k: list(v) for k, v in runs.items()}
    looks, interrupted = [], False

    def decisions():
        fam = comparison_family(runs, names, table)
        return {k: inference.decide(v, alpha=alpha, margin=margin) for k, v in fam.items()}

    while True:
        decided = decisions()
        undecided = [k for k, d in decided.items() if d == "undecided"]
        looks.append({"seeds_per_row": {k: len(v) for k, v in runs.items()},
                      "undecided": undecided})
        grow = [n for n in names if any(n in (u, table[u].parent) for u in undecided)
                and len(runs[n]) < study.max_seeds]
        if not grow:
            break
        for name in grow:
            have = {r["seed"] for r in runs[name]}
            start = max(have) + 1 if have else 0
            new = list(range(start, min(start + study.seed_step, study.max_seeds)))
            say(f"adaptive: {name} gets seeds {new} ({', '.join(undecided)} undecided at "
                f"alpha {alpha:.4f} per look)")
            more, interrupted = train_rows(cfg, workdir, [name], new, dataset,
                                           seed_mode=seed_mode, table=table, log=say)
            runs[name] += more[name]
            if interrupted:
                break
        if interrupted:
            break
    return runs, interrupted, {"alpha_per_look": alpha, "max_looks": max_looks,
                               "margin": margin, "looks": looks, "final": decisions()}


def train_rows(cfg: config_lib.Config, workdir, names: Sequence[str], seeds: Sequence[int],
               dataset: data_lib.Dataset, *, seed_mode: str = "sequential",
               table: Mapping[str, Row] = EXPERIMENTS,
               log: Callable[[str], None] | None = None
               ) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """Trains (or reuses) every row of `names` x `seeds` in <workdir>/runs/<row>/seed_<seed>.

    A run that finished with the same config is read back, not retrained; an interrupted one is
    resumed. With `seed_mode` "vmap" a row's unfinished seeds without checkpoints train as one
    vmapped program (`loop.fit_seeds`).

    Returns:
      ({row: [per-seed record, in `seeds` order]}, interrupted): on a signal the rows stop at the
      run in flight and `interrupted` is True.
    """
    say = log or (lambda _: None)
    workdir = pathlib.Path(workdir)
    steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    interrupted = False
    total, i = len(names) * len(seeds), 0
    for name in names:
        run_cfgs = {seed: experiment_config(cfg, name, seed, steps_per_epoch=steps_per_epoch,
                                            table=table)
                    for seed in seeds}
        done = {seed: finished_run(run_dir(workdir, name, seed), run_cfgs[seed]) for seed in seeds}
        status = {seed: "done earlier" for seed in seeds}
        # The vmapped group: the unfinished seeds without checkpoints (a resumable sequential run
        # goes on with loop.fit below, so its checkpoints are neither orphaned nor redone).
        group = ([seed for seed in seeds if done[seed] is None
                  and not _has_checkpoints(run_dir(workdir, name, seed))]
                 if seed_mode == "vmap" else [])
        if group:
            results = loop.fit_seeds(run_cfgs[group[0]], group,
                                     run_dir(workdir, name, group[0]).parent, dataset=dataset)
            for seed, result in zip(group, results):
                done[seed] = (result.summary, result.history)
                status[seed] = f"trained, {len(group)} seeds vmapped"
        for seed in seeds:
            i += 1
            if done[seed] is None:
                result = loop.fit(run_cfgs[seed], run_dir(workdir, name, seed), dataset=dataset)
                done[seed] = (result.summary, result.history)
                status[seed] = "trained"
            summary, history = done[seed]
            say(f"[{i}/{total}] {name} seed {seed}: test acc {summary['test/accuracy']:.4f} "
                f"loss {summary['test/loss']:.4f}, {summary['epochs_run']} epochs "
                f"({summary['stop_reason']}, best {summary['best_epoch']}), "
                f"{summary['wall_time_s']:.0f} s [{status[seed]}]")
            if summary["stop_reason"] == "interrupted":
                interrupted = True
                break
            runs[name].append(_run_record(seed, summary, history, dataset.num_classes))
        if interrupted:
            say("Interrupted: the report covers the finished runs; rerun the same command to resume.")
            break
    return runs, interrupted


def model_shapes(cfg: config_lib.Config, dataset: data_lib.Dataset) -> dict[str, Any]:
    """The base model as the reports need it, from the models contract (not from MLP fields).

    Shapes only: the model is initialized abstractly (`jax.eval_shape`), nothing is computed.
    """
    import jax
    import jax.numpy as jnp

    from ml_practical import models

    x = jax.ShapeDtypeStruct((2, *dataset.train_x.shape[1:]), jnp.float32)
    variables = jax.eval_shape(
        lambda key, x: cfg.model.init({"params": key}, x, train=False), jax.random.PRNGKey(0), x)
    return {"description": models.describe(cfg.model, dataset.train_x.shape[1:]),
            "kernel_shapes": [list(s) for s in models.kernel_shapes(cfg.model, variables, x)]}


def _run_record(seed: int, summary: Mapping[str, Any], history: list[dict[str, Any]],
                num_classes: int) -> dict[str, Any]:
    verdict = curves.diagnose(history, num_classes=num_classes) if history else None
    return {
        "seed": seed,
        "test_accuracy": summary["test/accuracy"],
        "test_loss": summary["test/loss"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "stop_reason": summary["stop_reason"],
        "wall_time_s": summary["wall_time_s"],
        "verdict": None if verdict is None else verdict.to_dict(),
        "curves": history,
    }


def _versions() -> dict[str, str]:
    import jax

    from ml_practical import checkpointing  # imports orbax; fit() has loaded it already
    return {**checkpointing.library_versions(), "python": platform.python_version(),
            "platform": platform.platform(), "devices": ", ".join(str(d) for d in jax.devices())}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, std = seed_stats.summarize_seeds(values)
    return {"mean": mean, "std": std, "values": list(values)}


def contribution(child: Mapping[str, Any], parent: Mapping[str, Any],
                 metric: str = "test_accuracy") -> dict[str, Any]:
    """Row minus parent for one metric: `analysis.seeds.paired_difference` of their runs."""
    return seed_stats.paired_difference({r["seed"]: r[metric] for r in child["runs"]},
                                        {r["seed"]: r[metric] for r in parent["runs"]})


def collect(cfg: config_lib.Config, runs: Mapping[str, list[dict[str, Any]]], *,
            dataset_info: Mapping[str, Any], wall_time_s: float, command: str | None = None,
            complete: bool = True, steps_per_epoch: int | None = None,
            seed_mode: str | None = None, model: Mapping[str, Any] | None = None,
            table: Mapping[str, Row] = EXPERIMENTS,
            adaptive: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Builds the results dict (results.json) from per-run records; experiments without runs drop out.

    Args:
      cfg: the study config.
      runs: {experiment: [run record per finished seed]} (see `_run_record`).
      dataset_info: `Dataset.info()`.
      wall_time_s: this invocation's wall time.
      seed_mode: how this invocation ran the seeds ("sequential" | "vmap"; "auto" resolved).
      model: the base model's description and kernel shapes (`model_shapes`).
      adaptive: the adaptive mode's record (`add_seeds`), None when it was off.

    Returns:
      {"study": ..., "config": ..., "versions": ..., "experiments": {name: ...},
       "contributions": [...]} with accuracies as fractions.
    """
    experiments: dict[str, Any] = {}
    for name, records in runs.items():
        if not records:
            continue
        row = table[name]
        overrides = {}
        for key, value in resolved_overrides(name, table).items():
            if isinstance(value, Epochs) and steps_per_epoch is not None:
                value = value.resolve(steps_per_epoch)
            overrides[key] = value
        kinds = [r["verdict"]["kind"] for r in records if r["verdict"] is not None]
        experiments[name] = {
            "row": row.row_id,
            "label": row.label,
            "change": row.change,
            "parent": row.parent,
            "overrides": overrides,
            "expected_accuracy": row.expected_accuracy,
            "goal_accuracy": row.goal_accuracy,
            "test_accuracy": _stats([r["test_accuracy"] for r in records]),
            "test_loss": _stats([r["test_loss"] for r in records]),
            "epochs_run": _stats([r["epochs_run"] for r in records]),
            "verdicts": {k: kinds.count(k) for k in curves.VERDICTS if k in kinds},
            "runs": sorted(records, key=lambda r: r["seed"]),
        }
    contributions = []
    for name, exp in experiments.items():
        parent = exp["parent"]
        if parent is None or parent not in experiments:
            continue
        contributions.append({
            "experiment": name, "parent": parent, "change": exp["change"],
            "chapter_expected": (None if exp["expected_accuracy"] is None or
                                 experiments[parent]["expected_accuracy"] is None else
                                 exp["expected_accuracy"] - experiments[parent]["expected_accuracy"]),
            "test_accuracy": contribution(exp, experiments[parent], "test_accuracy"),
            "test_loss": contribution(exp, experiments[parent], "test_loss"),
        })
    # Confidence intervals, tests and power of each accuracy comparison, and Holm's adjustment
    # over the table (the family: every contribution the study reports).
    family = inference.compare_family(
        {c["experiment"]: c["test_accuracy"]["paired_differences"] for c in contributions})
    for c in contributions:
        c["test_accuracy"]["inference"] = family[c["experiment"]]
    return run_files.to_jsonable({
        "study": {
            "dataset": dict(dataset_info),
            "model": dict(model or {}),
            "seeds": seed_list(cfg.study),
            "seeds_per_experiment": {k: [r["seed"] for r in v] for k, v in runs.items() if v},
            "adaptive": dict(adaptive) if adaptive else None,
            "experiments": list(experiments),
            "complete": complete,
            "wall_time_s": wall_time_s,
            "command": command,
            "seed_mode": seed_mode,
        },
        "config": cfg,
        "versions": _versions(),
        "experiments": experiments,
        "contributions": contributions,
    })


def main(argv):
    run = cli.start(argv, "experiments.ablation", study=AblationStudy)
    results = run_study(run.cfg, run.workdir, log=lambda s: print(s, flush=True),
                        command=run.command)
    print()
    print(report.format_table(results))
    if results["contributions"]:
        print(report.format_contributions(results))
    print(f"Wrote results.json, results.md, curves.png, contributions.png, analysis.md to "
          f"{run.workdir} ({results['study']['wall_time_s']:.0f} s).")
