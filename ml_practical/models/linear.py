"""A linear model, z = x.w + b: linear / logistic / softmax regression, the convex baseline.

With `num_classes = 0` the output is one real number per example and the kernel has shape
(features,), the form in which L1 / L2 / elastic-net solutions are compared with scikit-learn's
(`Lasso`, `ElasticNet`, `Ridge`); with `num_classes = K` it is softmax regression, kernel
(features, K).
"""

from __future__ import annotations

from typing import Callable, Union

import flax.linen as nn
import jax

from ml_practical import initializers
from ml_practical.config import check_fields, field
from ml_practical.models.mlp import check_initializer

Initializer = Union[str, Callable]


class Linear(nn.Module):
    """z = flatten(x) @ kernel + bias.

    Attributes:
      num_classes: logits K; 0 gives one real output per example (regression, a binary logit).
      kernel_init, bias_init: initializer specs (`initializers.get`); zeros by default (the
        problem is convex, so the start does not matter for the optimum).
      use_bias: learn the intercept b (never in the default decay mask: only "kernel" is).

    Calling (the `ml_practical.models` contract): `model.apply(variables, x, train=bool)` on
    (N, ...) inputs; (N,) outputs for num_classes 0, else (N, K). It has no hidden layer, so it
    sows no statistics, and no dropout, so no `mc_dropout`.
    """

    num_classes: int = field(0, ge=0)
    kernel_init: Initializer = "zeros"
    bias_init: Initializer = "zeros"
    use_bias: bool = True

    def __post_init__(self):
        check_fields(self, "model")
        for name in ("kernel_init", "bias_init"):
            check_initializer(f"model.{name}", getattr(self, name))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout, no normalization
        x = x.reshape((x.shape[0], -1))
        out = () if self.num_classes == 0 else (self.num_classes,)
        kernel = self.param("kernel", initializers.get(self.kernel_init), (x.shape[-1], *out))
        z = x @ kernel
        if self.use_bias:
            z = z + self.param("bias", initializers.get(self.bias_init), out)
        return z

    def describe(self, input_shape: tuple[int, ...]) -> str:
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        outputs = self.num_classes or 1
        return f"linear model {n_in} -> {outputs}" + ("" if self.use_bias else " (no bias)")
