"""Hooks: what a study adds to the one epoch loop (`ml_practical.loop`), and the loop's own.

A `Hook` overrides what it needs:
  * `init_state(exp, state, runs) -> state`: change (or record) a fresh state before training
    (LSUV re-initializes the kernels); not called when a run resumes from a checkpoint;
  * `step_metrics(old_state, new_state, metrics) -> {name: array}`: extra per-step metrics
    computed inside the compiled step (the clip statistics); they reach `on_epoch_end` per step;
  * `on_start(exp, state, runs)`; `metrics(event)`: add entries to the epoch's records (before
    early stopping sees them and before they are written); `on_epoch_end(event)`: after the
    record is final; `on_end(exp, result_state, runs)`.

The library's own: `ActivationStats` (train.stats_every), `StepLog` (per-step metrics to
<run>/steps/), and the loop's metrics writer, checkpoint, best-state keeper and progress bar.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import multiseed, run_files
from ml_practical import train as train_lib
from ml_practical.analysis.activations import make_stats_logger
from ml_practical.early_stopping import EarlyStoppingState
from ml_practical.experiment import Experiment


@dataclasses.dataclass
class Run:
    """One run's bookkeeping in the loop: a seed of a group, or the only run of `fit`.

    Attributes:
      seed: the run's seed.
      files: its run directory (None: no files).
      es: its early-stopping state (also kept when early stopping is disabled).
      consecutive: skipped steps in a row at the end of the last epoch.
      history: its metrics records, oldest first.
      best_epoch: the epoch of the state to restore (early stopping's best; the last epoch when
        early stopping is disabled); None while there is none.
      last_epoch: the last epoch trained (or restored from a checkpoint); 0 before any.
    """

    seed: int
    files: run_files.RunFiles | None = None
    es: EarlyStoppingState = dataclasses.field(default_factory=EarlyStoppingState)
    consecutive: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    last_epoch: int = 0

    @property
    def stopped(self) -> bool:
        return self.es.stopped


@dataclasses.dataclass
class EpochEnd:
    """What hooks see at the end of an epoch (lists have one entry per run; None: not trained).

    Attributes:
      epoch: the epoch just trained (1-based).
      state: the train state after it (stacked over the runs of a seed group).
      runs: the runs' bookkeeping.
      active: bool per run: trained this epoch.
      step_metrics: per run, the epoch's per-step metrics on the host.
      records: per run, the metrics record (hooks add to it in `metrics`).
      improved: bool per run: this epoch is the run's new best (set before `on_epoch_end`).
      final: no epoch follows in this loop (every run stopped, the budget is spent, or an
        interrupt); set before `on_epoch_end`.
    """

    epoch: int
    state: Any
    runs: list[Run]
    active: np.ndarray
    step_metrics: list[dict[str, np.ndarray] | None]
    records: list[dict[str, Any] | None]
    improved: np.ndarray
    final: bool = False

    @property
    def record(self) -> dict[str, Any]:
        """The record of a single-run loop."""
        if len(self.records) != 1:
            raise ValueError(f"EpochEnd.record: {len(self.records)} runs; use records[i]")
        return self.records[0]

    @property
    def steps(self) -> dict[str, np.ndarray]:
        """The per-step metrics of a single-run loop."""
        if len(self.step_metrics) != 1:
            raise ValueError(f"EpochEnd.steps: {len(self.step_metrics)} runs; use step_metrics[i]")
        return self.step_metrics[0]


class Hook:
    """Extends the loop; override what you need (see the module docstring for when each runs).

    A hook that adds entries to the records declares their names (`metric_names`) or prefixes
    (`metric_prefixes`), so an early-stopping monitor on them is accepted before the first epoch.
    """

    step_metrics: Callable | None = None  # (old_state, new_state, metrics) -> {name: array}
    metric_names: tuple[str, ...] = ()
    metric_prefixes: tuple[str, ...] = ()

    def init_state(self, exp: Experiment, state: Any, runs: list[Run]) -> Any:
        return state

    def on_start(self, exp: Experiment, state: Any, runs: list[Run]) -> None:
        pass

    def metrics(self, event: EpochEnd) -> None:
        pass

    def on_epoch_end(self, event: EpochEnd) -> None:
        pass

    def on_end(self, exp: Experiment, state: Any, runs: list[Run]) -> None:
        pass


def combined_step_metrics(hooks: Sequence[Hook]) -> train_lib.StepMetrics | None:
    fns = [h.step_metrics for h in hooks if h.step_metrics is not None]
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def combined(old, new, metrics):
        out = {}
        for fn in fns:
            out.update(fn(old, new, metrics))
        return out
    return combined


# --------------------------------------------------------------------------- the library's hooks


class ActivationStats(Hook):
    """Per-layer activation and gradient statistics every `every` epochs (`train.stats_every`).

    Adds `analysis.activations.epoch_stats` entries ("stats/dense_0/act_var", ...) to the record,
    measured on the first training examples (a fixed batch, so epochs are comparable).
    """

    metric_prefixes = ("stats/",)

    def __init__(self, every: int):
        self.every = every
        self._log = None

    def on_start(self, exp, state, runs):
        self._log = make_stats_logger(exp.model, *exp.train_arrays, every=self.every)

    def metrics(self, event):
        event.record.update(self._log(event.epoch, event.state.params, event.state.batch_stats))


class StepLog(Hook):
    """Saves each epoch's per-step metrics as <run>/steps/epoch_<e>.npz (`RunFiles.read_steps`).

    Args:
      keys: which per-step metrics to keep (None: all); nested ones (per-layer dicts) are
        flattened to "name/layer".
    """

    def __init__(self, keys: Sequence[str] | None = None):
        self.keys = None if keys is None else tuple(keys)

    def on_epoch_end(self, event):
        for run, steps in zip(event.runs, event.step_metrics):
            if steps is None or run.files is None:
                continue
            flat = run_files.flatten(steps, sep="/")
            if self.keys is not None:
                flat = {k: v for k, v in flat.items() if k.split("/")[0] in self.keys}
            run.files.write_steps(event.epoch, flat)


class WriteMetrics(Hook):
    """Appends every trained run's record to its metrics.jsonl (`run_files`)."""

    # Metrics line first, then the checkpoint: a crash between the two leaves a line for an epoch
    # that has no checkpoint, which the resume drops (`truncate_metrics`) and writes again. The
    # other order would lose the line of a saved epoch for good.
    def on_epoch_end(self, event):
        for run, record in zip(event.runs, event.records):
            if record is not None and run.files is not None:
                run.files.append_metrics(record)


