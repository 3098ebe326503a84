"""Predictive uncertainty from Monte Carlo dropout, and the calibration / error-detection metrics.

Monte Carlo dropout (Gal & Ghahramani 2016; the chapter's 12.3.3 and coding question C4) keeps
dropout on at test time and averages T stochastic forward passes, with BatchNorm on its running
statistics (`model.apply(..., train=False, mc_dropout=True)`). From the T predictive distributions
p_t(y | x) we read:

  mean prediction          p_bar = (1/T) sum_t p_t
  predictive entropy       H[p_bar] = -sum_k p_bar_k log p_bar_k           (total uncertainty)
  expected entropy         E_t H[p_t]                                       (aleatoric part)
  mutual information       MI = H[p_bar] - E_t H[p_t] >= 0                   (epistemic part; BALD,
                           Houlsby et al. 2011; Gal, Islam & Ghahramani 2017)
  predictive std           of the predicted class's probability, std_t p_t[y_hat], and the mean
                           over classes of std_t p_t[k] (Kendall et al. 2017, Bayesian SegNet)

and judge them with accuracy, NLL, the Brier score (Brier 1950), the expected calibration error
over 15 equal-width confidence bins (Guo et al. 2017; named "ece_15bin") and the AUROC of each
uncertainty for telling wrong predictions from right ones (Hendrycks & Gimpel 2017).

Everything is a pure function of arrays and jitted (so eager callers do not pay one dispatch per
op), except `mc_predict`/`predict`, which take a flax module and jit their core with it static.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any

# Names of the uncertainty scores `uncertainty_scores` returns; for each, larger = less certain.
SCORES = ("one_minus_max_prob", "predictive_entropy", "mutual_information", "std_predicted_class",
          "std_mean_over_classes")


# --------------------------------------------------------------------------- predictions


def _chunks(x: jax.Array, batch_size: int) -> tuple[jax.Array, int]:
    """Pads x to a multiple of batch_size and reshapes it to [num_chunks, batch_size, ...]."""
    n = x.shape[0]
    num = -(-n // batch_size)
    pad = num * batch_size - n
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    return x.reshape((num, batch_size, *x.shape[1:])), num


def _check_batch_size(batch_size: int | None, n: int) -> int:
    if batch_size is None:
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r}; expected an integer >= 1 or None")
    return min(batch_size, n)


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "batch_size"))
def _mc_probs(model: nn.Module, variables: PyTree, x: jax.Array, key: jax.Array, *,
              num_samples: int, batch_size: int) -> jax.Array:
    n = x.shape[0]
    sample_keys = jax.random.split(key, num_samples)
    chunks, num = _chunks(x, batch_size)

    def chunk_probs(args):
        c, xb = args

        def one_pass(k):
            logits = model.apply(variables, xb, train=False, mc_dropout=True,
                                 rngs={"dropout": jax.random.fold_in(k, c)})
            return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

        # vmap over the T keys: layers before the first dropout do not depend on the key, so vmap
        # leaves them unbatched and computes them once per chunk instead of T times.
        return jax.vmap(one_pass)(sample_keys)                       # [T, B, K]

    probs = jax.lax.map(chunk_probs, (jnp.arange(num), chunks))      # [C, T, B, K]
    probs = jnp.swapaxes(probs, 0, 1).reshape((num_samples, num * batch_size, -1))
    return probs[:, :n]


def mc_predict(model: nn.Module, variables: PyTree, x: jax.Array, key: jax.Array, *,
               num_samples: int = 100, batch_size: int | None = 1000) -> jax.Array:
    """T Monte Carlo dropout predictions, as one vectorised computation (Gal & Ghahramani 2016).

    Pass t on chunk c (rows c*B .. c*B + B - 1) uses the dropout key
    `fold_in(split(key, T)[t], c)`: a `jax.vmap` over the T keys inside a `lax.map` over chunks,
    jitted once per (model, shapes, T, B). No Python loop over T.

    Args:
      model: a linen module called as `model.apply(variables, x, train=False, mc_dropout=True)`
        with a "dropout" rng stream (`ml_practical.models.MLP`).
      variables: {"params": ..., "batch_stats": ...}; BatchNorm uses the running statistics.
      x: [N, ...] inputs.
      key: PRNG key of the dropout masks.
      num_samples: T >= 1.
      batch_size: rows per chunk (bounds memory: activations are [T, B, width]); None = all N.

    Returns:
      float32 probabilities of shape [T, N, K].
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: {num_samples!r}; expected an integer >= 1")
    x = jnp.asarray(x)
    return _mc_probs(model, variables, x, key, num_samples=num_samples,
                     batch_size=_check_batch_size(batch_size, x.shape[0]))


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _det_probs(model: nn.Module, variables: PyTree, x: jax.Array, *, batch_size: int) -> jax.Array:
    n = x.shape[0]
    chunks, num = _chunks(x, batch_size)
    logits = jax.lax.map(lambda xb: model.apply(variables, xb, train=False), chunks)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return probs.reshape((num * batch_size, -1))[:n]


