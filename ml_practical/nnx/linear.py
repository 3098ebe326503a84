"""The linear model family (`ml_practical.models.linear.Linear`) as an nnx module, same fields and
params ("kernel" of shape (features,) or (features, K), "bias")."""

from __future__ import annotations

import math

import jax
from flax import nnx

from ml_practical import initializers
from ml_practical.models import linear as linen_linear


class Linear(nnx.Module):
    """z = flatten(x) @ kernel + bias: linear / logistic / softmax regression.

    Args:
      input_shape: the shape of one example (flattened).
      rngs: `nnx.Rngs` with a "params" stream.
      config: a `models.Linear` (its fields); or the fields as keywords.

    Calling: `model(x)` on (N, *input_shape): (N,) for num_classes 0, else (N, K). No hidden
    layer, so nothing is sown.
    """

    def __init__(self, input_shape: tuple[int, ...], *, rngs: nnx.Rngs,
                 config: linen_linear.Linear | None = None, **fields):
        cfg = config if config is not None else linen_linear.Linear(**fields)
        self.config = cfg
        n_in = math.prod(int(d) for d in input_shape)
        out = () if cfg.num_classes == 0 else (cfg.num_classes,)
        self.kernel = nnx.Param(initializers.get(cfg.kernel_init)(rngs.params(), (n_in, *out)))
        self.bias = (nnx.Param(initializers.get(cfg.bias_init)(rngs.params(), out))
                     if cfg.use_bias else nnx.data(None))

    def __call__(self, x: jax.Array) -> jax.Array:
        z = x.reshape((x.shape[0], -1)) @ self.kernel[...]
        if self.bias is not None:
            z = z + self.bias[...]
        return z
