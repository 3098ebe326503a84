"""Signal propagation through depth at initialization: measured per layer, and the mean-field theory.

The chapter's demonstration (section 13.1; the argument of sections 12.1.3-12.1.5): push a batch of
standard-normal inputs through a deep stack of bias-free Dense layers of one width and watch the
mean and variance of each layer's activations. `propagate` measures it on a library `MLP` through
`analysis.activations.activation_stats`; `mean_field` predicts it for infinite width.

The theory (He et al. 2015, section 2.2; Poole et al. 2016): with zero-mean weights of variance
sigma^2 and fan-in n, a pre-activation z_l = sum_j W_jk a_{l-1,j} is (for large n) Gaussian with
mean 0 and variance

    q_l = n sigma^2 E[a_{l-1}^2],    a_0 = x,  E[x^2] = 1 for standard-normal inputs.

So every layer multiplies the *second moment* by g = n sigma^2 times E[f(z)^2] / q. For ReLU,
E[relu(z)^2] = q / 2, so q_l = (g / 2) q_{l-1}: He (g = 2) keeps it, Xavier on a square layer
(sigma^2 = 2 / (n + n), g = 1) halves it per layer, and N(0, 0.01^2) on n = 512 (g = 0.0512)
multiplies it by 0.0256. The reported activation statistics follow from q: for ReLU,
mean = sqrt(q / (2 pi)) and var = q (1/2 - 1/(2 pi)).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import initializers, models
from ml_practical.analysis.activations import activation_stats

# Gauss-Hermite nodes for E[f(z)], z ~ N(0, q), for activations without a closed form (tanh, ...).
_QUADRATURE_POINTS = 201


def weight_gain(init: str, fan_in: int, fan_out: int, **init_kwargs: Any) -> float:
    """g = fan_in * Var(W) of a named initializer on a (fan_in, fan_out) Dense kernel.

    Args:
      init: an `initializers.names()` entry.
      fan_in, fan_out: the kernel's shape.
      **init_kwargs: the initializer's arguments (e.g. stddev for "normal").

    Returns:
      The factor by which the layer multiplies the second moment of its input (before the
      activation): 2 for He, 2 n_in / (n_in + n_out) for Xavier, n_in * stddev^2 for "normal".
    """
    std = initializers.expected_std(init, (fan_in, fan_out), **init_kwargs)
    return fan_in * std * std


def _activation_moments(activation: str, q: float) -> tuple[float, float]:
    """(E[f(z)], E[f(z)^2]) for z ~ N(0, q)."""
    if q <= 0.0:
        f0 = float(models.get_activation(activation)(jnp.zeros(())))
        return f0, f0 * f0
    if activation == "relu":
        return math.sqrt(q / (2.0 * math.pi)), q / 2.0
    f = models.get_activation(activation)
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_POINTS)
    weights = weights / math.sqrt(2.0 * math.pi)  # probabilists' Hermite: weight exp(-x^2 / 2)
    # The library's activations are jnp functions; float32 (relative error ~1e-7) is plenty here.
    values = np.asarray(f(jnp.asarray(math.sqrt(q) * nodes, jnp.float32)), np.float64)
    return float(weights @ values), float(weights @ values**2)


def mean_field(gains: Sequence[float], activation: str = "relu",
               input_second_moment: float = 1.0) -> list[dict[str, float]]:
    """Infinite-width prediction of per-layer statistics for bias-free layers with zero-mean weights.

    q_1 = g_1 * E[x^2]; q_l = g_l * E[f(z_{l-1})^2]; the activation a_l = f(z_l), z_l ~ N(0, q_l).

    Args:
      gains: g_l = fan_in * Var(W_l) per layer (see `weight_gain`).
      activation: a `models.ACTIVATIONS` name. ReLU uses the closed form; others Gauss-Hermite
        quadrature with 201 points.
      input_second_moment: E[x^2] of the inputs (1 for standard normal).

    Returns:
      One dict per layer: {"layer": l (1-based), "preact_var": q_l, "mean": E[a_l],
      "var": Var(a_l), "second_moment": E[a_l^2]}.
    """
    models.get_activation(activation)  # validates the name
    rows, m2 = [], float(input_second_moment)
    for l, g in enumerate(gains, start=1):
        q = float(g) * m2
        mean, m2 = _activation_moments(activation, q)
        rows.append({"layer": l, "preact_var": q, "mean": mean, "var": max(m2 - mean * mean, 0.0),
                     "second_moment": m2})
    return rows


def propagate(key: jax.Array, x: jax.Array, *, depth: int, width: int, init: str,
              activation: str = "relu", bins: int = 0,
              init_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Measures per-layer statistics of `x` through `depth` bias-free Dense layers at initialization.

    The chapter's section 13.1 loop `a = f(a @ W)` with W drawn by `init`, built as a library
    `MLP(widths=(width,) * depth, use_bias=False, norm="none")` (the head is ignored) and measured
    with `analysis.activations.activation_stats`, so the same code measures any library model.

    Args:
      key: PRNG key of the weights.
      x: (num_samples, features) inputs, e.g. standard normal.
      depth: number of hidden layers, >= 1.
      width: their width, >= 1.
      init: hidden-layer initializer name (`initializers.names()`).
      activation: a `models.ACTIVATIONS` name.
      bins: histogram bins per layer (0 = none).
      init_kwargs: arguments of the initializer (e.g. {"stddev": 0.01} for "normal").

    Returns:
      One dict per layer: {"layer": l (1-based), "mean", "var" (of the activations, over all
      samples and units, ddof=0), "preact_var", "zero_fraction", "dead_fraction", and with bins > 0
      "hist" = (counts, edges) of the non-zero activations}.

    Raises:
      ValueError: depth or width < 1, or an unknown initializer / activation.
    """
    for name, value in (("depth", depth), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r}; expected an integer >= 1")
    hidden_init = initializers.get(init, **dict(init_kwargs or {}))
    model = models.MLP(widths=(width,) * depth, num_classes=1, activation=activation,
                       norm="none", drop_rate=0.0, hidden_init=hidden_init, use_bias=False)
    variables = model.init({"params": key}, x[:1], train=False)
    stats = activation_stats(model, variables, x, train=False, bins=bins)
    rows = []
    for l, (layer, s) in enumerate(stats.items(), start=1):
        row = {"layer": l, "mean": s["act"]["mean"], "var": s["act"]["var"],
               "preact_var": s["preact"]["var"], "zero_fraction": s["act"]["zero_fraction"],
               "dead_fraction": s["act"]["dead_fraction"]}
        if bins:
            row["hist"] = s["act"]["hist"]
        rows.append(row)
    return rows


def variance_ratios(rows: Sequence[Mapping[str, float]], key: str = "preact_var") -> list[float]:
    """Per-layer factor rows[l][key] / rows[l-1][key] for l >= 2 (the theory's g * E[f^2] / q).

    Args:
      rows: the output of `propagate` or `mean_field`.
      key: which statistic ("preact_var" is the cleanest; "var" of the activations gives the same
        ratio for ReLU, where Var(a) = 0.3408 q).

    Returns:
      len(rows) - 1 ratios (nan where the previous value is 0).
    """
    vals = [float(r[key]) for r in rows]
    return [b / a if a > 0 else float("nan") for a, b in zip(vals[:-1], vals[1:])]
