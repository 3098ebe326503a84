"""Tests for ml_practical.tasks: objectives against losses, optax and numpy; eval sums, finalize."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ml_practical import losses, metrics, tasks

N, K = 24, 5


def _classification_batch(seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return 3.0 * jax.random.normal(kx, (N, K)), jax.random.randint(ky, (N,), 0, K)


def _regression_batch(seed=1):
    kz, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kz, (N,)), 2.0 + jax.random.normal(ky, (N,))


def _binary_batch(seed=2):
    kz, ky = jax.random.split(jax.random.key(seed))
    return 4.0 * jax.random.normal(kz, (N,)), jax.random.bernoulli(ky, 0.4, (N,)).astype(jnp.int32)


def _pad(outputs, labels, rows, seed=3):
    """Appends `rows` garbage rows (huge outputs, arbitrary labels) and weights 1 ... 1, 0 ... 0."""
    junk = 1e3 * jax.random.normal(jax.random.key(seed), (rows,) + outputs.shape[1:])
    padded_out = jnp.concatenate([outputs, junk.astype(outputs.dtype)])
    padded_lab = jnp.concatenate([labels, jnp.zeros((rows,) + labels.shape[1:], labels.dtype)])
    weights = jnp.concatenate([jnp.ones(len(labels)), jnp.zeros(rows)])
    return padded_out, padded_lab, weights


# --------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_classification_objective_is_cross_entropy_with_smoothing(smoothing):
    logits, labels = _classification_batch()
    task = tasks.Classification(label_smoothing=smoothing)
    np.testing.assert_allclose(task.objective(logits, labels),
                               losses.cross_entropy(logits, labels, label_smoothing=smoothing),
                               rtol=1e-6)
    if smoothing:  # the smoothing is really applied
        assert abs(float(task.objective(logits, labels))
                   - float(losses.cross_entropy(logits, labels))) > 1e-3


def test_classification_train_metrics_are_unsmoothed_loss_and_accuracy():
    logits, labels = _classification_batch()
    got = tasks.Classification(label_smoothing=0.2).train_metrics(logits, labels)
    np.testing.assert_allclose(got["loss"], losses.cross_entropy(logits, labels), rtol=1e-6)
    np.testing.assert_allclose(got["accuracy"], metrics.accuracy(logits, labels))


def test_regression_objective_is_half_mean_squared_error():
    z, y = _regression_batch()
    zn, yn = np.asarray(z, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(tasks.Regression().objective(z, y), 0.5 * np.mean((yn - zn) ** 2),
                               rtol=1e-6)


def test_binary_objective_is_sigmoid_cross_entropy():
    z, y = _binary_batch()
    got = tasks.Binary().objective(z, y)
    np.testing.assert_allclose(got, jnp.mean(optax.sigmoid_binary_cross_entropy(z, y)), rtol=1e-6)
    # -[y log s(z) + (1 - y) log(1 - s(z))], log s(z) = -log(1 + e^-z), log(1 - s(z)) = log s(z) - z.
    zn, yn = np.asarray(z, np.float64), np.asarray(y, np.float64)
    log_sig = -np.logaddexp(0.0, -zn)
    want = -np.mean(yn * log_sig + (1 - yn) * (log_sig - zn))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_binary_train_metrics():
    z, y = _binary_batch()
    got = tasks.Binary().train_metrics(z, y)
    np.testing.assert_allclose(got["loss"], tasks.Binary().objective(z, y))
    np.testing.assert_allclose(got["accuracy"], metrics.binary_accuracy(z, y))


# --------------------------------------------------------------------------- eval sums, finalize


def test_classification_eval_sums_by_hand_and_padding_ignored():
    logits, labels = _classification_batch()
    sums = tasks.Classification(label_smoothing=0.1).eval_sums(logits, labels, jnp.ones(N))
    # Evaluation scores the unsmoothed NLL, whatever the training smoothing.
    np.testing.assert_allclose(sums["loss_sum"], N * losses.cross_entropy(logits, labels),
                               rtol=1e-5)
    np.testing.assert_allclose(sums["correct"], N * metrics.accuracy(logits, labels), rtol=1e-6)
    assert float(sums["count"]) == N
    padded = tasks.Classification(label_smoothing=0.1).eval_sums(*_pad(logits, labels, 8))
    for key in ("loss_sum", "correct", "count"):
        np.testing.assert_allclose(padded[key], sums[key], rtol=1e-6)


@pytest.mark.parametrize("task, batch", [(tasks.Regression(), _regression_batch),
                                         (tasks.Binary(), _binary_batch)],
                         ids=["regression", "binary"])
def test_eval_sums_finalize_to_the_objective_and_padding_is_ignored(task, batch):
    outputs, labels = batch()
    sums = task.eval_sums(outputs, labels, jnp.ones(N))
    assert float(sums["count"]) == N
    np.testing.assert_allclose(tasks.finalize(sums)["loss"], task.objective(outputs, labels),
                               rtol=1e-5)
    padded = task.eval_sums(*_pad(outputs, labels, 8))
    assert set(padded) == set(sums)
    for key in sums:
        np.testing.assert_allclose(padded[key], sums[key], rtol=1e-6)
    if isinstance(task, tasks.Binary):
        np.testing.assert_allclose(tasks.finalize(sums)["accuracy"],
                                   metrics.binary_accuracy(outputs, labels), rtol=1e-6)
    else:
        assert "correct" not in sums


def test_fractional_weights_weight_each_row():
    z, y = _regression_batch()
    w = jnp.linspace(0.0, 1.0, N)
    sums = tasks.Regression().eval_sums(z, y, w)
    zn, yn, wn = (np.asarray(a, np.float64) for a in (z, y, w))
    np.testing.assert_allclose(sums["loss_sum"], np.sum(wn * 0.5 * (yn - zn) ** 2), rtol=1e-5)
    np.testing.assert_allclose(sums["count"], wn.sum(), rtol=1e-6)


def test_finalize_divides_by_the_count():
    assert tasks.finalize({"loss_sum": 6.0, "correct": 3.0, "count": 4.0}) == {
        "loss": 1.5, "accuracy": 0.75}
    assert tasks.finalize({"loss_sum": jnp.float32(3.0), "count": jnp.float32(8.0)}) == {
        "loss": 0.375}


# --------------------------------------------------------------------------- make_task


def test_make_task_builds_each_task():
    assert tasks.make_task("classification") == tasks.Classification(label_smoothing=0.0)
    assert tasks.make_task("classification", 0.1) == tasks.Classification(label_smoothing=0.1)
    assert tasks.make_task("regression") == tasks.Regression()
    assert tasks.make_task("binary") == tasks.Binary()
    with pytest.raises(ValueError, match=r"train\.task: unknown 'ranking'"):
        tasks.make_task("ranking")


@pytest.mark.parametrize("name", ["regression", "binary"])
def test_make_task_refuses_label_smoothing_outside_classification(name):
    with pytest.raises(ValueError, match=rf"train\.label_smoothing: 0\.1.*not '{name}'"):
        tasks.make_task(name, label_smoothing=0.1)
