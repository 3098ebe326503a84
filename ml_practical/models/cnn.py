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

from ml_practical import conv, initializers, layers
from ml_practical.config import ConfigError, check_fields, field
from ml_practical.models.activations import ACTIVATIONS, get_activation
from ml_practical.models.mlp import NORM_POSITIONS, Initializer, check_initializer
from ml_practical.models.norms import LAYER_NORM_AXES, NORMS, make_norm

POOLS = ("avg", "max", "none")
CONV_BACKWARDS = ("xla", "chunked")


def conv2d(features: int, kernel_size: int, stride: int, *, name: str, use_bias: bool,
           kernel_init, bias_init, backward: str = "xla") -> nn.Conv:
    """A k x k convolution with torch's symmetric padding (k // 2 on every side).

    flax's "SAME" pads a stride-2 convolution asymmetrically (TensorFlow's rule: the extra pixel
    at the end); torch's Conv2d(padding=k // 2) pads both sides equally. Explicit padding makes a
    network here and its PyTorch twin compute the same function on the same weights.

    backward: "xla" (XLA's own gradients) or "chunked" (`ml_practical.conv.chunked`: the kernel
    gradient summed over chunks of the batch, 1.4-1.6x faster training on XLA:CPU, equal up to
    the order of float32 additions). The forward pass is the same either way.
    """
    if backward not in CONV_BACKWARDS:
        raise ValueError(f"conv backward: {backward!r}; expected one of {CONV_BACKWARDS}")
    pad = kernel_size // 2
    extra = {"conv_general_dilated": conv.chunked()} if backward == "chunked" else {}
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=use_bias, kernel_init=kernel_init,
                   bias_init=bias_init, name=name, **extra)


def _windows(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H//2, W//2, 4, C): each 2x2 window's entries in row-major order."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    win = x[:, : 2 * h2, : 2 * w2, :].reshape(n, h2, 2, w2, 2, c)
    return win.transpose(0, 1, 3, 2, 4, 5).reshape(n, h2, w2, 4, c)


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, NHWC: `nn.max_pool(x, (2, 2), strides=(2, 2))` ("VALID": an odd
    last row or column is dropped), with the same values and the same derivatives.

    The value is a max over a reshape. The derivative (a custom JVP, so reverse mode is its
    transpose) takes each window's first maximum in row-major order (`argmax`): the gradient
    goes to that entry alone, which is XLA's select-and-scatter rule for `nn.max_pool` (keep
    the current entry while it is >= the next). The rule matters: MNIST-like images have flat
    backgrounds whose windows tie at a nonzero post-BN value, and the plain derivative of `max`
    would split such a window's gradient four ways. Why not `nn.max_pool` itself: XLA:CPU's
    select-and-scatter backward is slow, about 25 ms of a 140 ms training step of the MNIST CNN
    at batch 128 (`benchmarks/conv_speed.py`); here it is a masked select.
    """
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


@max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    first = jnp.argmax(_windows(x), axis=3)
    mask = jnp.arange(4)[None, None, None, :, None] == first[:, :, :, None, :]
    return max_pool_2x2(x), jnp.sum(jnp.where(mask, _windows(t), 0.0), axis=3)


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
        bn_backward, ghost_batch_size: as in `models.mlp.MLP` (norm "instance" is allowed here: images have
        spatial axes). Dropout acts on the pooled features, before the head.
      conv_backward: the convolutions' gradients, "xla" or "chunked" (`conv2d`).
      bias_before_bn: keep the conv bias when BatchNorm follows the conv (`models.mlp.MLP`).

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
    ghost_batch_size: int = field(0, ge=0)
    bias_before_bn: bool = False
    conv_backward: str = field("xla", choices=CONV_BACKWARDS)

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
                use_bias = self.use_bias and (self.bias_before_bn
                                                or not (norm_first and self.norm == "batch"))
                layer = conv2d(width, self.kernel_size, stride, name=f"conv_{j}",
                               use_bias=use_bias, kernel_init=hidden_init, bias_init=bias_init,
                               backward=self.conv_backward)
                x = layer(x)
                layer.sow("intermediates", "preact", x)
                if norm_first:
                    x = self._norm(j)(x, train=train)
                x = act(x)
                if self.norm != "none" and self.norm_position == "after":
                    x = self._norm(j)(x, train=train)
                layer.sow("intermediates", "act", x)
                j += 1
            if s < len(self.widths) - 1:  # between stages ("none": the next conv strides)
                if self.pool == "max":
                    x = max_pool_2x2(x)
                elif self.pool == "avg":
                    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        if self.drop_rate > 0.0:
            x = layers.Dropout(self.drop_rate, sampler=self.dropout_sampler,
                               name="dropout")(x, train=train or mc_dropout)
        return nn.Dense(self.num_classes, kernel_init=initializers.get(self.output_init),
                        bias_init=bias_init, name="head")(x)

    def _norm(self, j: int) -> nn.Module:
        return make_norm(self.norm, name=f"norm_{j}", momentum=self.bn_momentum,
                         epsilon=self.norm_epsilon, num_groups=self.num_groups,
                         layer_norm_axes=self.layer_norm_axes, bn_backward=self.bn_backward,
                         ghost_batch_size=self.ghost_batch_size)

    def describe(self, input_shape: tuple[int, ...]) -> str:
        """'CNN 4 x (3x3 conv 32-64, max pool), norm batch before the activation, dropout 0'."""
        depth = len(self.widths) * self.convs_per_stage
        norm = ("no norm" if self.norm == "none"
                else f"{self.norm} norm {self.norm_position} the activation")
        return (f"CNN of {depth} {self.kernel_size}x{self.kernel_size} convs (widths "
                f"{'-'.join(map(str, self.widths))} x {self.convs_per_stage}, {self.pool} pool) "
                f"on {'x'.join(map(str, input_shape))}, {self.activation}, {norm}, dropout "
                f"{self.drop_rate:g}")
