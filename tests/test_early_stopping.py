"""Tests for ml_practical.early_stopping: a table of metric sequences and their expected stops."""

import dataclasses
import json
from typing import Any, NamedTuple

import numpy as np
import pytest

from ml_practical.early_stopping import EarlyStopping, EarlyStoppingState

NAN, INF = float("nan"), float("inf")


class Row(NamedTuple):
    id: str
    options: dict[str, Any]          # EarlyStopping(**options)
    values: list[float]              # values[i] is the metric at epoch i + 1
    stop_epoch: int | None           # None: the sequence ends without a stop
    best_epoch: int | None
    reason: str | None
    improved: list[int]              # epochs at which update returned improved=True


MIN = {"monitor": "val/loss", "mode": "min"}
MAX = {"monitor": "val/accuracy", "mode": "max"}

ROWS = [
    # Decrease, then a plateau: equal is not better, stop on the 3rd non-improving evaluation.
    Row("min_plateau", {**MIN, "patience": 3}, [1.0, 0.8, 0.6, 0.6, 0.7, 0.65, 0.5],
        6, 3, "patience", [1, 2, 3]),
    Row("min_recovers_within_patience", {**MIN, "patience": 2},
        [1.0, 1.1, 0.9, 1.0, 1.0, 0.1], 5, 3, "patience", [1, 3]),
    Row("max_accuracy", {**MAX, "patience": 2}, [0.5, 0.7, 0.9, 0.85, 0.9, 0.95],
        5, 3, "patience", [1, 2, 3]),
    Row("max_recovers_within_patience", {**MAX, "patience": 2},
        [0.5, 0.6, 0.55, 0.7, 0.65, 0.6, 0.8], 6, 4, "patience", [1, 2, 4]),
    # min_delta: 1.8 and 1.75 are not below 2.0 - 0.25 (the boundary is not an improvement).
    Row("min_delta_small_steps_ignored", {**MIN, "patience": 2, "min_delta": 0.25},
        [2.0, 1.8, 1.75, 1.0], 3, 1, "patience", [1]),
    # Small steps are measured against the best, not the previous value: 1.6, 1.5 vs 1.7 - 0.25.
    Row("min_delta_against_best", {**MIN, "patience": 2, "min_delta": 0.25},
        [2.0, 1.8, 1.7, 1.6, 1.5, 1.4], 5, 3, "patience", [1, 3]),
    Row("max_min_delta", {**MAX, "patience": 2, "min_delta": 0.01},
        [0.90, 0.905, 0.92, 0.925], None, 3, None, [1, 3]),
    # patience=0 stops on the first evaluation that does not improve (Keras, Lightning).
    Row("patience_0", {**MIN, "patience": 0}, [1.0, 0.9, 0.9, 0.5], 3, 2, "patience", [1, 2]),
    Row("patience_0_max", {**MAX, "patience": 0}, [0.1, 0.2, 0.3, 0.3], 4, 3, "patience",
        [1, 2, 3]),
    # patience=None never stops for patience, yet keeps the best.
    Row("patience_none", {**MIN, "patience": None}, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 7.0],
        None, 7, None, [1, 7]),
    Row("patience_none_still_stops_on_nan", {**MIN, "patience": None}, [1.0, 2.0, NAN, 0.1],
        3, 1, "non_finite", [1]),
    # Baseline: values that do not beat it are not improvements and count toward patience.
    Row("baseline_never_reached", {**MIN, "patience": 3, "baseline": 0.5},
        [1.0, 0.9, 0.8, 0.7, 0.4], 3, None, "patience", []),
    Row("baseline_never_reached_max", {**MAX, "patience": 2, "baseline": 0.8},
        [0.7, 0.79, 0.81], 2, None, "patience", []),
    Row("baseline_reached_last_chance", {**MIN, "patience": 2, "baseline": 0.5},
        [0.9, 0.4, 0.9, 0.9], 4, 2, "patience", [2]),
    Row("baseline_reached", {**MIN, "patience": 3, "baseline": 0.5},
        [0.9, 0.45, 0.5, 0.46, 0.44, 0.6, 0.6, 0.6, 0.1], 8, 5, "patience", [2, 5]),
    # min_delta applies to the baseline too: 0.8 is not below 1.0 - 0.25, 0.7 is.
    Row("baseline_with_min_delta", {**MIN, "patience": 2, "baseline": 1.0, "min_delta": 0.25},
        [0.8, 0.7, 0.5], None, 2, None, [2]),
    # start_from_epoch: epochs 1-2 are warm-up; 0.1 would otherwise be the best and stop at 3.
    Row("start_from_epoch_ignores_early", {**MIN, "patience": 2, "start_from_epoch": 3},
        [0.1, 5.0, 1.0, 1.2, 0.9, 1.0, 1.1], 7, 5, "patience", [3, 5]),
    Row("start_from_epoch_ignores_spike_over_threshold",
        {**MIN, "patience": 5, "start_from_epoch": 2, "divergence_threshold": 10.0},
        [50.0, 1.0, 20.0], 3, 2, "diverged", [2]),
    Row("start_from_epoch_nan_in_warmup_stops", {**MIN, "patience": 5, "start_from_epoch": 3},
        [NAN, 1.0], 1, None, "non_finite", []),
    # Patience for the baseline counts from start_from_epoch.
    Row("start_from_epoch_with_baseline",
        {**MIN, "patience": 2, "baseline": 0.5, "start_from_epoch": 3},
        [0.1, 0.1, 0.9, 0.9, 0.1], 4, None, "patience", []),
    # Divergence: strictly worse than the threshold; the diverged value is not the best.
    Row("diverged_min", {**MIN, "patience": 5, "divergence_threshold": 10.0},
        [3.0, 2.0, 10.0, 12.0, 1.0], 4, 2, "diverged", [1, 2]),
    Row("diverged_max", {**MAX, "patience": 5, "divergence_threshold": 0.2},
        [0.5, 0.6, 0.2, 0.1], 4, 2, "diverged", [1, 2]),
    Row("diverged_first_evaluation", {**MIN, "patience": 5, "divergence_threshold": 1.0},
        [2.0], 1, None, "diverged", []),
    # Non-finite values: never the best, always a stop.
    Row("nan", {**MIN, "patience": 5}, [1.0, NAN, 0.5], 2, 1, "non_finite", [1]),
    Row("nan_first", {**MIN, "patience": 5}, [NAN, 0.5], 1, None, "non_finite", []),
    Row("pos_inf_min", {**MIN, "patience": 5}, [1.0, INF], 2, 1, "non_finite", [1]),
    Row("neg_inf_min", {**MIN, "patience": 5}, [1.0, -INF], 2, 1, "non_finite", [1]),
    Row("neg_inf_max", {**MAX, "patience": 5}, [0.5, -INF], 2, 1, "non_finite", [1]),
    Row("pos_inf_max", {**MAX, "patience": 5}, [0.5, INF], 2, 1, "non_finite", [1]),
    Row("nan_max", {**MAX, "patience": 5}, [0.5, 0.6, NAN], 3, 2, "non_finite", [1, 2]),
    # The chapter's example (12.6.2): patience=10, min_delta=1e-4. 0.49995 is a gain of 5e-5,
    # too small; 0.4998 beats 0.5 - 1e-4 and resets the wait; ten flat epochs then stop.
    Row("chapter_patience10_min_delta1e-4", {**MIN, "patience": 10, "min_delta": 1e-4},
        [1.0, 0.5] + [0.49995] * 8 + [0.4998] * 11 + [0.1], 21, 11, "patience", [1, 2, 11]),
]


