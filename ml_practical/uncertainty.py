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

and judge them with `ml_practical.analysis.calibration` (accuracy, NLL, Brier, ECE, AUROC).

`mc_predict` works for any model family that takes the `ml_practical.models` contract's optional
`mc_dropout` keyword. The summaries are pure jitted functions of arrays; `mc_predict` / `predict`
take a flax module and jit their core with it static.
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
      model: a model family that follows the `ml_practical.models` contract and takes its
        optional `mc_dropout` keyword (dropout on, norms on running statistics).
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
    from ml_practical.models import supports_mc_dropout
    if not supports_mc_dropout(model):
        raise ValueError(f"model: {type(model).__name__} takes no `mc_dropout` keyword (the "
                         "models contract's Monte Carlo dropout mode); it cannot be sampled")
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
