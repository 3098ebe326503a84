"""Calibration and error detection of probabilistic predictions: NLL, Brier, ECE, AUROC, retention.

The expected calibration error is taken over equal-width confidence bins (Guo et al. 2017; report it
under a name that states the bins, "ece_15bin"), the Brier score is the multi-class one (Brier
1950), and the AUROC of an uncertainty score tells wrong predictions from right ones (Hendrycks &
Gimpel 2017). Pure jitted functions of arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ml_practical import metrics

_accuracy = jax.jit(metrics.accuracy)


@jax.jit
def nll(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Negative log-likelihood -mean_n log p_n[y_n] of the labels under the (mean) prediction.

    Probabilities are floored at the dtype's smallest normal number, so a softmax that underflowed
    to 0 costs a finite -log(1.2e-38) = 87.3 nats (float32) instead of inf.

    Args:
      probs: [N, K]; labels: [N] integer classes.

    Returns:
      Scalar, in nats.
    """
    p = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(p, jnp.finfo(probs.dtype).tiny)))


@jax.jit
def brier(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Multi-class Brier score (Brier 1950): mean_n sum_k (p_nk - 1[y_n = k])^2, in [0, 2].

    Args:
      probs: [N, K]; labels: [N] integer classes.

    Returns:
      Scalar.
    """
    onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    return jnp.mean(jnp.sum(jnp.square(probs - onehot), axis=-1))


@functools.partial(jax.jit, static_argnames=("num_bins",))
def reliability_bins(probs: jax.Array, labels: jax.Array, num_bins: int = 15
                     ) -> dict[str, jax.Array]:
    """Per-bin counts, summed confidence and summed correctness over equal-width confidence bins.

    Bin m (0-based) holds the rows whose confidence max_k p_k lies in (m / M, (m + 1) / M]
    (Guo et al. 2017, Sec. 2: I_m = ((m - 1) / M, m / M]); the reliability diagram plots
    correct / count against confidence / count.

    Args:
      probs: [N, K]; labels: [N] integer classes; num_bins: M >= 1.

    Returns:
      {"count", "confidence_sum", "correct_sum"}, each [M] float32.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins: {num_bins!r}; expected an integer >= 1")
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    seg = functools.partial(jax.ops.segment_sum, segment_ids=bins, num_segments=num_bins)
    return {"count": seg(jnp.ones_like(confidence)), "confidence_sum": seg(confidence),
            "correct_sum": seg(correct)}


@functools.partial(jax.jit, static_argnames=("num_bins",))
def ece(probs: jax.Array, labels: jax.Array, num_bins: int = 15) -> jax.Array:
    """Expected calibration error over M equal-width confidence bins (Guo et al. 2017, Eq. 3).

    ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)| = (1/N) sum_m |sum_{i in B_m} (correct_i - conf_i)|.
    Report it under a name that states M ("ece_15bin"): its value depends on the binning.

    Args:
      probs: [N, K]; labels: [N] integer classes; num_bins: M.

    Returns:
      Scalar in [0, 1].
    """
    bins = reliability_bins(probs, labels, num_bins)
    return jnp.sum(jnp.abs(bins["correct_sum"] - bins["confidence_sum"])) / probs.shape[0]


def calibration_metrics(probs: jax.Array, labels: jax.Array, num_bins: int = 15
                        ) -> dict[str, float]:
    """accuracy, nll, brier and f"ece_{num_bins}bin" of one [N, K] prediction, as Python floats."""
    return {
        "accuracy": float(_accuracy(probs, labels)),
        "nll": float(nll(probs, labels)),
        "brier": float(brier(probs, labels)),
        f"ece_{num_bins}bin": float(ece(probs, labels, num_bins)),
    }


@jax.jit
def auroc(scores: jax.Array, is_positive: jax.Array) -> jax.Array:
    """Area under the ROC curve of `scores` for telling positives (e.g. errors) from negatives.

    The Mann-Whitney U statistic with ties counted as 1/2 (what average ranks give):
        AUROC = (1 / (n_pos n_neg)) sum_{i pos} sum_{j neg} (1[s_i > s_j] + 1/2 1[s_i = s_j]),
    computed in O(N log N) by binary search of each positive's score in the sorted negatives, with
    integer counts, so it stays exact in float32 for large N. Equals
    sklearn.metrics.roc_auc_score(is_positive, scores). 0.5 = chance, 1 = perfect separation.

    Args:
      scores: [N] finite scores, larger = more likely positive (an uncertainty, for errors).
      is_positive: [N] bool.

    Returns:
      Scalar float32; NaN when either class is empty.
    """
    scores = jnp.asarray(scores, jnp.float32).reshape(-1)
    is_positive = jnp.asarray(is_positive, bool).reshape(-1)
    n_pos = jnp.sum(is_positive)
    n_neg = scores.shape[0] - n_pos
    # Positives are parked at +inf, after every finite negative, and the counts capped at n_neg.
    negatives = jnp.sort(jnp.where(is_positive, jnp.inf, scores))
    below = jnp.minimum(jnp.searchsorted(negatives, scores, side="left"), n_neg)
    at_or_below = jnp.minimum(jnp.searchsorted(negatives, scores, side="right"), n_neg)
    wins = (below + at_or_below).astype(jnp.float32) / 2.0       # 1 per lower negative, 1/2 per tie
    return jnp.sum(jnp.where(is_positive, wins, 0.0)) / (n_pos.astype(jnp.float32) * n_neg)


@jax.jit
def retention_accuracy(scores: jax.Array, correct: jax.Array, fractions: jax.Array) -> jax.Array:
    """Accuracy on the retained rows when only the most certain fraction is kept (selective prediction).

    Rows are sorted by the uncertainty score, most certain first (ties keep their input order), and
    for each f the first ceil(f N) are kept (at least one). A useful uncertainty gives a curve that
    rises as f falls; a useless one stays flat at the overall accuracy.

    Args:
      scores: [N] uncertainty, larger = less certain.
      correct: [N] bool, prediction == label.
      fractions: [F] retained fractions in (0, 1].

    Returns:
      [F] accuracies.
    """
    order = jnp.argsort(jnp.asarray(scores), stable=True)
    hits = jnp.cumsum(jnp.asarray(correct, jnp.float32)[order])
    n = hits.shape[0]
    keep = jnp.clip(jnp.ceil(jnp.asarray(fractions) * n).astype(jnp.int32), 1, n)
    return hits[keep - 1] / keep.astype(jnp.float32)
