"""MC dropout predictions and the calibration / error-detection metrics, against numpy and sklearn."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ml_practical import models, uncertainty


def _dirichlet_probs(rng, n, k, concentration=0.3):
    return rng.dirichlet(np.full(k, concentration), size=n).astype(np.float32)


# --------------------------------------------------------------------------- calibration


def test_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    probs = _dirichlet_probs(rng, 50_000, 5)
    # Labels drawn from the predicted distribution: P(y = k | p) = p_k, calibrated by construction.
    labels = (rng.random((50_000, 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, 4)
    assert float(uncertainty.ece(probs, labels, 15)) < 0.02


def test_ece_of_an_overconfident_predictor_is_large():
    rng = np.random.default_rng(1)
    probs = _dirichlet_probs(rng, 50_000, 5, concentration=1.0)
    labels = (rng.random((50_000, 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, 4)
    # Report sharpened probabilities (temperature 1/3) while the labels follow the original ones.
    sharp = probs**3 / np.sum(probs**3, axis=1, keepdims=True)
    assert float(uncertainty.ece(sharp, labels, 15)) > 0.1
    assert float(uncertainty.ece(probs, labels, 15)) < 0.02


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
    assert float(uncertainty.ece(probs, labels, 3)) == pytest.approx(expected, abs=1e-6)
    assert float(uncertainty.ece(probs, labels, 3)) == pytest.approx(_ece_numpy(probs, labels, 3), abs=1e-6)
    rng = np.random.default_rng(2)
    p, y = _dirichlet_probs(rng, 500, 4), rng.integers(0, 4, 500)
    assert float(uncertainty.ece(p, y, 15)) == pytest.approx(_ece_numpy(p, y, 15), abs=1e-5)


def test_reliability_bins_put_confidence_one_in_the_last_bin():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    bins = uncertainty.reliability_bins(probs, np.array([0, 1]), 4)
    np.testing.assert_array_equal(bins["count"], [0, 1, 0, 1])     # 0.5 in (1/4, 2/4], 1.0 in (3/4, 1]
    np.testing.assert_array_equal(bins["correct_sum"], [0, 0, 0, 1])


def test_brier_and_nll_equal_numpy():
    rng = np.random.default_rng(3)
    p, y = _dirichlet_probs(rng, 300, 6, concentration=1.0), rng.integers(0, 6, 300)
    onehot = np.eye(6)[y]
    assert float(uncertainty.brier(p, y)) == pytest.approx(np.mean(np.sum((p - onehot) ** 2, 1)), rel=1e-5)
    assert float(uncertainty.nll(p, y)) == pytest.approx(-np.mean(np.log(p[np.arange(300), y])), rel=1e-5)
    assert float(uncertainty.accuracy(p, y)) == pytest.approx(np.mean(p.argmax(1) == y))


def test_nll_stays_finite_when_the_true_class_underflows():
    probs = jnp.array([[1.0, 0.0]], jnp.float32)
    assert float(uncertainty.nll(probs, jnp.array([1]))) == pytest.approx(-math.log(np.finfo(np.float32).tiny))


# --------------------------------------------------------------------------- AUROC and retention


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 7, 2000).astype(np.float32)          # many ties
    is_error = rng.random(2000) < 0.2 + 0.05 * scores              # errors have larger scores
    assert float(uncertainty.auroc(scores, is_error)) == pytest.approx(roc_auc_score(is_error, scores), abs=1e-6)
    cont = rng.standard_normal(2000).astype(np.float32) + is_error
    assert float(uncertainty.auroc(cont, is_error)) == pytest.approx(roc_auc_score(is_error, cont), abs=1e-6)


def test_auroc_extremes():
    assert float(uncertainty.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool))) == 1.0
    assert float(uncertainty.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool))) == 0.0
    assert float(uncertainty.auroc(np.ones(4), np.array([1, 0, 1, 0], bool))) == 0.5
    assert np.isnan(float(uncertainty.auroc(np.arange(3.0), np.zeros(3, bool))))


def test_retention_accuracy_hand_example():
    scores = np.array([0.9, 0.1, 0.5, 0.3])        # most certain first: rows 1, 3, 2, 0
    correct = np.array([False, True, False, True])
    acc = uncertainty.retention_accuracy(scores, correct, jnp.array([0.25, 0.5, 0.75, 1.0]))
    np.testing.assert_allclose(acc, [1.0, 1.0, 2 / 3, 0.5], rtol=1e-6)


# --------------------------------------------------------------------------- summaries


def test_entropy_of_uniform_is_log_k():
    assert float(uncertainty.entropy(jnp.full((7,), 1 / 7))) == pytest.approx(math.log(7), rel=1e-6)
    assert float(uncertainty.entropy(jnp.array([1.0, 0.0, 0.0]))) == 0.0


def test_mutual_information_properties():
    rng = np.random.default_rng(5)
    probs = jnp.asarray(rng.dirichlet(np.ones(4), size=(20, 50)).astype(np.float32))   # [T, N, K]
    s = uncertainty.predictive_summary(probs)
    assert np.all(np.asarray(s["mutual_information"]) >= 0)
    np.testing.assert_allclose(s["mutual_information"], s["predictive_entropy"] - s["expected_entropy"],
                               atol=1e-6)
    same = jnp.broadcast_to(probs[0], probs.shape)                 # T identical samples
    s_same = uncertainty.predictive_summary(same)
    np.testing.assert_allclose(s_same["mutual_information"], 0.0, atol=1e-6)
    np.testing.assert_allclose(s_same["std_mean_over_classes"], 0.0, atol=1e-6)
    # Two confident, disagreeing passes: H[mean] = log 2, E[H] = 0, so MI = log 2 (all epistemic).
    two = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert float(uncertainty.predictive_summary(two)["mutual_information"][0]) == pytest.approx(math.log(2))


def test_predictive_std_definitions():
    probs = jnp.array([[[0.7, 0.2, 0.1]], [[0.5, 0.4, 0.1]]])      # T = 2, N = 1, K = 3
    s = uncertainty.predictive_summary(probs)
    assert int(s["prediction"][0]) == 0 and float(s["confidence"][0]) == pytest.approx(0.6)
    assert float(s["std_predicted_class"][0]) == pytest.approx(0.1, rel=1e-5)          # std(0.7, 0.5)
    assert float(s["std_mean_over_classes"][0]) == pytest.approx((0.1 + 0.1 + 0.0) / 3, rel=1e-5)


# --------------------------------------------------------------------------- MC dropout


@pytest.fixture(scope="module")
def net():
    model = models.MLP(widths=(32, 16), num_classes=5, norm="batch", drop_rate=0.3)
    x = jax.random.normal(jax.random.PRNGKey(0), (40, 12))
    variables = jax.jit(lambda k: model.init({"params": k}, x, train=False))(jax.random.PRNGKey(1))
    # Non-trivial running statistics, so "BN on running stats" differs from batch statistics.
    _, updates = jax.jit(lambda v: model.apply(v, 3.0 + 2.0 * x, train=True, mutable=["batch_stats"],
                                               rngs={"dropout": jax.random.PRNGKey(2)}))(variables)
    return model, {**variables, **updates}, x


def _one_pass(model):
    """One stochastic forward pass, jitted so the Python loops below stay fast."""
    return jax.jit(lambda variables, x, k: jax.nn.softmax(
        model.apply(variables, x, train=False, mc_dropout=True, rngs={"dropout": k})))


def test_mc_predict_equals_a_python_loop_over_keys(net):
    model, variables, x = net
    key = jax.random.PRNGKey(3)
    probs = uncertainty.mc_predict(model, variables, x, key, num_samples=6, batch_size=None)
    assert probs.shape == (6, 40, 5)
    one = _one_pass(model)
    loop = jnp.stack([one(variables, x, jax.random.fold_in(k, 0)) for k in jax.random.split(key, 6)])
    np.testing.assert_allclose(probs, loop, atol=1e-6)
    assert float(jnp.max(jnp.std(probs, axis=0))) > 1e-3           # dropout really is on


def test_mc_predict_in_chunks_equals_the_loop_with_chunk_keys(net):
    model, variables, x = net
    key = jax.random.PRNGKey(4)
    probs = uncertainty.mc_predict(model, variables, x, key, num_samples=3, batch_size=16)  # 16+16+8(+8 pad)
    xs = jnp.concatenate([x, jnp.zeros((8, 12))]).reshape(3, 16, 12)
    one = _one_pass(model)
    for t, k in enumerate(jax.random.split(key, 3)):
        rows = [one(variables, xs[c], jax.random.fold_in(k, c)) for c in range(3)]
        np.testing.assert_allclose(probs[t], jnp.concatenate(rows)[:40], atol=1e-6)


def test_mc_predict_with_rate_zero_returns_identical_copies(net):
    _, variables, x = net
    model = models.MLP(widths=(32, 16), num_classes=5, norm="batch", drop_rate=0.0)
    probs = uncertainty.mc_predict(model, variables, x, jax.random.PRNGKey(5), num_samples=4,
                                   batch_size=16)
    det = uncertainty.predict(model, variables, x, batch_size=16)
    for t in range(4):
        np.testing.assert_array_equal(probs[t], probs[0])
    np.testing.assert_allclose(probs[0], det, atol=1e-6)
    np.testing.assert_allclose(uncertainty.predictive_summary(probs)["mutual_information"], 0.0, atol=1e-6)


def test_mc_predict_uses_running_statistics(net):
    # mc_dropout keeps BN in inference mode: the deterministic prediction equals train=False.
    model, variables, x = net
    det = uncertainty.predict(model, variables, x, batch_size=None)
    ref = jax.nn.softmax(model.apply(variables, x, train=False))
    np.testing.assert_allclose(det, ref, atol=1e-6)
    # And the MC mean over many passes is close to it (dropout's mean-field approximation).
    mean = jnp.mean(uncertainty.mc_predict(model, variables, x, jax.random.PRNGKey(6), num_samples=200), 0)
    assert float(jnp.mean(jnp.abs(mean - det))) < 0.05


def test_bad_arguments_name_the_field(net):
    model, variables, x = net
    with pytest.raises(ValueError, match="num_samples: 0; expected an integer >= 1"):
        uncertainty.mc_predict(model, variables, x, jax.random.PRNGKey(0), num_samples=0)
    with pytest.raises(ValueError, match="num_bins: 0"):
        uncertainty.ece(jnp.ones((2, 2)) / 2, jnp.zeros(2, jnp.int32), 0)
    with pytest.raises(ValueError, match=r"probs: shape \(3, 2\); expected \[T, N, K\]"):
        uncertainty.predictive_summary(jnp.ones((3, 2)))