def run(stopper: EarlyStopping, values, state: EarlyStoppingState | None = None, start: int = 0):
    """Feeds values[start:] (epoch = index + 1) until the rule stops; returns state, improved."""
    state = stopper.initial_state() if state is None else state
    improved = []
    for i in range(start, len(values)):
        if state.stopped:
            break
        state, imp = stopper.update(state, i + 1, {stopper.monitor: values[i], "lr": 0.1})
        # best_value is finite or None at every step, so strict JSON always holds the state.
        json.dumps(state.to_dict(), allow_nan=False)
        if imp:
            improved.append(i + 1)
    return state, improved


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_table(row):
    state, improved = run(EarlyStopping(**row.options), row.values)
    assert (state.stop_epoch, state.best_epoch, state.stop_reason) == (
        row.stop_epoch, row.best_epoch, row.reason)
    assert state.stopped == (row.reason is not None)
    assert improved == row.improved
    expected_best = None if row.best_epoch is None else row.values[row.best_epoch - 1]
    assert state.best_value == expected_best
    n_seen = row.stop_epoch if row.stop_epoch is not None else len(row.values)
    assert state.num_evaluations == n_seen
    assert state.last_epoch == n_seen


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_resume_through_json_matches_uninterrupted(row):
    stopper = EarlyStopping(**row.options)
    full, full_improved = run(stopper, row.values)
    for k in range(full.num_evaluations + 1):
        head, head_improved = run(stopper, row.values[:k])
        snapshot = head.to_dict()
        restored = EarlyStoppingState.from_dict(json.loads(json.dumps(snapshot)))
        assert restored == head
        resumed, tail_improved = run(stopper, row.values, state=restored, start=k)
        assert resumed == full, f"resume after {k} evaluations"
        assert head_improved + tail_improved == full_improved
        assert head.to_dict() == snapshot  # update never mutated the state it was given


