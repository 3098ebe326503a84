"""Tests for ml_practical.analysis.curves: bias-variance verdicts on synthetic loss curves."""

import json
import math

import pytest

from ml_practical.analysis import curves
from ml_practical.analysis.curves import diagnose


def _history(train, val, epochs=None):
    out = [{"train/loss": t, "val/loss": v} for t, v in zip(train, val)]
    if epochs is not None:
        for e, entry in zip(epochs, out):
            entry["epoch"] = e
    return out


# Overfitting, the section 12.8.2 picture: train falls geometrically 1.0 -> 0.01 over 20 epochs,
# val is U-shaped with its minimum 0.1 at position 7 and rises linearly by 50% to 0.15 at the end.
OVER_TRAIN = [0.01 ** (k / 19) for k in range(20)]
OVER_VAL = [0.5, 0.3, 0.2, 0.15, 0.12, 0.11, 0.105, 0.1] + [0.1 + 0.05 * (k - 7) / 12
                                                            for k in range(8, 20)]
# Underfitting: both near chance log(10) = 2.303 and close together.
UNDER_TRAIN = [2.30 - 0.01 * k for k in range(20)]   # 2.30 -> 2.11
UNDER_VAL = [2.32 - 0.009 * k for k in range(20)]    # 2.32 -> 2.149
# Good fit: both low, gap 0.01, val flat at its minimum for the last epochs.
GOOD_TRAIN = [0.5, 0.2, 0.1, 0.07, 0.06, 0.055, 0.052, 0.051, 0.05, 0.05]
GOOD_VAL = [0.45, 0.2, 0.1, 0.075, 0.065, 0.061, 0.0605, 0.06, 0.0601, 0.0602]


def test_overfitting_u_shape_numbers_match_hand_computation():
    # 0-based epoch labels, as a trainer may write them: the verdict must report these labels.
    v = diagnose(_history(OVER_TRAIN, OVER_VAL, epochs=list(range(20))))
    assert v.kind == "overfitting"
    assert v.num_epochs == 20
    assert v.best_epoch == 7
    assert v.val_loss_min == pytest.approx(0.1)
    assert v.val_loss_final == pytest.approx(0.15)
    assert v.val_rise == pytest.approx(0.5)
    assert v.train_loss_final == pytest.approx(0.01)
    assert v.train_loss_first == pytest.approx(1.0)
    assert v.train_drop == pytest.approx(0.99)
    assert v.gap_at_best == pytest.approx(0.1 - 0.01 ** (7 / 19))
    assert v.gap_final == pytest.approx(0.14)
    # Train fell from 0.01**(7/19) = 0.183 to 0.01 after the best epoch.
    assert v.train_drop_after_best == pytest.approx(1 - 0.01 / 0.01 ** (7 / 19))
    assert "rose 50% from its minimum 0.1 at epoch 7 to 0.15 at epoch 19" in v.reasons[0]
    assert v.prescriptions == curves.PRESCRIPTIONS["overfitting"]
    assert any("dropout" in p for p in v.prescriptions)


def test_epoch_labels_default_to_one_based_positions():
    v = diagnose(_history(OVER_TRAIN, OVER_VAL))
    assert v.best_epoch == 8


def test_underfitting_near_chance_with_num_classes():
    v = diagnose(_history(UNDER_TRAIN, UNDER_VAL), num_classes=10)
    assert v.kind == "underfitting"
    assert v.underfit_threshold == pytest.approx(0.5 * math.log(10))
    assert v.train_loss_min == pytest.approx(2.11)
    assert v.gap_final == pytest.approx(2.149 - 2.11)
    assert v.prescriptions == curves.PRESCRIPTIONS["underfitting"]
    assert any("bigger model" in p for p in v.prescriptions)


