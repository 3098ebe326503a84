"""The epoch loop, extended by hooks, and its two drivers: `fit` (one run) and `fit_seeds` (S seeds).

One loop (`run_epochs`) serves every run: a plain training run, the seeds of a vmapped group, and
every study, which adds what it measures through hooks instead of copying the loop:

    for epoch in range(start_epoch, num_epochs + 1):
        state, step_metrics = train one epoch         (one compiled scan, one host transfer)
        record = {epoch, train/..., val/...}          for every run still training
        hook.metrics(event)                           hooks add entries (per-layer statistics, ...)
        record += {lr, epoch_time_s, wall_time_s}
        early stopping, consecutive non-finite steps  -> improved / stopped per run
        hook.on_epoch_end(event)                      study hooks, then: metrics.jsonl, checkpoint,
                                                      best state, progress bar
        stop when every run has stopped or on Ctrl-C / SIGTERM (after the epoch in flight)

A `Hook` (`ml_practical.hooks`, re-exported here) may also change a fresh state before training,
add per-step metrics computed inside the compiled step, and act at the start and the end.

`fit` adds the run's files (config.json, metrics.jsonl, summary.json: `run_files`), orbax
checkpoints (resume; the best state restored at the end: `checkpointing`) and returns a
`FitResult`. `fit_seeds` trains S seeds of one config as one vmapped program (`multiseed`) through
the same loop, keeping each seed's best state on device instead of in checkpoints.

With `early_stopping.enabled = False` nothing stops a run before its budget except non-finite
steps (`train.max_consecutive_skips`), every epoch counts as the best so far, and the last state
is the one restored and tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import distributed, multiseed, run_files
from ml_practical import train as train_lib
from ml_practical.config import Config, ConfigError, override, suggest
from ml_practical.early_stopping import EarlyStopping
from ml_practical.experiment import Experiment, build_experiment
from ml_practical.hooks import (ActivationStats, Checkpoint, EpochEnd, Hook,  # noqa: F401
                                InterruptFlag, KeepBest, ProgressBar, Run, StepLog, WriteMetrics,
                                combined_step_metrics, interrupted_by, signal_name)
from ml_practical.workdir_lock import WorkdirBusyError, WorkdirLock


# --------------------------------------------------------------------------- the loop


class _OneRun:
    """An `Experiment` seen by the loop as a group of one run."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def step(self, state) -> int:
        return int(state.step)

    def epoch(self, state, epoch, active):
        state, steps = self.exp.run_epoch(state, epoch)
        return state, [steps]

    def validate(self, state):
        return [self.exp.evaluate(*_eval_weights(self.exp, state), self.exp.val_split)]


def _eval_weights(exp: Experiment, state) -> tuple[Any, Any]:
    """The (params, batch_stats) that `train.eval_weights` evaluates (`averaging.eval_weights`)."""
    t = exp.cfg.train
    if t.eval_weights == "last":
        return state.params, state.batch_stats
    from ml_practical import averaging

    return averaging.eval_weights(t.eval_weights, state, exp.model, exp.dataset.train_x,
                                  batch_size=t.batch_size, num_batches=t.recalibrate_batches)


class _SeedRuns:
    """A `multiseed.SeedGroup` seen by the loop: per-seed steps and validation metrics."""

    def __init__(self, group: multiseed.SeedGroup):
        self.group = group

    def step(self, states) -> int:
        return int(states.step[0])  # every seed has taken the same steps

    def epoch(self, states, epoch, active):
        states, steps = self.group.run_epoch(states, epoch, active)
        return states, [multiseed.take(steps, i) for i in range(len(self.group.seeds))]

    def validate(self, states):
        val = self.group.evaluate(*_seed_eval_weights(self.group.exp, states),
                                  self.group.exp.val_split)
        return [{k: float(v[i]) for k, v in val.items()} for i in range(len(self.group.seeds))]


def _seed_eval_weights(exp: Experiment, states) -> tuple[Any, Any]:
    """`_eval_weights` of every seed of a stacked state, stacked again (leading axis S).

    Seed by seed, so seed s evaluates what its sequential run would (its own average, its own
    BatchNorm recalibration over the same first training batches); the recalibration passes
    are a few forward passes per seed, small next to an epoch.
    """
    if exp.cfg.train.eval_weights == "last":
        return states.params, states.batch_stats
    count = int(states.step.shape[0])
    each = [_eval_weights(exp, multiseed.take(states, i)) for i in range(count)]
    return jax.tree.map(lambda *a: jnp.stack(a), *each)


