"""The CNN family (`ml_practical.models.cnn.CNN`) as an nnx module, on the same fields and weights.

Built from the linen family's fields (checked there, so a config or a Python call is accepted or
refused the same way) and the input shape (H, W, C): nnx layers need their input channels up front,
so the channel count is carried through the network at construction. The submodules carry the
linen module names ("conv_{j}", "norm_{j}", "dropout", "head"), so `nnx.state(model, nnx.Param)`
has the structure of the linen model's "params" and `nnx.state(model, nnx.BatchStat)` that of its
"batch_stats" (`ml_practical.nnx.load_variables` / `linen_variables` convert).

`conv2d` is the nnx counterpart of `ml_practical.models.cnn.conv2d` (torch's symmetric padding,
the "xla" / "chunked" backward); `ml_practical.nnx.resnet` builds its convolutions with it too.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from ml_practical import conv as conv_ops
from ml_practical import initializers
from ml_practical.models import cnn as linen_cnn
from ml_practical.models.activations import get_activation
from ml_practical.nnx.capture import sow
from ml_practical.nnx.layers import Dropout, make_norm

__all__ = ["CNN", "conv2d", "image_channels"]


def _ignoring_out_sharding(conv_general_dilated):
    """`conv_general_dilated` taking the `out_sharding=` keyword nnx.Conv passes (linen's Conv does
    not pass it, and `ml_practical.conv.chunked()` has `lax.conv_general_dilated`'s older
    signature without it). Only None, the default nnx.Conv passes, can be honoured."""

    def without_out_sharding(*args, out_sharding=None, **kwargs):
        if out_sharding is not None:
            raise ValueError("conv backward 'chunked': out_sharding is not supported; use "
                             "conv_backward='xla' with explicit sharding")
        return conv_general_dilated(*args, **kwargs)

    return without_out_sharding


def conv2d(in_features: int, features: int, kernel_size: int, stride: int, *, use_bias: bool,
           kernel_init, bias_init, backward: str = "xla", rngs: nnx.Rngs) -> nnx.Conv:
    """A k x k `nnx.Conv` from `in_features` to `features` channels: `models.cnn.conv2d`'s layer.

    torch's symmetric padding (k // 2 on every side, not flax's asymmetric "SAME" at stride 2),
    and the backward "xla" or "chunked" (`ml_practical.conv.chunked`), as the linen helper. The
    rule is restated rather than read off a linen `conv2d(...)` layer: building a linen module
    here would attach it to any linen module being set up around this one (an nnx model inside
    `nnx.bridge.ToLinen` then fails with NameInUseError).

    Raises:
      ValueError: an unknown `backward` (the linen helper's message).
    """
    if backward not in linen_cnn.CONV_BACKWARDS:
        raise ValueError(f"conv backward: {backward!r}; expected one of "
                         f"{linen_cnn.CONV_BACKWARDS}")
    pad = kernel_size // 2
    fn = (_ignoring_out_sharding(conv_ops.chunked()) if backward == "chunked"
          else lax.conv_general_dilated)
    return nnx.Conv(in_features, features, kernel_size=(kernel_size, kernel_size),
                    strides=(stride, stride), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                    kernel_init=kernel_init, bias_init=bias_init, conv_general_dilated=fn,
                    rngs=rngs)


def image_channels(owner: str, input_shape: tuple[int, ...]) -> int:
    """C of an image shape (H, W, C); ValueError for any other shape."""
    if len(input_shape) != 3:
        raise ValueError(f"{owner}: input_shape {tuple(input_shape)}; expected one image's shape "
                         "(H, W, C)")
    return int(input_shape[-1])


class CNN(nnx.Module):
    """conv -> [norm] -> activation stacks, pooled between stages, global-average-pool head.

    Args:
      input_shape: the shape of one image, (H, W, C) (C sets the first conv's input channels).
      rngs: `nnx.Rngs` with a "params" stream (initializers) and, for drop_rate > 0, a "dropout"
        stream.
      config: a `models.CNN` (its fields); or give the fields as keywords (`**fields`).

    Calling: `model(x)` on images (N, H, W, C); the mode is the layers' (`model.train()`,
    `model.eval()`, `ml_practical.nnx.mc_dropout(model)`). Conv layer j (counted over all stages)
    is `conv_{j}` and sows "preact" / "act" there (inside `nnx.capture`,
    `ml_practical.nnx.capture.intermediates`).
    """

    def __init__(self, input_shape: tuple[int, ...], *, rngs: nnx.Rngs,
                 config: linen_cnn.CNN | None = None, **fields):
        cfg = config if config is not None else linen_cnn.CNN(**fields)
        self.config = cfg
        n_in = image_channels("CNN", input_shape)
        hidden_init = initializers.get(cfg.hidden_init)
        bias_init = initializers.get(cfg.bias_init)
        norm_first = cfg.norm != "none" and cfg.norm_position == "before"
        self.norm_first = norm_first
        j = 0
        for s, width in enumerate(cfg.widths):
            for c in range(cfg.convs_per_stage):
                # The same rules as the linen __call__: "none" pooling strides the next stage's
                # first conv; BN right after the conv makes its bias redundant.
                stride = 2 if (cfg.pool == "none" and s > 0 and c == 0) else 1
                use_bias = cfg.use_bias and (cfg.bias_before_bn
                                             or not (norm_first and cfg.norm == "batch"))
                setattr(self, f"conv_{j}", conv2d(n_in, width, cfg.kernel_size, stride,
                                                  use_bias=use_bias, kernel_init=hidden_init,
                                                  bias_init=bias_init,
                                                  backward=cfg.conv_backward, rngs=rngs))
                norm = make_norm(cfg.norm, width, rngs=rngs, momentum=cfg.bn_momentum,
                                 epsilon=cfg.norm_epsilon, num_groups=cfg.num_groups,
                                 layer_norm_axes=cfg.layer_norm_axes,
                                 bn_backward=cfg.bn_backward,
                                 ghost_batch_size=cfg.ghost_batch_size)
                if norm is not None:
                    setattr(self, f"norm_{j}", norm)
                n_in = width
                j += 1
        if cfg.drop_rate > 0.0:
            self.dropout = Dropout(cfg.drop_rate, sampler=cfg.dropout_sampler, rngs=rngs)
        self.head = nnx.Linear(n_in, cfg.num_classes, kernel_init=initializers.get(cfg.output_init),
                               bias_init=bias_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"CNN: expected images (N, H, W, C), got shape {x.shape}")
        act = get_activation(cfg.activation)
        j = 0
        for s in range(len(cfg.widths)):
            for _ in range(cfg.convs_per_stage):
                conv = getattr(self, f"conv_{j}")
                x = conv(x)
                sow(conv, "preact", x)
                if self.norm_first:
                    x = getattr(self, f"norm_{j}")(x)
                x = act(x)
                if cfg.norm != "none" and cfg.norm_position == "after":
                    x = getattr(self, f"norm_{j}")(x)
                sow(conv, "act", x)
                j += 1
            if s < len(cfg.widths) - 1:  # between stages ("none": the next conv strides)
                if cfg.pool == "max":
                    x = linen_cnn.max_pool_2x2(x)
                elif cfg.pool == "avg":
                    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        if cfg.drop_rate > 0.0:
            x = self.dropout(x)
        return self.head(x)