def test_underfitting_from_stalled_train_loss_without_chance_reference():
    # Train fell (2.30 - 2.11) / 2.30 = 8.3% < min_train_drop = 10%.
    v = diagnose(_history(UNDER_TRAIN, UNDER_VAL))
    assert v.kind == "underfitting"
    assert v.underfit_threshold is None
    assert v.train_drop == pytest.approx(0.19 / 2.30)
    # Lowering the stall threshold below the observed drop removes the only evidence.
    assert diagnose(_history(UNDER_TRAIN, UNDER_VAL), min_train_drop=0.05).kind == "good_fit"


def test_high_but_falling_train_loss_needs_a_chance_reference():
    train = [2.3 - 0.8 * k / 9 for k in range(10)]    # 2.3 -> 1.5, a 35% drop
    val = [t + 0.05 for t in train]
    assert diagnose(_history(train, val)).kind == "good_fit"
    v = diagnose(_history(train, val), chance_loss=math.log(10))
    assert v.kind == "underfitting"   # 1.5 > 0.5 * 2.303
    assert diagnose(_history(train, val), underfit_train_loss=1.6).kind == "good_fit"


def test_good_fit():
    v = diagnose(_history(GOOD_TRAIN, GOOD_VAL), num_classes=10)
    assert v.kind == "good_fit"
    assert v.best_epoch == 8          # 0.06 at position 7, 1-based label 8
    assert v.gap_at_best == pytest.approx(0.06 - 0.051)
    assert v.gap_final == pytest.approx(0.0602 - 0.05)
    assert v.val_rise == pytest.approx(0.0002 / 0.06)
    assert v.prescriptions == curves.PRESCRIPTIONS["good_fit"]


def test_rise_tolerance_is_the_boundary():
    # Early-stopping shape: val minimum 0.1 at position 6, then `patience` = 5 epochs rising to
    # 0.1 * (1 + rise) while train keeps falling slowly; the final gap share stays < 0.3 so only the
    # rise rule can fire.
    train = [0.4, 0.25, 0.18, 0.15, 0.13, 0.12, 0.11, 0.105, 0.1, 0.095, 0.09, 0.085]
    for rise, kind in ((0.09, "good_fit"), (0.11, "overfitting")):
        val = [0.3, 0.2, 0.15, 0.12, 0.11, 0.105, 0.1] + [0.1 * (1 + rise * j / 5) for j in range(1, 6)]
        v = diagnose(_history(train, val))
        assert v.val_rise == pytest.approx(rise)
        assert v.train_drop_after_best == pytest.approx(1 - 0.085 / 0.11)
        assert v.gap_final / v.val_loss_final < 0.3
        assert v.kind == kind


def test_val_rise_without_train_falling_is_not_overfitting():
    train = [0.5, 0.3, 0.2, 0.2, 0.2, 0.2]
    val = [0.5, 0.3, 0.2, 0.22, 0.24, 0.26]   # +30% but train flat after the minimum
    v = diagnose(_history(train, val))
    assert v.val_rise == pytest.approx(0.3)
    assert v.train_drop_after_best == 0.0
    assert v.kind == "good_fit"


def test_overfitting_from_gap_alone():
    train = [0.5 * 0.5 ** k for k in range(10)]   # -> 0.00098
    val = [0.3, 0.15, 0.1, 0.08, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07]
    v = diagnose(_history(train, val))
    assert v.val_rise == 0.0
    assert v.kind == "overfitting"
    assert (v.gap_final / v.val_loss_final) == pytest.approx(1 - 0.5 * 0.5 ** 9 / 0.07)
    # A looser tolerance above the observed share (0.986) accepts the gap.
    assert diagnose(_history(train, val), gap_tolerance=0.99).kind == "good_fit"


def test_bias_is_checked_before_variance():
    # High train loss and a rising val loss: the flowchart's step 1 decides.
    train = [2.3 - 0.05 * k for k in range(10)]
    val = [2.3, 2.25, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9]
    v = diagnose(_history(train, val), num_classes=10)
    assert v.kind == "underfitting"
    assert any("also high variance" in r for r in v.reasons)