def run_epochs(engine: Any, state: Any, runs: list[Run], *, rule: EarlyStopping,
               schedule: Callable[[int], float], num_epochs: int, start_epoch: int,
               max_consecutive_skips: int, hooks: Sequence[Hook], wall_start: float,
               interrupt: InterruptFlag | None = None,
               plateau: Callable | None = None) -> tuple[Any, bool]:
    """THE epoch loop (see the module docstring).

    Args:
      engine: what trains and validates the runs: `step(state) -> int` (optimizer steps taken),
        `epoch(state, epoch, active) -> (state, [per-step metrics of each run])` and
        `validate(state) -> [{"loss", ...} of each run]` (`_OneRun`, `_SeedRuns`).
      state: the state to start from (stacked over the runs of a seed group).
      runs: the runs' bookkeeping, updated in place (records, early stopping, best epochs).
      rule: the early-stopping rule (with `enabled` False it never stops a run and every epoch
        is the best so far).
      schedule: the learning-rate schedule (logged as "lr").
      num_epochs, start_epoch: the budget and the first epoch to train (1, or after a resume).
      max_consecutive_skips: stop a run with "non_finite" after this many skipped steps in a row
        (0: never).
      hooks: called in order, each phase for all hooks (`Hook`).
      wall_start: the time the run started (earlier when resumed), for "wall_time_s".
      interrupt: the Ctrl-C / SIGTERM flag checked after every epoch.
      plateau: `(state, records) -> state`, reduce-on-plateau's step after each validation
        (`_plateau_rule`), before the hooks see the epoch (so its checkpoint holds the new
        multiplier); the records then log "lr" times the multiplier the epoch trained with, and
        "lr_scale".

    Returns:
      (final state, whether the loop stopped on an interrupt).
    """
    share = len(runs)  # a group's times are split over its runs, so sums over runs stay true
    for epoch in range(start_epoch, num_epochs + 1):
        active = np.array([not r.stopped for r in runs])
        if not active.any():
            break
        t0 = time.time()
        lr = float(schedule(engine.step(state)))
        scales = None
        if plateau is not None:
            from ml_practical import optim as optim_lib
            scales = np.broadcast_to(optim_lib.plateau_scale(state.opt_state), (len(runs),))
        state, steps = engine.epoch(state, epoch, active)
        val = engine.validate(state)
        records: list[dict | None] = [None] * len(runs)
        longest = [0] * len(runs)
        for i in np.flatnonzero(active):
            run = runs[i]
            record = {"epoch": epoch, **train_lib.summarize_epoch(steps[i])}
            longest[i], run.consecutive = train_lib.trailing_run(steps[i]["skipped"],
                                                                 run.consecutive)
            record.update({f"val/{name}": value for name, value in val[i].items()})
            records[i] = record
        if plateau is not None:
            state = plateau(state, records)
        event = EpochEnd(epoch=epoch, state=state, runs=runs, active=active,
                         step_metrics=[s if a else None for s, a in zip(steps, active)],
                         records=records, improved=np.zeros(len(runs), bool))
        for hook in hooks:
            hook.metrics(event)
        now = time.time()
        for i in np.flatnonzero(active):
            run, record = runs[i], records[i]
            record["lr"] = lr if scales is None else lr * float(scales[i])
            if scales is not None:
                record["lr_scale"] = float(scales[i])
            record["epoch_time_s"] = (now - t0) / share
            record["wall_time_s"] = (now - wall_start) / share
            if rule.enabled:
                run.es, event.improved[i] = rule.update(run.es, epoch, record)
            else:
                event.improved[i] = True
            if max_consecutive_skips and longest[i] >= max_consecutive_skips:
                run.es = rule.stop(run.es, epoch, "non_finite")
            if event.improved[i]:
                run.best_epoch = epoch
            run.last_epoch = epoch
            run.history.append(record)
        # A signal may reach only some processes: all must stop after the same epoch.
        interrupted = interrupt is not None and not distributed.all_agree(not interrupt.fired)
        event.final = (interrupted or epoch == num_epochs or all(r.stopped for r in runs))
        for hook in hooks:
            hook.on_epoch_end(event)
        if interrupted:
            return state, True
    return state, bool(interrupt is not None and interrupt.fired)


