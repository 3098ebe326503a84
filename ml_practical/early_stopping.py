"""Early stopping with patience: a pure rule over a stream of validation metrics.

The chapter's algorithm (section 12.6.2, "Early Stopping with Patience"):

  1. Set patience = P (number of epochs to wait for improvement)
  2. Track best_val_loss = inf and wait = 0
  3. After each epoch: if val_loss < best_val_loss - min_delta, update best, save, wait = 0
  4. Else: wait += 1. If wait >= patience, stop training.
  5. Restore the model weights from the best checkpoint.

Here the rule is split in two: `EarlyStopping` holds the options (frozen, hashable) and
`EarlyStoppingState` the counters (frozen, JSON-serializable, saved in every checkpoint so a resumed
run keeps counting). `EarlyStopping.update(state, epoch, metrics)` returns a new state and whether
this evaluation is the new best (the caller saves its "best" checkpoint then); step 5 is the
trainer's job. Usage:

    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=10, min_delta=1e-4)
    es = stopper.initial_state()
    for epoch in range(1, num_epochs + 1):
        ...
        es, improved = stopper.update(es, epoch, {"val/loss": val_loss})
        if es.stopped:
            break

Semantics, and where they follow or differ from Keras (`keras.callbacks.EarlyStopping`) and
PyTorch Lightning (`lightning.pytorch.callbacks.EarlyStopping`):

- `mode` is required, "min" or "max". Keras's mode="auto" (guess from the metric's name) is not
  offered: "val/auc" or "val/error" would be guessed wrong without a word.
- Improvement is strict and beats the best by more than `min_delta` (the chapter's test):
  min: value < best - min_delta; max: value > best + min_delta. Keras and Lightning agree.
- Patience counts evaluations, not epochs (as Lightning does when validating every n epochs):
  `wait` is the number of evaluations since the last improvement, and the run stops when
  wait >= patience. So patience=10 stops on the 10th evaluation without improvement, and
  patience=0 stops on the first one (Keras and Lightning agree). patience=None never stops for
  patience: the object then only tracks the best and watches for divergence and non-finite values.
- `baseline` (Keras): until some value beats the baseline (by more than min_delta), the baseline
  acts as the best. Values that do not beat it are not improvements (`improved` is False,
  `best_value` stays None) and count toward patience, so a run that never reaches the baseline
  stops with reason "patience" on its `patience`-th monitored evaluation with best_epoch None.
  Keras 3 differs slightly: it records such a value as its best while not resetting `wait`.
- `start_from_epoch` (Keras): evaluations with epoch < start_from_epoch are warm-up. They cannot
  be the best, do not count toward patience and are not checked against `divergence_threshold`
  (warm-up spikes are what the option is for). Unlike Keras, a NaN/Inf value stops the run even
  in warm-up: weights that produce NaN do not recover, and waiting only burns compute.
- `divergence_threshold` (Lightning): a finite value worse than the threshold (min: value >
  threshold; max: value < threshold) stops the run with reason "diverged", and is not the best.
- A NaN or +-Inf value is never the best and stops the run with reason "non_finite" (Lightning's
  check_finite=True). So `best_value` is always finite or None, which JSON can hold.
- A missing monitor key raises ValueError listing the available keys (Keras only warns, and
  Lightning raises); a misspelt key would otherwise silently disable early stopping.
- `update` on a stopped state raises ValueError: the caller must check `state.stopped` (a resumed
  run that had already stopped has nothing left to do). Epochs must strictly increase.
- Reasons "max_epochs" and "interrupted" belong to the trainer, not to this rule; `update` returns
  only "patience", "diverged" and "non_finite", and `stop` lets the trainer record one of those
  for a cause it detects itself (e.g. too many skipped non-finite steps).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from ml_practical.config import ConfigError, check_fields, field

import numpy as np

MONITOR_MODES = ("max", "min")
STOP_REASONS = ("diverged", "non_finite", "patience")


@dataclasses.dataclass(frozen=True)
class EarlyStoppingState:
    """Counters of the early-stopping rule; everything is a plain int, float, str, bool or None.

    Attributes:
      best_value: best monitored value so far (always finite), or None while nothing has improved
        (no evaluation yet, only warm-up evaluations, or the baseline not beaten yet).
      best_epoch: epoch of `best_value`, or None.
      wait: monitored evaluations since the last improvement (the chapter's `wait`).
      stopped: whether the rule has fired.
      stop_reason: one of STOP_REASONS when stopped, else None.
      stop_epoch: epoch at which it fired, else None.
      num_evaluations: number of `update` calls accepted, warm-up included.
      last_epoch: epoch of the last accepted `update`, or None; the next must be larger.
    """

    best_value: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False
    stop_reason: str | None = None
    stop_epoch: int | None = None
    num_evaluations: int = 0
    last_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the state as a JSON-compatible dict (finite floats, ints, bool, str, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EarlyStoppingState:
        """Rebuilds a state written by `to_dict` (also after json.dumps/json.loads), checking it.

        Raises:
          ValueError: on missing or unknown keys, wrong types, or inconsistent stop fields.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        missing = sorted(set(names) - set(d))
        unknown = sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"EarlyStoppingState: missing keys {missing}, unknown keys {unknown}; "
                             f"expected exactly {sorted(names)}")

        def as_int(name: str, allow_none: bool) -> int | None:
            v = d[name]
            if v is None and allow_none:
                return None
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"EarlyStoppingState.{name}: {v!r}; expected an integer >= 0"
                                 + (" or None" if allow_none else ""))
            return int(v)

        best = d["best_value"]
        if best is not None:
            if (isinstance(best, bool) or not isinstance(best, numbers.Real)
                    or not math.isfinite(best)):
                raise ValueError(f"EarlyStoppingState.best_value: {best!r}; expected a finite "
                                 "number or None")
            best = float(best)
        if not isinstance(d["stopped"], bool):
            raise ValueError(f"EarlyStoppingState.stopped: {d['stopped']!r}; expected a bool")
        state = cls(best_value=best, best_epoch=as_int("best_epoch", True),
                    wait=as_int("wait", False), stopped=d["stopped"],
                    stop_reason=d["stop_reason"], stop_epoch=as_int("stop_epoch", True),
                    num_evaluations=as_int("num_evaluations", False),
                    last_epoch=as_int("last_epoch", True))
        if (best is None) != (state.best_epoch is None):
            raise ValueError("EarlyStoppingState: best_value and best_epoch must both be set or "
                             f"both be None, got {best!r} and {state.best_epoch!r}")
        if state.stopped:
            if state.stop_reason not in STOP_REASONS or state.stop_epoch is None:
                raise ValueError(f"EarlyStoppingState.stop_reason: {state.stop_reason!r} with "
                                 f"stop_epoch {state.stop_epoch!r}; a stopped state needs one of "
                                 f"{list(STOP_REASONS)} and an epoch")
        elif state.stop_reason is not None or state.stop_epoch is not None:
            raise ValueError("EarlyStoppingState: stop_reason and stop_epoch must be None when "
                             f"stopped is False, got {state.stop_reason!r}, {state.stop_epoch!r}")
        return state