class ChapterEarlyStopping:
    """The chapter's class (12.6.2), verbatim except for the model weights."""

    def __init__(self, patience=10, min_delta=1e-4):
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.wait = 0
        self.best_epoch = None

    def __call__(self, val_loss, epoch):
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss = val_loss
            self.wait = 0
            self.best_epoch = epoch
            return False
        self.wait += 1
        if self.wait >= self.patience:
            return True
        return False


@pytest.mark.parametrize("seed", range(8))
def test_matches_chapter_reference_on_noisy_curves(seed):
    rng = np.random.default_rng(seed)
    t = np.arange(300)
    # A validation curve that falls, flattens and turns up (overfitting), plus noise at the
    # scale of min_delta so that the 1e-4 threshold matters.
    curve = np.exp(-t / 30) + 1e-5 * (t - 120).clip(0) + rng.normal(0, 2e-4, t.size)
    curve = [float(v) for v in curve]
    ref = ChapterEarlyStopping(patience=10, min_delta=1e-4)
    ref_stop = next((e for e, v in enumerate(curve, 1) if ref(v, e)), None)
    state, _ = run(EarlyStopping(monitor="val/loss", mode="min", patience=10, min_delta=1e-4),
                   curve)
    assert ref_stop is not None and ref_stop < len(curve)
    assert (state.stop_epoch, state.best_epoch, state.best_value) == (
        ref_stop, ref.best_epoch, ref.best_loss)
    assert state.wait == ref.wait == 10


def test_accepts_numpy_and_jax_scalars():
    import jax.numpy as jnp

    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=1)
    state, imp1 = stopper.update(stopper.initial_state(), 1, {"val/loss": jnp.float32(0.3)})
    state, imp2 = stopper.update(state, 2, {"val/loss": np.float64(0.25)})
    state, imp3 = stopper.update(state, 3, {"val/loss": jnp.asarray(0.3, jnp.float32)})
    assert (imp1, imp2, imp3) == (True, True, False)
    assert type(state.best_value) is float and state.best_value == 0.25
    assert (state.stop_epoch, state.stop_reason) == (3, "patience")


def test_warmup_evaluations_are_counted_but_not_monitored():
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=1, start_from_epoch=5)
    state, _ = run(stopper, [0.1, 0.2, 0.3, 0.4])
    assert state == EarlyStoppingState(num_evaluations=4, last_epoch=4)


def test_evaluations_every_few_epochs_count_evaluations_not_epochs():
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=2)
    state = stopper.initial_state()
    for epoch, loss in [(5, 1.0), (10, 1.0), (15, 0.9), (20, 0.95)]:
        state, _ = stopper.update(state, epoch, {"val/loss": loss})
    assert (state.stopped, state.wait, state.best_epoch) == (False, 1, 15)
    state, _ = stopper.update(state, 25, {"val/loss": 0.95})
    assert (state.stop_epoch, state.stop_reason) == (25, "patience")


def test_trainer_stop_overrides_reason_at_same_epoch_only():
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=0)
    state, _ = run(stopper, [1.0, 1.0])
    assert (state.stop_epoch, state.stop_reason) == (2, "patience")
    forced = stopper.stop(state, 2, "non_finite")
    assert (forced.stop_epoch, forced.stop_reason) == (2, "non_finite")
    assert dataclasses.replace(forced, stop_reason="patience") == state
    with pytest.raises(ValueError, match="already fired at epoch 2"):
        stopper.stop(state, 3, "non_finite")
    with pytest.raises(ValueError, match=r"reason: unknown 'max_epochs'; expected one of"):
        stopper.stop(stopper.initial_state(), 1, "max_epochs")