def _stop_reason(run: Run, interrupted: bool) -> str:
    if run.es.stopped:
        return run.es.stop_reason
    return "interrupted" if interrupted else "max_epochs"


# --------------------------------------------------------------------------- fit


@dataclasses.dataclass
class FitResult:
    """What `fit` (and each seed of `fit_seeds`) returns.

    Attributes:
      summary: the run's summary (what summary.json holds): test metrics of `state`, best epoch,
        stop reason, epochs run, wall time, model, dataset, devices.
      state: the restored state (early stopping's best; the last one when it is disabled).
      history: the per-epoch metrics records (metrics.jsonl), oldest first.
      workdir: the run directory (None when nothing was written).
    """

    summary: dict[str, Any]
    state: train_lib.TrainState
    history: list[dict[str, Any]]
    workdir: pathlib.Path | None


def fit(cfg: Config, workdir: str | os.PathLike, *, dataset=None, mesh=None,
        hooks: Sequence[Hook] = (), record_clip: bool = False) -> FitResult:
    """Trains `cfg` in `workdir`, resuming from its checkpoints, and returns the result.

    The run ends on patience, max epochs, divergence, non-finite steps or Ctrl-C / SIGTERM; in
    every case the best checkpoint (by `cfg.early_stopping.monitor`; the last one when early
    stopping is disabled) is restored and the test metrics are those of the restored weights.

    Args:
      cfg: the parsed config (`config.parse`).
      workdir: the run directory (`run_files` lists its files).
      dataset, mesh: as in `experiment.build_experiment`.
      hooks: the study's hooks (`Hook`), called before the library's own in each phase.
      record_clip: the optimizer records clip statistics (`experiment.build_experiment`).

    Returns:
      A `FitResult`.

    Raises:
      run_files.ConfigMismatchError: the workdir (config.json, or its checkpoints) holds a run of
        another config.
      workdir_lock.WorkdirBusyError: another live process holds the workdir.
      ConfigError: `early_stopping.monitor` names no metric of this run (before any epoch).
      ValueError: the data disagree with the config.
    """
    hooks = list(hooks)
    if cfg.train.stats_every:
        hooks.insert(0, ActivationStats(cfg.train.stats_every))
    exp = build_experiment(cfg, dataset=dataset, mesh=mesh,
                           step_metrics=combined_step_metrics(hooks), record_clip=record_clip)
    check_monitor(cfg, exp, hooks)
    # One owner per run directory (process 0 holds the lock for every process of the run).
    with _locked(workdir):
        return _fit(cfg, exp, workdir, hooks)


def _locked(workdir) -> WorkdirLock:
    lock = WorkdirLock(workdir, enabled=distributed.is_primary())
    try:
        lock.acquire()
        ok = True
    except WorkdirBusyError:
        ok, error = False, sys.exc_info()[1]
    if not distributed.all_agree(ok):
        if not ok:
            raise error
        lock.release()
        raise WorkdirBusyError(f"{workdir}: process 0 could not lock the run directory")
    return lock


def check_monitor(cfg: Config, exp: Experiment, hooks: Sequence[Hook]) -> None:
    """Refuses, before the first epoch, an early-stopping (or reduce-on-plateau) monitor that no
    record will hold."""
    names = {"epoch", "train/skipped_steps", "train/loss", "train/objective", "grad_norm", "lr",
             "epoch_time_s", "wall_time_s"}
    names |= {f"train/{m}" for m in exp.task.metric_names} | {f"val/{m}" for m in
                                                              exp.task.metric_names}
    prefixes = tuple(p for h in hooks for p in getattr(h, "metric_prefixes", ()))
    declared = {n for h in hooks for n in getattr(h, "metric_names", ())}
    checks = []
    if cfg.early_stopping.enabled:
        checks.append(("early_stopping.monitor", cfg.early_stopping.monitor))
    if cfg.optim.plateau_factor > 0:
        # Read before the hooks' metrics are added: a validation or training metric.
        checks.append(("optim.plateau_monitor", cfg.optim.plateau_monitor))
    for field, monitor in checks:
        if monitor in names | declared or monitor.startswith(prefixes or ("\0",)):
            if field == "optim.plateau_monitor" and monitor not in names:
                raise ConfigError(f"optim.plateau_monitor: {monitor!r} is a hook's metric; "
                                  "the plateau rule reads the loop's own (val/..., train/...)")
            continue
        raise ConfigError(f"{field}: {monitor!r} is not a metric of this run; "
                          f"{suggest(monitor, sorted(names | declared))}expected one of "
                          f"{sorted(names | declared)}")


