"""Inverted dropout as pure functions: the keep-mask samplers and the scaled mask.

Sections 12.3 and 13.2 of the chapter (Srivastava et al. 2014). `rate` is the probability of
DROPPING a unit; the chapter's keep probability is p = 1 - rate. In training

  mask ~ Bernoulli(p) elementwise,   output = a * mask / p,

so E[output] = a and, for a constant input a, Var[output] = a^2 (1 - p) / p. The linen
(`ml_practical.layers.Dropout`) and nnx (`ml_practical.nnx.layers.Dropout`) modules only draw
their key and call `dropout` here; Monte Carlo dropout (Gal & Ghahramani 2016) is the same call
at test time.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random
import jax.numpy as jnp
from jax import lax

Array = jax.Array

__all__ = ["DROPOUT_SAMPLERS", "check_dropout", "dropout", "keep_mask", "threefry16_keep_mask"]

DROPOUT_SAMPLERS = ("bernoulli", "threefry16")


def threefry16_keep_mask(key: Array, shape: tuple[int, ...], threshold: int) -> Array:
    """Keep mask from Threefry-2x32 with four 16-bit uniforms per hash evaluation.

    Each evaluation of the Threefry-2x32 block cipher (Salmon et al. 2011) on a counter gives 64
    random bits; they are cut into four 16-bit integers u, and a unit is kept iff u < threshold,
    so P(keep) = threshold / 2^16. `jax.random.bernoulli` instead spends one evaluation per unit
    and keeps 32 of its 64 bits (jax's partitionable layout XORs the two words), i.e. 4x the
    hashing. The counter is each unit's (row, word) position, elementwise like jax's own layout,
    so a batch sharded over devices draws its mask shard-locally.

    Args:
      key: a PRNG key (any impl; two 32-bit words of cipher key are drawn from it).
      shape: mask shape (..., features).
      threshold: integer in [1, 2^16]; units are kept with probability threshold / 2^16.

    Returns:
      A boolean array of `shape`.
    """
    features = shape[-1] if shape else 1
    rows = math.prod(shape) // features if features else 0
    words = -(-features // 4)  # hash evaluations per row; the last may be partly unused
    if rows * words >= 2**32:
        raise ValueError(f"Dropout.sampler: 'threefry16' counts units in 32 bits; shape {shape} "
                         "is too large, use sampler='bernoulli'")
    k1, k2 = jax.random.bits(key, (2,), jnp.uint32)
    counts = lax.iota(jnp.uint32, rows * words).reshape(rows, words)
    hi, lo = jax.extend.random.threefry2x32_p.bind(k1, k2, jnp.zeros_like(counts), counts)
    fields = jnp.stack([hi & 0xFFFF, hi >> 16, lo & 0xFFFF, lo >> 16], axis=-1)
    u = fields.reshape(rows, words * 4)[:, :features]
    return (u < jnp.uint32(threshold)).reshape(shape)


DROPOUT_SAMPLERS = ("bernoulli", "threefry16")


def check_dropout(owner: str, rate: float, sampler: str) -> None:
    """`rate` in [0, 1) and a known sampler that can represent 1 - rate; one line on failure."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{owner}.rate: {rate!r} is outside [0, 1); rate is the drop "
                         "probability (the chapter's keep probability is p = 1 - rate)")
    if sampler not in DROPOUT_SAMPLERS:
        raise ValueError(f"{owner}.sampler: unknown {sampler!r}; expected one of "
                         f"{list(DROPOUT_SAMPLERS)}")
    if sampler == "threefry16" and round((1.0 - rate) * 2**16) < 1:
        raise ValueError(f"{owner}.rate: {rate!r} leaves a keep probability below "
                         "2^-16, which sampler='threefry16' cannot represent; use 'bernoulli'")


def keep_mask(key: Array, shape: tuple[int, ...], rate: float,
              sampler: str = "bernoulli") -> tuple[Array, float]:
    """The keep mask and the keep probability its kept units are divided by.

    "bernoulli": `jax.random.bernoulli(key, 1 - rate, shape)` (the same masks as
    flax.linen.Dropout for a key), p = 1 - rate. "threefry16": `threefry16_keep_mask` with
    p quantized to round((1 - rate) 2^16) / 2^16 (so E[output] = a exactly).

    Returns:
      (mask, keep_prob): a boolean array of `shape` and a Python float.
    """
    if sampler == "threefry16":
        threshold = round((1.0 - rate) * 2**16)
        return threefry16_keep_mask(key, shape, threshold), threshold / 2**16
    keep_prob = 1.0 - rate
    return jax.random.bernoulli(key, p=keep_prob, shape=shape), keep_prob


def dropout(key: Array, x: Array, rate: float, sampler: str = "bernoulli") -> Array:
    """Inverted dropout of `x`: kept units divided by p, dropped units an exact 0.

    Args:
      key: the PRNG key of this call's mask (a fresh one each step).
      x: input, any shape.
      rate: the drop probability, in [0, 1); 0 returns `x`.
      sampler: "bernoulli" or "threefry16" (`keep_mask`).

    Returns:
      An array of the shape and dtype of `x`.
    """
    if rate == 0.0:
        return x
    mask, keep_prob = keep_mask(key, x.shape, rate, sampler)
    # where, not x * mask: dropped units contribute an exact 0 and receive an exact 0 gradient.
    return jnp.where(mask, x / keep_prob, jnp.zeros_like(x))
