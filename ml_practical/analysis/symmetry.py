"""Symmetry between hidden units (section 12.1.2, "the symmetry catastrophe"): how far apart a layer's
units are, from its weights alone.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ml_practical.analysis.activations import natural_key

def unit_spread(kernel: Any, bias: Any | None = None) -> float:
    """The largest difference between two units' incoming weights: max_{i,j} ||w_i - w_j||_inf.

    Unit i's incoming weights are w_i = (kernel[..., i], bias[i]). The chapter's section 12.1.2 says
    that units started equal receive equal gradients, so after any amount of training this stays
    exactly 0. Computed as max over input coordinates of (max over units - min over units), which
    equals the maximum over all pairs.

    Args:
      kernel: (..., num_units), e.g. a Dense kernel (fan_in, num_units).
      bias: (num_units,) or None.

    Returns:
      The spread as a Python float (0.0 exactly when all units are identical).
    """
    w = np.asarray(kernel, np.float64)
    w = w.reshape(-1, w.shape[-1])
    if bias is not None:
        w = np.concatenate([w, np.asarray(bias, np.float64).reshape(1, -1)])
    return float(np.max(w.max(axis=1) - w.min(axis=1)))


def unit_symmetry(params: Mapping[str, Any]) -> dict[str, dict[str, float | int]]:
    """`unit_spread` and related counts for every top-level module with a kernel (>= 2-D).

    Args:
      params: the "params" collection, e.g. {"dense_0": {"kernel", "bias"}, ..., "head": {...}}.

    Returns:
      {module: {"spread": unit_spread(kernel, bias), "scale": max |entry| over kernel and bias (to
      read the spread against), "distinct_units": number of different incoming weight vectors
      (1 = the whole layer acts as one unit), "num_units": layer width}}.
    """
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted(params, key=natural_key):
        module = params[name]
        if not isinstance(module, Mapping) or "kernel" not in module:
            continue
        kernel = np.asarray(module["kernel"], np.float64)
        if kernel.ndim < 2:
            continue
        bias = module.get("bias")
        w = kernel.reshape(-1, kernel.shape[-1])
        if bias is not None:
            w = np.concatenate([w, np.asarray(bias, np.float64).reshape(1, -1)])
        out[name] = {
            "spread": unit_spread(kernel, bias),
            "scale": float(np.abs(w).max()),
            "distinct_units": int(np.unique(w.T, axis=0).shape[0]),
            "num_units": int(w.shape[1]),
        }
    return out