def _plateau_rule(cfg: Config) -> Callable | None:
    """(state, records) -> state after reduce-on-plateau's step (`optim.plateau_step`)."""
    if not cfg.optim.plateau_factor > 0:
        return None
    from ml_practical import optim as optim_lib

    monitor = cfg.optim.plateau_monitor

    def apply(state, records):
        values = np.array([r[monitor] if r is not None else np.nan for r in records], np.float32)
        scale = optim_lib.plateau_scale(state.opt_state)
        values = values.reshape(np.shape(scale)) if np.ndim(scale) else values[0]
        return state.replace(opt_state=optim_lib.plateau_step(state.opt_state, values,
                                                              cfg.optim))

    return apply


PARAM_GROUPS_FILE = "param_groups.json"


def write_param_groups(files: run_files.RunFiles, cfg: Config, params, *,
                       quiet: bool = False) -> None:
    """<run>/param_groups.json: per leaf, its decay and lr multipliers, frozen, clipped
    (`param_groups.Groups.describe`); with any `optim` group rule, a summary line on stderr."""
    from ml_practical import optim as optim_lib, param_groups

    groups = optim_lib.param_groups_of(cfg.optim)
    on = cfg.optim.l2 > 0 or cfg.optim.weight_decay > 0
    leaves = groups.describe(params, clip=cfg.optim.clip)
    if not on:  # nothing decays, whatever the multipliers say
        leaves = {k: {**v, "decay_mult": 0.0} for k, v in leaves.items()}
    files.write_json(PARAM_GROUPS_FILE, {"rules": {"wd_mults": list(cfg.optim.wd_mults),
                                                   "lr_mults": list(cfg.optim.lr_mults),
                                                   "freeze": list(cfg.optim.freeze)},
                                         "leaves": leaves})
    if groups.active and not quiet and files.primary:
        print(param_groups.summary_line(leaves), file=sys.stderr)


