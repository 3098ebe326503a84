"""Evaluation metrics of predictions, shared by the training tasks and the analyses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def accuracy(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax score equals the label (ties go to the lowest index).

    Args:
      scores: [..., K] logits or probabilities (the argmax is the same).
      labels: [...] integer class indices.

    Returns:
      Scalar float32 in [0, 1].
    """
    return jnp.mean((jnp.argmax(scores, axis=-1) == labels).astype(jnp.float32))


def binary_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows with (logit > 0) == label, for one logit per example and 0/1 labels.

    Args:
      logits: [...] real logits.
      labels: [...] 0/1 labels.

    Returns:
      Scalar float32 in [0, 1].
    """
    return jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))
