"""Tests for ml_practical.uncertainty: MC dropout predictions and predictive summaries."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ml_practical import models, uncertainty


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
    with pytest.raises(ValueError, match=r"probs: shape \(3, 2\); expected \[T, N, K\]"):
        uncertainty.predictive_summary(jnp.ones((3, 2)))


def test_mc_predict_refuses_a_model_without_mc_dropout():
    model = models.Linear(num_classes=3)
    x = jnp.ones((4, 5))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    assert not models.supports_mc_dropout(model)
    with pytest.raises(ValueError, match="model: Linear takes no `mc_dropout` keyword"):
        uncertainty.mc_predict(model, variables, x, jax.random.PRNGKey(1), num_samples=2)
    # The deterministic prediction needs no dropout mode.
    np.testing.assert_allclose(uncertainty.predict(model, variables, x, batch_size=None),
                               jnp.full((4, 3), 1 / 3), atol=1e-6)