def _fit(cfg: Config, exp: Experiment, workdir, hooks: list[Hook]) -> FitResult:
    from ml_practical import checkpointing  # orbax import is slow; keep `import loop` light

    # Several processes: process 0 writes the run files, all take part in every checkpoint.
    files = run_files.RunFiles(workdir, primary=distributed.is_primary())
    # The run's config is config.json, or, when that is gone, the newest checkpoint's own.
    files.check_or_write_config(cfg, restart=cfg.train.restart,
                                recorded=checkpointing.stored_config(files.checkpoint_dir))
    distributed.sync("fit:run_files_ready")  # a restart's deletions done before orbax looks
    ckpt = checkpointing.RunCheckpointer(files.checkpoint_dir, cfg)
    rule = cfg.early_stopping
    fresh = exp.init_state()
    write_param_groups(files, cfg, fresh.params)
    restored = ckpt.restore_latest(fresh)
    run = Run(seed=cfg.seed, files=files)
    if restored is None:
        state, start_epoch = fresh, 1
        files.truncate_metrics(after_epoch=0)
        for hook in hooks:
            state = hook.init_state(exp, state, [run])
    else:
        state, start_epoch = restored.state, restored.epoch + 1
        run.es = rule.state_from_dict(restored.early_stopping)
        run.consecutive = restored.consecutive_skips
        files.truncate_metrics(after_epoch=restored.epoch,
                               recovered=checkpointing.stored_records(files.checkpoint_dir))
        run.history = files.read_metrics()
        run.best_epoch = run.es.best_epoch if rule.enabled else restored.epoch
        run.last_epoch = restored.epoch
        print(f"Resumed from epoch {restored.epoch} of {files.workdir}", file=sys.stderr)

    wall_start = time.time() - files.previous_wall_time(start_epoch - 1)
    bar = run_files.Progress(cfg.train.num_epochs, initial=start_epoch - 1,
                             mode=cfg.train.progress if files.primary else "never")
    all_hooks = [*hooks, WriteMetrics(), Checkpoint(ckpt, cfg.checkpoint.every), ProgressBar(bar)]
    for hook in all_hooks:
        hook.on_start(exp, state, [run])
    with InterruptFlag() as interrupt:
        state, interrupted = run_epochs(
            _OneRun(exp), state, [run], rule=rule, schedule=exp.schedule,
            num_epochs=cfg.train.num_epochs, start_epoch=start_epoch,
            max_consecutive_skips=cfg.train.max_consecutive_skips, hooks=all_hooks,
            wall_start=wall_start, interrupt=interrupt, plateau=_plateau_rule(cfg))
    bar.close()

    best = ckpt.restore_best(fresh, run.best_epoch)
    ckpt.close()
    tested_note = None
    if best is None:
        # Nothing was ever finite, or the best step and every step before it are damaged:
        # test the last state and say so.
        best_state, best_epoch, tested_epoch = state, None, run.last_epoch or None
        if run.best_epoch is not None:
            best_epoch = run.best_epoch
            tested_note = (f"last state (epoch {run.last_epoch}): the checkpoint of the best "
                           f"epoch {run.best_epoch} and every step before it were damaged")
    else:
        best_state, best_epoch, tested_epoch = best.state, run.best_epoch, best.epoch
        if best.epoch != run.best_epoch:
            tested_note = (f"epoch {best.epoch}: the checkpoint of the best epoch "
                           f"{run.best_epoch} was damaged; the newest good step before it")
    test = exp.evaluate(*_eval_weights(exp, best_state), exp.test_split)
    history = files.read_metrics()
    summary = exp.summary(
        test, history, best_epoch=best_epoch,
        best_metric={rule.monitor: run.es.best_value} if rule.enabled else {},
        stop_reason=_stop_reason(run, interrupted),
        num_params=int(sum(x.size for x in jax.tree.leaves(best_state.params))), seed=cfg.seed,
        epochs_run=run.last_epoch, tested_epoch=tested_epoch)
    if tested_note is not None:
        summary["tested"] = tested_note
    if cfg.train.eval_weights != "last":
        summary["tested_weights"] = cfg.train.eval_weights
    if interrupted and interrupt.signum is not None:
        summary["signal"] = signal_name(interrupt.signum)
    files.write_summary(summary)
    files.close()
    for hook in all_hooks:
        hook.on_end(exp, best_state, [run])
    return FitResult(summary=summary, state=best_state, history=history, workdir=files.workdir)


# --------------------------------------------------------------------------- fit_seeds


def with_seed(cfg: Config, seed: int) -> Config:
    """`cfg` with `seed` replaced (the config a sequential run of that seed gets)."""
    return override(cfg, {"seed": int(seed)}, what="seed")


def seed_dir(workdir: str | os.PathLike, seed: int) -> pathlib.Path:
    """Where `fit_seeds` writes seed `seed`'s run files: <workdir>/seed_<seed>."""
    return pathlib.Path(workdir) / f"seed_{seed}"


def fit_seeds(cfg: Config, seeds: Sequence[int], workdir: str | os.PathLike | None, *,
              dataset=None, mesh=None, hooks: Sequence[Hook] = ()) -> list[FitResult]:
    """Trains `cfg` once per seed, all seeds as one vmapped program, through the same loop.

    Seed s gets what `fit(with_seed(cfg, s))` gets (init key, dropout and augmentation keys, batch
    order; results equal to float32 rounding: `multiseed`'s docstring), with these differences: no
    checkpoints and no resume (an interrupted group starts again), the best state kept on device,
    no per-layer statistics, the training set on the device, one process, and all seeds step
    until the last one stops (a stopped seed's extra epochs are discarded). Times are each seed's
    share of the group's (`summary["group_wall_time_s"]` is the group's).

    Args:
      cfg: the training config; `cfg.seed` is replaced by each seed.
      seeds: distinct seeds, e.g. [0, 1, 2, 3].
      workdir: run files go to `seed_dir(workdir, s)` (None: no files).
      dataset, mesh: as in `fit`.
      hooks: the study's hooks; their events hold every seed (`EpochEnd.records[i]`).

    Returns:
      One `FitResult` per seed, in `seeds` order.

    Raises:
      ValueError: bad seeds, `train.stats_every` > 0, a host-resident training set, several
        processes, or a seed directory holding checkpoints.
      workdir_lock.WorkdirBusyError: another live process holds a seed directory.
    """
    seeds = multiseed.check_seeds(seeds)
    if cfg.train.stats_every:
        raise ValueError(f"train.stats_every: {cfg.train.stats_every}; the vmapped seed mode "
                         "logs no per-layer statistics, expected 0 (or use seed_mode='sequential')")
    hooks = list(hooks)
    group = multiseed.build_seed_group(cfg, seeds, dataset=dataset, mesh=mesh,
                                       step_metrics=combined_step_metrics(hooks))
    exp = group.exp
    check_monitor(cfg, exp, hooks)
    with contextlib.ExitStack() as locks:
        if workdir is not None:
            for s in seeds:  # one owner per run directory (`workdir_lock`)
                locks.enter_context(WorkdirLock(seed_dir(workdir, s)))
        return _fit_seeds(cfg, group, seeds, workdir, hooks)