@dataclasses.dataclass(frozen=True, kw_only=True)
class EarlyStopping:
    """Options of the patience rule (chapter 12.6.2), and the `early_stopping` config section.

    See the module docstring for the semantics.

    Attributes:
      monitor: metric key, e.g. "val/loss" or "val/accuracy".
      mode: "min" (loss, error) or "max" (accuracy, AUC). Required; never guessed.
      patience: monitored evaluations without improvement before stopping (stop when
        wait >= patience); 0 stops on the first non-improvement; None never stops for patience.
      min_delta: an improvement must beat the best by more than this (>= 0).
      baseline: optional value the metric must beat (by more than min_delta) to count as an
        improvement at all.
      start_from_epoch: evaluations at epochs below this are warm-up (not monitored, except that
        NaN/Inf still stops).
      divergence_threshold: optional; a finite value worse than it stops with "diverged".
      enabled: False switches the rule off for the training loop (`ml_practical.loop`): nothing
        stops the run before its epoch budget but non-finite steps, and the last state is the one
        restored and tested. `update` itself ignores this field.
    """

    section: ClassVar[str] = "early_stopping"
    monitor: str
    mode: str = field(choices=MONITOR_MODES)
    patience: int | None = field(ge=0)
    min_delta: float = field(0.0, ge=0)
    baseline: float | None = None
    start_from_epoch: int = field(0, ge=0)
    divergence_threshold: float | None = None
    enabled: bool = True

    def __post_init__(self):
        check_fields(self, self.section)
        if not self.monitor:
            raise ConfigError(f"early_stopping.monitor: {self.monitor!r}; expected a non-empty "
                              "metric key such as 'val/loss'")
        for name in ("baseline", "divergence_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"early_stopping.{name}: {value!r}; expected a finite number "
                                  "or None")

    def initial_state(self) -> EarlyStoppingState:
        """Returns the state before any evaluation (the chapter's best = inf, wait = 0)."""
        return EarlyStoppingState()

    def state_from_dict(self, d: Mapping[str, Any]) -> EarlyStoppingState:
        """Same as `EarlyStoppingState.from_dict`; here so a trainer needs only the stopper."""
        return EarlyStoppingState.from_dict(d)

    def is_improvement(self, value: float, reference: float) -> bool:
        """Whether `value` beats `reference` by more than min_delta (the chapter's test)."""
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def update(self, state: EarlyStoppingState, epoch: int,
               metrics: Mapping[str, Any]) -> tuple[EarlyStoppingState, bool]:
        """Feeds one evaluation to the rule (steps 3-4 of the chapter's algorithm).

        Args:
          state: the current state; not modified.
          epoch: the evaluated epoch (any integer >= 0, strictly larger than the last one).
          metrics: mapping that holds `monitor`; the value may be a Python, NumPy or 0-d JAX scalar.
            Other keys are ignored.

        Returns:
          (new_state, improved): improved is True when this evaluation became the best, i.e. when
          the caller should save its best checkpoint.

        Raises:
          ValueError: if the state has already stopped, the epoch does not increase, `monitor` is
            missing from `metrics` (the message lists the keys), or its value is not a scalar.
        """
        if state.stopped:
            raise ValueError(f"EarlyStoppingState.stopped: the rule already fired at epoch "
                             f"{state.stop_epoch} (reason {state.stop_reason!r}); check "
                             "state.stopped before calling update")
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch: {epoch!r}; expected an integer >= 0")
        epoch = int(epoch)
        if state.last_epoch is not None and epoch <= state.last_epoch:
            raise ValueError(f"epoch: {epoch} is not after the last evaluated epoch "
                             f"{state.last_epoch}; epochs must strictly increase")
        value = self._read(metrics)

        seen = dataclasses.replace(state, num_evaluations=state.num_evaluations + 1,
                                   last_epoch=epoch)
        if not math.isfinite(value):
            return self._stopped(seen, epoch, "non_finite"), False
        if epoch < self.start_from_epoch:
            return seen, False
        if self.divergence_threshold is not None and self._diverged(value):
            return self._stopped(seen, epoch, "diverged"), False

        # Until something beats the baseline, the baseline plays the part of the best.
        reference = state.best_value if state.best_value is not None else self.baseline
        if reference is None or self.is_improvement(value, reference):
            return dataclasses.replace(seen, best_value=value, best_epoch=epoch, wait=0), True
        seen = dataclasses.replace(seen, wait=state.wait + 1)
        if self.patience is not None and seen.wait >= self.patience:
            return self._stopped(seen, epoch, "patience"), False
        return seen, False

    def stop(self, state: EarlyStoppingState, epoch: int, reason: str) -> EarlyStoppingState:
        """Records a stop the trainer detected itself (e.g. "non_finite" training steps).

        Stopping a state that already stopped at the same epoch replaces the reason: the caller's
        cause was found after `update` and is the more specific one.

        Args:
          state: the current state; not modified.
          epoch: the epoch at which training stops (not before the last evaluated epoch).
          reason: one of STOP_REASONS.

        Returns:
          The stopped state; counters and best are unchanged.

        Raises:
          ValueError: on an unknown reason, an epoch before the last evaluation, or a state that
            already stopped at another epoch.
        """
        if reason not in STOP_REASONS:
            raise ValueError(f"reason: unknown {reason!r}; expected one of {list(STOP_REASONS)}")
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch: {epoch!r}; expected an integer >= 0")
        if state.last_epoch is not None and epoch < state.last_epoch:
            raise ValueError(f"epoch: {epoch} is before the last evaluated epoch "
                             f"{state.last_epoch}")
        if state.stopped and state.stop_epoch != epoch:
            raise ValueError(f"EarlyStoppingState.stopped: the rule already fired at epoch "
                             f"{state.stop_epoch} (reason {state.stop_reason!r})")
        return self._stopped(state, int(epoch), reason)

    def _diverged(self, value: float) -> bool:
        # Strict, as Lightning's divergence_threshold: the threshold itself is still acceptable.
        if self.mode == "min":
            return value > self.divergence_threshold
        return value < self.divergence_threshold

    @staticmethod
    def _stopped(state: EarlyStoppingState, epoch: int, reason: str) -> EarlyStoppingState:
        return dataclasses.replace(state, stopped=True, stop_reason=reason, stop_epoch=epoch)

    def _read(self, metrics: Mapping[str, Any]) -> float:
        if not isinstance(metrics, Mapping):
            raise ValueError(f"metrics: expected a mapping of metric names to values, got "
                             f"{type(metrics).__name__}")
        if self.monitor not in metrics:
            raise ValueError(f"EarlyStopping.monitor: {self.monitor!r} is not in the metrics; "
                             f"available keys: {sorted(map(str, metrics))}")
        raw = np.asarray(metrics[self.monitor])
        if raw.ndim != 0 or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
            raise ValueError(f"metrics[{self.monitor!r}]: expected a real scalar, got shape "
                             f"{raw.shape} dtype {raw.dtype}")
        return float(raw)