def test_diverged_on_nan_and_on_rising_train_loss():
    v = diagnose(_history([1.0, 0.5, float("nan")], [1.0, 0.6, 0.7]))
    assert v.kind == "diverged"
    assert v.num_epochs == 3
    assert v.best_epoch == 2 and v.train_loss_final == 0.5   # numbers from the finite prefix
    v = diagnose(_history([float("inf")], [1.0]))
    assert v.kind == "diverged" and v.best_epoch is None and math.isnan(v.val_loss_min)
    # Train climbs from its minimum 0.2 back to 0.6: gives back (0.6 - 0.2) / (1.0 - 0.2) = 50%.
    v = diagnose(_history([1.0, 0.5, 0.2, 0.4, 0.6], [1.0, 0.5, 0.3, 0.3, 0.3]))
    assert v.kind == "diverged"
    assert "giving back 50% of its fall" in v.reasons[0]
    assert diagnose(_history([1.0, 1.2, 1.5], [1.0, 1.1, 1.2])).kind == "diverged"
    # A near-zero train loss wobbling +25% (0.004 -> 0.005) gives back 0.1% of its progress: not
    # divergence, and val rising 50% after its minimum while train fell since then is overfitting.
    v = diagnose(_history([1.0, 0.1, 0.01, 0.004, 0.005], [1.0, 0.2, 0.1, 0.12, 0.15]))
    assert v.kind == "overfitting"
    assert diagnose(_history([1.0, 0.1, 0.01, 0.004, 0.005], [1.0, 0.2, 0.1, 0.12, 0.15]),
                    diverge_tol=0.0).kind == "diverged"


def test_single_epoch():
    v = diagnose([{"train/loss": 0.3, "val/loss": 0.32, "epoch": 0}])
    assert v.kind == "good_fit"
    assert (v.best_epoch, v.val_rise, v.train_drop) == (0, 0.0, 0.0)
    assert v.gap_final == pytest.approx(0.02) and v.gap_at_best == pytest.approx(0.02)
    assert diagnose([{"train/loss": 2.2, "val/loss": 2.25}], num_classes=10).kind == "underfitting"


def test_verdict_is_frozen_and_json_ready():
    v = diagnose(_history(GOOD_TRAIN, GOOD_VAL))
    with pytest.raises(Exception):
        v.kind = "overfitting"
    d = json.loads(json.dumps(v.to_dict()))
    assert d["kind"] == "good_fit" and d["best_epoch"] == 8 and isinstance(d["reasons"], list)
    assert str(v).startswith("verdict: good_fit")


@pytest.mark.parametrize("history, match", [
    ([], r"history: empty"),
    ({"train/loss": 1.0, "val/loss": 1.0}, r"history: expected a list"),
    ([{"train/loss": 1.0}], r"history\[0\]: missing keys \['val/loss'\]"),
    ([{"train/loss": 1.0, "val/loss": 1.0}, {"loss": 1.0}],
     r"history\[1\]: missing keys \['train/loss', 'val/loss'\]"),
    ([{"train/loss": "abc", "val/loss": 1.0}], r"history\[0\]\['train/loss'\]: expected a number"),
    ([{"train/loss": -0.1, "val/loss": 1.0}], r"negative"),
    ([1.0], r"history\[0\]: expected a dict"),
])
def test_bad_history_raises(history, match):
    with pytest.raises(ValueError, match=match):
        diagnose(history)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 10, "chance_loss": 1.0}, "chance_loss: 1.0 disagrees"),
    ({"chance_loss": 0.0}, "chance_loss"),
    ({"rise_tol": -0.1}, "rise_tol"),
    ({"gap_tolerance": 1.0}, "gap_tolerance"),
    ({"underfit_fraction": 0.0}, "underfit_fraction"),
    ({"min_train_drop": 1.0}, "min_train_drop"),
    ({"diverge_tol": -1}, "diverge_tol"),
])
def test_bad_thresholds_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagnose(_history(GOOD_TRAIN, GOOD_VAL), **kwargs)