def _fit_seeds(cfg, group, seeds, workdir, hooks) -> list[FitResult]:
    exp = group.exp
    runs = [Run(seed=s) for s in seeds]
    if workdir is not None:
        for run in runs:
            f = run_files.RunFiles(seed_dir(workdir, run.seed))
            if f.checkpoint_dir.exists() and any(f.checkpoint_dir.iterdir()):
                # Even with train.restart, which only wipes a run whose config changed.
                raise ValueError(f"{f.workdir} holds checkpoints of a sequential run; resume it "
                                 "with loop.fit (seed_mode='sequential') or delete that "
                                 "directory to start it over")
            f.check_or_write_config(with_seed(cfg, run.seed), restart=cfg.train.restart)
            f.truncate_metrics(after_epoch=0)
            run.files = f
    rule = cfg.early_stopping
    states = group.init_states()
    for i, run in enumerate(runs):
        if run.files is not None:
            write_param_groups(run.files, cfg, multiseed.take(states, i).params, quiet=i > 0)
    for hook in hooks:
        states = hook.init_state(exp, states, runs)
    keep_best = KeepBest(states)
    bar = run_files.Progress(cfg.train.num_epochs, mode=cfg.train.progress)
    all_hooks = [*hooks, WriteMetrics(), keep_best, ProgressBar(bar)]
    for hook in all_hooks:
        hook.on_start(exp, states, runs)
    wall_start = time.time()
    with InterruptFlag() as interrupt:
        states, interrupted = run_epochs(
            _SeedRuns(group), states, runs, rule=rule, schedule=exp.schedule,
            num_epochs=cfg.train.num_epochs, start_epoch=1,
            max_consecutive_skips=cfg.train.max_consecutive_skips, hooks=all_hooks,
            wall_start=wall_start, interrupt=interrupt, plateau=_plateau_rule(cfg))
    bar.close()
    group_wall = time.time() - wall_start

    # As in `fit`: a seed that never had a finite monitor value reports its last state.
    never = np.array([r.best_epoch is None for r in runs])
    best = keep_best.best
    if never.any():
        best = multiseed.select(jnp.asarray(never), states, best)
    test = group.evaluate(*_seed_eval_weights(exp, best), exp.test_split)
    num_params = int(sum(x[0].size for x in jax.tree.leaves(best.params)))
    results = []
    for i, run in enumerate(runs):
        summary = exp.summary(
            {name: values[i] for name, values in test.items()}, run.history,
            best_epoch=run.best_epoch,
            best_metric={rule.monitor: run.es.best_value} if rule.enabled else {},
            stop_reason=_stop_reason(run, interrupted), num_params=num_params, seed=run.seed,
            epochs_run=run.last_epoch,
            tested_epoch=run.last_epoch if run.best_epoch is None else run.best_epoch)
        summary.update(seed_mode="vmap", seeds_together=seeds, group_wall_time_s=group_wall)
        if cfg.train.eval_weights != "last":
            summary["tested_weights"] = cfg.train.eval_weights
        if interrupted and interrupt.signum is not None:
            summary["signal"] = signal_name(interrupt.signum)
        if run.files is not None:
            run.files.write_summary(summary)
            run.files.close()
        results.append(FitResult(summary=summary, state=multiseed.take(best, i),
                                 history=run.history,
                                 workdir=None if run.files is None else run.files.workdir))
    for hook in all_hooks:
        hook.on_end(exp, best, runs)
    return results
