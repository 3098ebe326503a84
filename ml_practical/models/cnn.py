"""A plain convolutional network: stacks of conv -> [norm] -> activation, pooling between stages,
and a global-average-pool head. No skip connections, so it can be made as deep as a signal
propagation study needs (20-50 conv layers) and shows what depth alone does.

    stage s (channels widths[s]):  convs_per_stage x [3x3 conv -> norm -> activation]
                                   then a 2x2 pool (not after the last stage)
    head:                          global average pool -> [dropout] -> Dense(num_classes)

With the chapter's recipe (He for the ReLU convs, Xavier for the head, BatchNorm before the
activation, no bias on a conv that BatchNorm follows) this is the "conv -> BN -> ReLU" block of
section 12.4.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_practical import initializers, layers
from ml_practical.config import ConfigError, check_fields, field
from ml_practical.models.activations import ACTIVATIONS, get_activation
from ml_practical.models.mlp import NORM_POSITIONS, Initializer, check_initializer
from ml_practical.models.norms import LAYER_NORM_AXES, NORMS, make_norm

POOLS = ("avg", "max", "none")


def conv2d(features: int, kernel_size: int, stride: int, *, name: str, use_bias: bool,
           kernel_init, bias_init) -> nn.Conv:
    """A k x k convolution with torch's symmetric padding (k // 2 on every side).

    flax's "SAME" pads a stride-2 convolution asymmetrically (TensorFlow's rule: the extra pixel
    at the end); torch's Conv2d(padding=k // 2) pads both sides equally. Explicit padding makes a
    network here and its PyTorch twin compute the same function on the same weights.
    """
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=use_bias, kernel_init=kernel_init,
                   bias_init=bias_init, name=name)


class CNN(nn.Module):
    """conv -> [norm] -> activation stacks, pooled between stages, global-average-pool head.

    Attributes:
      widths: channels of each stage, e.g. (32, 64); the spatial size halves between stages.
      convs_per_stage: 3x3 convolutions in each stage (depth = len(widths) * convs_per_stage).
      num_classes: output logits.
      kernel_size: the convolutions' k (odd).
      pool: "max", "avg" (2x2, stride 2) or "none" (a stride-2 first conv of the next stage).
      activation, norm, norm_position, drop_rate, dropout_sampler, hidden_init, output_init,
        bias_init, use_bias, num_groups, layer_norm_axes, bn_momentum, norm_epsilon,
        bn_backward: as in `models.mlp.MLP` (norm "instance" is allowed here: images have
        spatial axes). Dropout acts on the pooled features, before the head.

    Calling: the `ml_practical.models` contract, on images (N, H, W, C). Conv layer j (counted
    over all stages) is `conv_{j}` and sows its pre-activation / activation there.
    """

    widths: tuple[int, ...] = field((32, 64), ge=1)
    convs_per_stage: int = field(1, ge=1)
    num_classes: int = field(10, ge=1)
    kernel_size: int = field(3, ge=1)
    pool: str = field("max", choices=POOLS)
    activation: str = field("relu", choices=tuple(ACTIVATIONS))
    norm: str = field("none", choices=NORMS)
    norm_position: str = field("before", choices=NORM_POSITIONS)
    drop_rate: float = field(0.0, ge=0, lt=1)
    dropout_sampler: str = field("bernoulli", choices=layers.DROPOUT_SAMPLERS)
    hidden_init: Initializer = "he_normal"
    output_init: Initializer = "xavier_normal"
    bias_init: Initializer = "zeros"
    use_bias: bool = True
    num_groups: int = field(8, ge=1)
    layer_norm_axes: str = field("all", choices=LAYER_NORM_AXES)
    bn_momentum: float = field(0.9, ge=0, le=1)
    norm_epsilon: float = field(1e-5, ge=0)
    bn_backward: str = field("autodiff", choices=layers.BN_BACKWARDS)

    def __post_init__(self):
        check_fields(self, "model")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size: {self.kernel_size} is even; expected an odd "
                              "size (symmetric padding keeps the image size)")
        for name in ("hidden_init", "output_init", "bias_init"):
            check_initializer(f"model.{name}", getattr(self, name))
        if self.norm == "group" and any(w % self.num_groups for w in self.widths):
            raise ConfigError(f"model.num_groups: {self.num_groups} does not divide every stage "
                              f"width {list(self.widths)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mc_dropout: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"CNN: expected images (N, H, W, C), got shape {x.shape}")
        act = get_activation(self.activation)
        hidden_init = initializers.get(self.hidden_init)
        bias_init = initializers.get(self.bias_init)
        norm_first = self.norm != "none" and self.norm_position == "before"
        j = 0
        for s, width in enumerate(self.widths):
            for c in range(self.convs_per_stage):
                stride = 2 if (self.pool == "none" and s > 0 and c == 0) else 1
                # BN right after the conv makes its bias redundant (BN subtracts it again).
                use_bias = self.use_bias and not (norm_first and self.norm == "batch")
                conv = conv2d(width, self.kernel_size, stride, name=f"conv_{j}",
                              use_bias=use_bias, kernel_init=hidden_init, bias_init=bias_init)
                x = conv(x)
                conv.sow("intermediates", "preact", x)
                if norm_first:
                    x = self._norm(j)(x, train=train)
                x = act(x)
                if self.norm != "none" and self.norm_position == "after":
                    x = self._norm(j)(x, train=train)
                conv.sow("intermediates", "act", x)
                j += 1
            if self.pool != "none" and s < len(self.widths) - 1:
                pool = nn.max_pool if self.pool == "max" else nn.avg_pool
                x = pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        if self.drop_rate > 0.0:
            x = layers.Dropout(self.drop_rate, sampler=self.dropout_sampler,
                               name="dropout")(x, train=train or mc_dropout)
        return nn.Dense(self.num_classes, kernel_init=initializers.get(self.output_init),
                        bias_init=bias_init, name="head")(x)

    def _norm(self, j: int) -> nn.Module:
        return make_norm(self.norm, name=f"norm_{j}", momentum=self.bn_momentum,
                         epsilon=self.norm_epsilon, num_groups=self.num_groups,
                         layer_norm_axes=self.layer_norm_axes, bn_backward=self.bn_backward)

    def describe(self, input_shape: tuple[int, ...]) -> str:
        """'CNN 4 x (3x3 conv 32-64, max pool), norm batch before the activation, dropout 0'."""
        depth = len(self.widths) * self.convs_per_stage
        norm = ("no norm" if self.norm == "none"
                else f"{self.norm} norm {self.norm_position} the activation")
        return (f"CNN of {depth} {self.kernel_size}x{self.kernel_size} convs (widths "
                f"{'-'.join(map(str, self.widths))} x {self.convs_per_stage}, {self.pool} pool) "
                f"on {'x'.join(map(str, input_shape))}, {self.activation}, {norm}, dropout "
                f"{self.drop_rate:g}")