# --- Bad input ------------------------------------------------------------------------------

def test_mode_is_required():
    with pytest.raises(TypeError, match="mode"):
        EarlyStopping(monitor="val/loss", patience=3)


@pytest.mark.parametrize("mode", ["auto", "MIN", "minimize", None, ""])
def test_invalid_mode_names_field_and_allowed_values(mode):
    # The section's dotted field, as config.check_fields names it; None is refused as
    # "early_stopping.mode: None; expected one of [...]", without the word "unknown".
    with pytest.raises(ValueError,
                       match=r"early_stopping\.mode: .*expected one of \['max', 'min'\]"):
        EarlyStopping(monitor="val/loss", mode=mode, patience=3)


@pytest.mark.parametrize("field, value", [
    ("patience", -1), ("patience", 2.5), ("patience", True),
    ("min_delta", -1e-4), ("min_delta", NAN), ("min_delta", INF),
    ("start_from_epoch", -1), ("start_from_epoch", None),
    ("baseline", NAN), ("baseline", -INF),
    ("divergence_threshold", INF), ("divergence_threshold", "10"),
    ("monitor", ""),
])
def test_invalid_option_names_field(field, value):
    options = {"monitor": "val/loss", "mode": "min", "patience": 3, field: value}
    with pytest.raises(ValueError, match=rf"early_stopping\.{field}: "):
        EarlyStopping(**options)


def test_missing_monitor_key_lists_available_keys():
    stopper = EarlyStopping(monitor="val/los", mode="min", patience=3)
    with pytest.raises(ValueError, match=r"'val/los' is not in the metrics; available keys: "
                                         r"\['train/loss', 'val/accuracy', 'val/loss'\]"):
        stopper.update(stopper.initial_state(), 1,
                       {"val/loss": 1.0, "train/loss": 1.0, "val/accuracy": 0.5})


def test_update_after_stop_raises():
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=5)
    state, _ = run(stopper, [NAN])
    with pytest.raises(ValueError, match=r"stopped: the rule already fired at epoch 1 "
                                         r"\(reason 'non_finite'\)"):
        stopper.update(state, 2, {"val/loss": 1.0})


@pytest.mark.parametrize("epoch", [2, 1, -1, 2.0, True])
def test_epoch_must_increase(epoch):
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=5)
    state, _ = run(stopper, [1.0, 0.9])
    with pytest.raises(ValueError, match="epoch: "):
        stopper.update(state, epoch, {"val/loss": 0.5})


@pytest.mark.parametrize("value", [np.zeros(2), "0.5", None])
def test_non_scalar_metric_raises(value):
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=5)
    with pytest.raises(ValueError, match=r"metrics\['val/loss'\]: expected a real scalar"):
        stopper.update(stopper.initial_state(), 1, {"val/loss": value})


GOOD = EarlyStoppingState(best_value=0.5, best_epoch=3, wait=2, num_evaluations=5,
                          last_epoch=5).to_dict()


@pytest.mark.parametrize("change, match", [
    ({"extra": 1}, r"unknown keys \['extra'\]"),
    ({"best_value": INF}, r"best_value: inf; expected a finite number"),
    ({"best_value": None}, "best_value and best_epoch must both be set"),
    ({"wait": -1}, r"wait: -1; expected an integer >= 0"),
    ({"stopped": True}, r"stop_reason: None with stop_epoch None"),
    ({"stopped": True, "stop_reason": "max_epochs", "stop_epoch": 5}, "stop_reason: 'max_epochs'"),
    ({"stop_reason": "patience"}, "must be None when stopped is False"),
    ({"stopped": 1}, "stopped: 1; expected a bool"),
])
def test_from_dict_rejects_bad_state(change, match):
    with pytest.raises(ValueError, match=match):
        EarlyStoppingState.from_dict({**GOOD, **change})


def test_from_dict_rejects_missing_key():
    d = dict(GOOD)
    del d["wait"]
    with pytest.raises(ValueError, match=r"missing keys \['wait'\]"):
        EarlyStoppingState.from_dict(d)
