"""What a model's outputs mean: the objective a train step minimizes and how evaluation scores them.

A task turns (outputs, labels) into the training objective, the per-step training metrics, and
the per-batch sums an evaluation scan accumulates (sums, not means, so padded rows of weight 0
drop out and the mean over a split is one division on the host):

  "classification"  logits (N, K), integer labels: softmax cross entropy with label smoothing
                    (chapter 12.6.3); metrics "loss" (the unsmoothed NLL) and "accuracy".
  "regression"      real outputs (N,), real targets: 1/2 mean squared error; metric "loss".
  "binary"          one logit per example (N,), 0/1 labels: sigmoid cross entropy; "loss" and
                    "accuracy" (logit > 0).

Penalties (L1, L2) are never part of the objective: they live in the optax chain.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from ml_practical import losses, metrics


@dataclasses.dataclass(frozen=True)
class Classification:
    """Softmax cross entropy on integer labels, targets smoothed by `label_smoothing` a."""

    label_smoothing: float = 0.0
    name = "classification"
    metric_names = ("loss", "accuracy")

    def objective(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        return losses.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def soft_objective(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Cross entropy against soft targets (mixup / CutMix rows), smoothed once here:
        t <- (1 - a) t + a / K. Mixing smoothed one-hots gives the same targets (smoothing is
        affine and the mixing weights sum to 1), so the order does not matter, only that it is
        applied once."""
        k = logits.shape[-1]
        a = self.label_smoothing
        t = targets if not a else (1.0 - a) * targets + a / k
        return losses.soft_cross_entropy(logits, t)

    def train_metrics(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        # The data term without smoothing: comparable with val/loss and test/loss (NLL).
        return {"loss": losses.cross_entropy(logits, labels),
                "accuracy": metrics.accuracy(logits, labels)}

    def eval_sums(self, logits: jax.Array, labels: jax.Array,
                  weights: jax.Array) -> dict[str, jax.Array]:
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return {"loss_sum": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights),
                "count": jnp.sum(weights)}


@dataclasses.dataclass(frozen=True)
class Regression:
    """1/2 mean squared error, J = 1/2 mean_i (y_i - z_i)^2 (scikit-learn's Lasso data term)."""

    name = "regression"
    metric_names = ("loss",)

    def objective(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return 0.5 * jnp.mean(jnp.square(targets - outputs))

    def train_metrics(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        return {"loss": self.objective(outputs, targets)}

    def eval_sums(self, outputs: jax.Array, targets: jax.Array,
                  weights: jax.Array) -> dict[str, jax.Array]:
        err = 0.5 * jnp.square(targets - outputs.astype(jnp.float32))
        return {"loss_sum": jnp.sum(err * weights), "count": jnp.sum(weights)}


@dataclasses.dataclass(frozen=True)
class Binary:
    """Sigmoid cross entropy of one logit per example against 0/1 labels."""

    name = "binary"
    metric_names = ("loss", "accuracy")

    def objective(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))

    def train_metrics(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        return {"loss": self.objective(logits, labels),
                "accuracy": metrics.binary_accuracy(logits, labels)}

    def eval_sums(self, logits: jax.Array, labels: jax.Array,
                  weights: jax.Array) -> dict[str, jax.Array]:
        logits = logits.astype(jnp.float32)
        labels = labels.astype(jnp.float32)
        loss = optax.sigmoid_binary_cross_entropy(logits, labels)
        correct = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
        return {"loss_sum": jnp.sum(loss * weights), "correct": jnp.sum(correct * weights),
                "count": jnp.sum(weights)}


Task = Classification | Regression | Binary


def make_task(name: str, label_smoothing: float = 0.0) -> Task:
    """The task called `name` (`train.task`)."""
    if name == "classification":
        return Classification(label_smoothing=label_smoothing)
    if label_smoothing:
        raise ValueError(f"train.label_smoothing: {label_smoothing}; only 'classification' "
                         f"smooths labels, not {name!r}")
    if name == "regression":
        return Regression()
    if name == "binary":
        return Binary()
    raise ValueError(f"train.task: unknown {name!r}; expected one of "
                     "['binary', 'classification', 'regression']")


def finalize(sums: Mapping[str, float]) -> dict[str, float]:
    """Means over a split from summed evaluation results: {"loss", and "accuracy" if counted}."""
    count = float(sums["count"])
    out = {"loss": float(sums["loss_sum"]) / count}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / count
    return out
