"""Tests for ml_practical.analysis.calibration: ECE, Brier, NLL, AUROC, retention, against numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml_practical import metrics
from ml_practical.analysis import calibration


def _dirichlet_probs(rng, n, k, concentration=0.3):
    return rng.dirichlet(np.full(k, concentration), size=n).astype(np.float32)


# --------------------------------------------------------------------------- calibration


def test_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    probs = _dirichlet_probs(rng, 50_000, 5)
    # Labels drawn from the predicted distribution: P(y = k | p) = p_k, calibrated by construction.
    labels = (rng.random((50_000, 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, 4)
    assert float(calibration.ece(probs, labels, 15)) < 0.02


def test_ece_of_an_overconfident_predictor_is_large():
    rng = np.random.default_rng(1)
    probs = _dirichlet_probs(rng, 50_000, 5, concentration=1.0)
    labels = (rng.random((50_000, 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, 4)
    # Report sharpened probabilities (temperature 1/3) while the labels follow the original ones.
    sharp = probs**3 / np.sum(probs**3, axis=1, keepdims=True)
    assert float(calibration.ece(sharp, labels, 15)) > 0.1
    assert float(calibration.ece(probs, labels, 15)) < 0.02


def _ece_numpy(probs, labels, num_bins):
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return total


def test_ece_hand_example_equals_numpy():
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8], [0.62, 0.38]],
                     np.float32)
    labels = np.array([0, 1, 1, 0, 1, 0])
    # 3 bins (0, 1/3], (1/3, 2/3], (2/3, 1]: bin 2 = {0.9 ok, 0.85 wrong, 0.7 ok, 0.8 ok},
    # bin 1 = {0.55 wrong, 0.62 ok}: ECE = 4/6 |3/4 - 0.8125| + 2/6 |1/2 - 0.585| = 0.07
    expected = 4 / 6 * abs(0.75 - 0.8125) + 2 / 6 * abs(0.5 - 0.585)
    assert float(calibration.ece(probs, labels, 3)) == pytest.approx(expected, abs=1e-6)
    assert float(calibration.ece(probs, labels, 3)) == pytest.approx(_ece_numpy(probs, labels, 3), abs=1e-6)
    rng = np.random.default_rng(2)
    p, y = _dirichlet_probs(rng, 500, 4), rng.integers(0, 4, 500)
    assert float(calibration.ece(p, y, 15)) == pytest.approx(_ece_numpy(p, y, 15), abs=1e-5)


def test_reliability_bins_put_confidence_one_in_the_last_bin():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    bins = calibration.reliability_bins(probs, np.array([0, 1]), 4)
    np.testing.assert_array_equal(bins["count"], [0, 1, 0, 1])     # 0.5 in (1/4, 2/4], 1.0 in (3/4, 1]
    np.testing.assert_array_equal(bins["correct_sum"], [0, 0, 0, 1])


def test_brier_and_nll_equal_numpy():
    rng = np.random.default_rng(3)
    p, y = _dirichlet_probs(rng, 300, 6, concentration=1.0), rng.integers(0, 6, 300)
    onehot = np.eye(6)[y]
    assert float(calibration.brier(p, y)) == pytest.approx(np.mean(np.sum((p - onehot) ** 2, 1)), rel=1e-5)
    assert float(calibration.nll(p, y)) == pytest.approx(-np.mean(np.log(p[np.arange(300), y])), rel=1e-5)
    assert float(metrics.accuracy(p, y)) == pytest.approx(np.mean(p.argmax(1) == y))


def test_nll_stays_finite_when_the_true_class_underflows():
    probs = jnp.array([[1.0, 0.0]], jnp.float32)
    assert float(calibration.nll(probs, jnp.array([1]))) == pytest.approx(-math.log(np.finfo(np.float32).tiny))


# --------------------------------------------------------------------------- AUROC and retention


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 7, 2000).astype(np.float32)          # many ties
    is_error = rng.random(2000) < 0.2 + 0.05 * scores              # errors have larger scores
    assert float(calibration.auroc(scores, is_error)) == pytest.approx(roc_auc_score(is_error, scores), abs=1e-6)
    cont = rng.standard_normal(2000).astype(np.float32) + is_error
    assert float(calibration.auroc(cont, is_error)) == pytest.approx(roc_auc_score(is_error, cont), abs=1e-6)


def test_auroc_extremes():
    assert float(calibration.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool))) == 1.0
    assert float(calibration.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool))) == 0.0
    assert float(calibration.auroc(np.ones(4), np.array([1, 0, 1, 0], bool))) == 0.5
    assert np.isnan(float(calibration.auroc(np.arange(3.0), np.zeros(3, bool))))


def test_retention_accuracy_hand_example():
    scores = np.array([0.9, 0.1, 0.5, 0.3])        # most certain first: rows 1, 3, 2, 0
    correct = np.array([False, True, False, True])
    acc = calibration.retention_accuracy(scores, correct, jnp.array([0.25, 0.5, 0.75, 1.0]))
    np.testing.assert_allclose(acc, [1.0, 1.0, 2 / 3, 0.5], rtol=1e-6)


def test_bad_num_bins_names_the_field():
    with pytest.raises(ValueError, match="num_bins: 0"):
        calibration.ece(jnp.ones((2, 2)) / 2, jnp.zeros(2, jnp.int32), 0)