def predict(model: nn.Module, variables: PyTree, x: jax.Array, *,
            batch_size: int | None = 1000) -> jax.Array:
    """The deterministic network's probabilities softmax(f(x)) (dropout off, BN running stats).

    Args:
      model, variables, x, batch_size: as in `mc_predict`.

    Returns:
      float32 probabilities [N, K].
    """
    x = jnp.asarray(x)
    return _det_probs(model, variables, x, batch_size=_check_batch_size(batch_size, x.shape[0]))


# --------------------------------------------------------------------------- summaries


@jax.jit
def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy in nats, H[p] = -sum_k p_k log p_k over the last axis (0 log 0 = 0).

    Args:
      probs: [..., K] probabilities.

    Returns:
      [...] entropies in [0, log K].
    """
    return jnp.sum(jax.scipy.special.entr(probs), axis=-1)


@jax.jit
def predictive_summary(probs: jax.Array) -> dict[str, jax.Array]:
    """Mean prediction and uncertainties from T sampled predictive distributions.

    Args:
      probs: [T, N, K] probabilities (T = 1 gives the deterministic network's view: std = MI = 0).

    Returns:
      {"mean_probs" [N, K], "prediction" [N] (argmax of the mean), "confidence" [N] (max of the
       mean), "predictive_entropy" H[p_bar], "expected_entropy" E_t H[p_t],
       "mutual_information" H[p_bar] - E_t H[p_t] (BALD; clipped at 0, since rounding can make it
       -1e-7 where it is 0 in exact arithmetic), "std_predicted_class" std_t p_t[n, y_hat_n],
       "std_mean_over_classes" (1/K) sum_k std_t p_t[n, k]}; stds are population stds (ddof=0)
       over the T samples; every value but "mean_probs" is [N].
    """
    if probs.ndim != 3:
        raise ValueError(f"probs: shape {probs.shape}; expected [T, N, K]")
    mean = jnp.mean(probs, axis=0)
    prediction = jnp.argmax(mean, axis=-1)
    total = entropy(mean)
    expected = jnp.mean(entropy(probs), axis=0)
    std = jnp.std(probs, axis=0)                                   # [N, K]
    return {
        "mean_probs": mean,
        "prediction": prediction,
        "confidence": jnp.max(mean, axis=-1),
        "predictive_entropy": total,
        "expected_entropy": expected,
        "mutual_information": jnp.maximum(total - expected, 0.0),
        "std_predicted_class": jnp.take_along_axis(std, prediction[:, None], axis=-1)[:, 0],
        "std_mean_over_classes": jnp.mean(std, axis=-1),
    }


def uncertainty_scores(summary: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The uncertainty scores of a `predictive_summary`, each oriented so that larger = less sure.

    Args:
      summary: output of `predictive_summary`.

    Returns:
      {name: [N] score} for the names in `SCORES` ("one_minus_max_prob" is 1 - confidence).
    """
    out = {"one_minus_max_prob": 1.0 - summary["confidence"]}
    out.update({name: summary[name] for name in SCORES[1:]})
    return out


# --------------------------------------------------------------------------- metrics


@jax.jit
def accuracy(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax equals the label.

    Args:
      probs: [N, K]; labels: [N] integer classes.

    Returns:
      Scalar float32.
    """
    return jnp.mean((jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32))


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
        "accuracy": float(accuracy(probs, labels)),
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
