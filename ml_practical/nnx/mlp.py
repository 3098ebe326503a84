"""The MLP family (`ml_practical.models.mlp.MLP`) as an nnx module, on the same fields and weights.

Built from the linen family's fields (checked there, so a config or a Python call is accepted or
refused the same way) and the input shape; the submodules carry the linen module names ("dense_0",
"norm_0", "dropout_0", "head"), so `nnx.state(model, nnx.Param)` has the structure of the linen
model's "params" and `nnx.state(model, nnx.BatchStat)` that of its "batch_stats"
(`ml_practical.nnx.load_variables` / `linen_variables` convert).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from ml_practical import initializers
from ml_practical.models import mlp as linen_mlp
from ml_practical.models.activations import get_activation
from ml_practical.nnx.capture import sow
from ml_practical.nnx.layers import Dropout, make_norm


class MLP(nnx.Module):
    """Dense -> [norm] -> activation -> [norm] -> Dropout per hidden layer, then a Dense head.

    Args:
      input_shape: the shape of one example (flattened to prod(input_shape) features).
      rngs: `nnx.Rngs` with a "params" stream (initializers) and, for drop_rate > 0, a "dropout"
        stream.
      config: a `models.MLP` (its fields); or give the fields as keywords (`**fields`).

    Calling: `model(x)` on (N, *input_shape); the mode is the layers' (`model.train()`,
    `model.eval()`, `ml_practical.nnx.mc_dropout(model)`). Layer i sows "preact" / "act" in
    the scope of `dense_{i}` (inside `nnx.capture`, `ml_practical.nnx.capture.intermediates`).
    """

    def __init__(self, input_shape: tuple[int, ...], *, rngs: nnx.Rngs,
                 config: linen_mlp.MLP | None = None, **fields):
        cfg = config if config is not None else linen_mlp.MLP(**fields)
        self.config = cfg
        hidden_init = initializers.get(cfg.hidden_init)
        bias_init = initializers.get(cfg.bias_init)
        n_in = math.prod(int(d) for d in input_shape)
        norm_first = cfg.norm != "none" and cfg.norm_position == "before"
        self.norm_first = norm_first
        for i, width in enumerate(cfg.widths):
            use_bias = cfg.use_bias and (cfg.bias_before_bn
                                         or not (norm_first and cfg.norm == "batch"))
            setattr(self, f"dense_{i}", nnx.Linear(n_in, width, use_bias=use_bias,
                                                   kernel_init=hidden_init, bias_init=bias_init,
                                                   rngs=rngs))
            norm = make_norm(cfg.norm, width, rngs=rngs, momentum=cfg.bn_momentum,
                             epsilon=cfg.norm_epsilon, num_groups=cfg.num_groups,
                             layer_norm_axes=cfg.layer_norm_axes, bn_backward=cfg.bn_backward,
                             ghost_batch_size=cfg.ghost_batch_size)
            if norm is not None:
                setattr(self, f"norm_{i}", norm)
            if cfg.drop_rate > 0.0:
                setattr(self, f"dropout_{i}", Dropout(cfg.drop_rate, sampler=cfg.dropout_sampler,
                                                      rngs=rngs))
            n_in = width
        self.head = nnx.Linear(n_in, cfg.num_classes, kernel_init=initializers.get(cfg.output_init),
                               bias_init=bias_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        act = get_activation(cfg.activation)
        x = x.reshape((x.shape[0], -1))
        for i in range(len(cfg.widths)):
            dense = getattr(self, f"dense_{i}")
            x = dense(x)
            sow(dense, "preact", x)
            if self.norm_first:
                x = getattr(self, f"norm_{i}")(x)
            x = act(x)
            if cfg.norm != "none" and cfg.norm_position == "after":
                x = getattr(self, f"norm_{i}")(x)
            sow(dense, "act", x)
            if cfg.drop_rate > 0.0:
                x = getattr(self, f"dropout_{i}")(x)
        return self.head(x)
