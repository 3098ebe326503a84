"""Tests for ml_practical.metrics: accuracy and binary accuracy against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import metrics


def test_accuracy():
    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    labels = jnp.array([0, 1, 2, 2])
    np.testing.assert_allclose(metrics.accuracy(logits, labels), 0.75)


def test_accuracy_of_probabilities_equals_accuracy_of_logits():
    logits = 3.0 * jax.random.normal(jax.random.key(0), (64, 5))
    labels = jax.random.randint(jax.random.key(1), (64,), 0, 5)
    want = np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels))
    np.testing.assert_allclose(metrics.accuracy(logits, labels), want, rtol=1e-6)
    np.testing.assert_allclose(metrics.accuracy(jax.nn.softmax(logits), labels), want, rtol=1e-6)


def test_accuracy_ties_go_to_the_lowest_index():
    scores = jnp.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    np.testing.assert_allclose(metrics.accuracy(scores, jnp.array([0, 1])), 1.0)
    np.testing.assert_allclose(metrics.accuracy(scores, jnp.array([1, 2])), 0.0)


def test_binary_accuracy_by_hand():
    # Predicted class is logit > 0: [1, 0, 0, 1, 0] (a logit of exactly 0 predicts 0).
    logits = jnp.array([2.0, -1.0, 0.0, 3.5, -0.2])
    labels = jnp.array([1, 0, 1, 0, 0])
    # Right, right, wrong, wrong, right: 3 of 5.
    np.testing.assert_allclose(metrics.binary_accuracy(logits, labels), 0.6)
    np.testing.assert_allclose(metrics.binary_accuracy(logits, labels.astype(jnp.float32)), 0.6)
    assert metrics.binary_accuracy(logits, labels).dtype == jnp.float32
    np.testing.assert_allclose(metrics.binary_accuracy(logits, (logits > 0).astype(jnp.int32)), 1.0)