class Checkpoint(Hook):
    """Saves the single run's state, early-stopping state and record (`checkpointing`).

    Every `every` epochs (0: none but the last) and at the loop's last epoch (`EpochEnd.final`).
    Between saves the newest best state waits on the device (a copy: the next epoch may donate the
    buffers) and is written as its own step, before the epoch being saved, if it is not on disk
    yet: a resume and the best-restore at the end always find what they need
    (`config.CheckpointConfig.every`).
    """

    def __init__(self, ckpt, every: int = 1):
        self.ckpt, self.every = ckpt, every
        self._best = None  # (epoch, state, early-stopping dict, record, consecutive skips)

    def on_epoch_end(self, event):
        run = event.runs[0]
        improved = bool(event.improved[0])
        due = self.every > 0 and event.epoch % self.every == 0
        if not (due or event.final):
            if improved:
                self._best = (event.epoch, jax.tree.map(jnp.copy, event.state), run.es.to_dict(),
                              dict(event.record), run.consecutive)
            return
        if self._best is not None and not improved:
            epoch, state, es, record, consecutive = self._best
            self.ckpt.save(epoch, state, es, record, consecutive, improved=True,
                           history=run.history)
        self._best = None
        self.ckpt.save(event.epoch, event.state, run.es.to_dict(), event.record, run.consecutive,
                       improved=improved, history=run.history)


class KeepBest(Hook):
    """A seed group's best states, on device: a select over the seed axis on improvement."""

    def __init__(self, states):
        self.best = jax.tree.map(jnp.copy, states)  # own buffers: the epoch may donate `states`

    def on_epoch_end(self, event):
        if event.improved.any():
            self.best = multiseed.select(jnp.asarray(event.improved), event.state, self.best)


class ProgressBar(Hook):
    """Advances the progress bar with the first trained run's record."""

    def __init__(self, bar: run_files.Progress):
        self.bar = bar

    def on_epoch_end(self, event):
        first = int(np.flatnonzero(event.active)[0])
        self.bar.update(event.records[first])


# The signals that interrupted a run in this process, newest last (`interrupted_by`).
_INTERRUPTS: list[int] = []


def interrupted_by() -> int | None:
    """The signal number that last interrupted a run of this process (None: none did).

    Signals belong to the process, so this is process-wide: a script exits with 128 + it
    (`experiments/cli.py`), the shell's convention, so a scheduler tells a pre-empted run from a
    finished one.
    """
    return _INTERRUPTS[-1] if _INTERRUPTS else None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class InterruptFlag:
    """Turns the first Ctrl-C / SIGTERM into a flag checked between epochs (a second one aborts).

    The epoch in flight finishes and is checkpointed, so an interrupt loses nothing; `signum`
    is the signal that fired.
    """

    def __init__(self):
        self.fired = False
        self.signum: int | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.fired:
            raise KeyboardInterrupt
        self.fired = True
        self.signum = signum
        _INTERRUPTS.append(signum)
        print("\nInterrupt: finishing this epoch, then restoring the best checkpoint "
              "(interrupt again to abort).", file=sys.stderr)

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # Not the main thread: leave signals alone.
            self._old = {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


