"""Residual networks: the CIFAR ResNets, pre-activation ResNets, Wide ResNets and ImageNet ResNets,
with every normalization and the ways to train them without one.

Variants (`variant`, `depth`):

  "cifar"     He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2:
              a 3x3 conv of 16 channels, three stages of n basic blocks with 16, 32, 64 channels
              (stride 2 at the start of stages 2 and 3), global average pool, Dense. depth = 6n+2:
              ResNet-20/32/44/56/110 (0.27M / 0.46M / 0.66M / 0.85M / 1.7M parameters).
  "preact"    He et al. 2016b, "Identity Mappings in Deep Residual Networks": the same layout
              with pre-activation blocks (norm -> ReLU -> conv, twice; nothing after the
              addition) and a final norm -> ReLU before the pool. depth = 6n+2.
  "wide"      Zagoruyko & Komodakis 2016, "Wide Residual Networks": pre-activation blocks with
              16k, 32k, 64k channels (k = `width_multiplier`; the stem stays 16), dropout between
              the two convs of a block (`drop_rate`). WRN-d-k has depth d = 6n+4 (WRN-28-10:
              36.5M parameters).
  "imagenet"  He et al. 2016 Table 1: a 7x7/2 conv of 64 channels and a 3x3/2 max pool, four
              stages of 64, 128, 256, 512 channels; basic blocks for depth 18 / 34, bottleneck
              blocks (1x1, 3x3, 1x1 with 4x expansion; the stride on the 3x3, as torchvision)
              for 50 / 101 / 152 (ResNet-18 11.7M, ResNet-50 25.6M with 1000 classes).

Shortcuts (`shortcut`, where a block changes the shape): "A" (the CIFAR paper's option A:
subsample by the stride and zero-pad the new channels, half on each side as the widely used
PyTorch CIFAR ResNet does; no parameters) or "B" (a 1x1 convolution with the stride, then the
norm; on the pre-activated input in pre-activation blocks). "auto" is A for "cifar", B otherwise.

Residual forms (`residual`), the ways to train deep residual networks with and without a norm:

  "standard"    y = act(F(x) + shortcut(x)) (post-activation) or F(x) + shortcut(x) (pre-act).
  "zero_gamma"  the last norm of each branch starts with gamma = 0 (Goyal et al. 2017, "Accurate,
                Large Minibatch SGD"), so every block starts as its shortcut; needs a norm and a
                post-activation variant (a pre-activation branch ends in a conv).
  "fixup"       Zhang, Dauphin & Ma 2019, "Fixup Initialization": no normalization (norm
                "none"); the branch's convolutions but its last are initialized as usual times
                L^(-1/(2m-2)) (L residual branches, m layers per branch: L^(-1/2) for basic,
                L^(-1/4) for bottleneck blocks), its last convolution and the classifier at 0, a
                scalar bias before each convolution, the activations and the classifier, and a
                scalar multiplier (init 1) on the branch. Post-activation variants.
  "skipinit"    De & Smith 2020, "Batch Normalization Biases Residual Blocks Towards the Identity
                Function": y = shortcut(x) + alpha F(x) with one scalar alpha per block at 0
                (the block's post-addition activation, if any, is kept).
  "rezero"      Bachlechner et al. 2020, "ReZero is All You Need": the same gate alpha = 0, and
                nothing after the addition: the identity path is exactly x + alpha F(x).

Every variant takes `norm` in {batch, group, layer, instance, none} (`models.norms`), a
`width_multiplier`, and the library's initializers by name (`hidden_init`; LSUV is applied to the
initialized variables by `ml_practical.lsuv`, which finds every conv).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_practical import initializers, layers
from ml_practical.config import ConfigError, check_fields, field
from ml_practical.models.activations import ACTIVATIONS, get_activation
from ml_practical.models.cnn import CONV_BACKWARDS, conv2d
from ml_practical.models.mlp import Initializer, check_initializer
from ml_practical.models.norms import LAYER_NORM_AXES, NORMS, make_norm

VARIANTS = ("cifar", "imagenet", "preact", "wide")
SHORTCUTS = ("A", "B", "auto")
RESIDUALS = ("fixup", "rezero", "skipinit", "standard", "zero_gamma")
# ImageNet ResNets: blocks per stage, and whether they are bottlenecks (He et al. 2016, Table 1).
IMAGENET_LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
                    50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True),
                    152: ((3, 8, 36, 3), True)}
BOTTLENECK_EXPANSION = 4


def fixup_scale(num_branches: int, layers_per_branch: int) -> float:
    """Fixup's factor on the branch's first m-1 layers: L^(-1/(2m-2)) (Zhang et al. 2019, eq. 6
    and section 3: L residual branches of m layers each)."""
    if num_branches < 1 or layers_per_branch < 2:
        raise ValueError(f"fixup_scale: L = {num_branches}, m = {layers_per_branch}; expected "
                         "L >= 1 and m >= 2")
    return float(num_branches) ** (-1.0 / (2 * layers_per_branch - 2))


def _scaled(init: Callable, factor: float) -> Callable:
    def scaled_init(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * jnp.asarray(factor, dtype)
    return scaled_init


def shortcut_a(x: jax.Array, features: int, stride: int) -> jax.Array:
    """Option A: subsample by `stride`, zero-pad the channels up to `features`, half the new ones
    before and half after the old (the popular PyTorch CIFAR ResNet's F.pad(..., planes // 4))."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"shortcut A cannot reduce {x.shape[-1]} channels to {features}")
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What a block needs of its `ResNet` (the fields mean the same)."""

    variant: str
    residual: str
    norm: str
    num_groups: int
    layer_norm_axes: str
    bn_momentum: float
    norm_epsilon: float
    bn_backward: str
    ghost_batch_size: int
    conv_backward: str
    activation: str
    drop_rate: float
    dropout_sampler: str
    hidden_init: Any
    bias_init: Any
    use_bias: bool
    shortcut_kind: str
    stem_width: int


class _Stage(nn.Module):
    """n blocks of one width; the first has the stage's stride."""

    net: _Spec
    features: int
    num_blocks: int
    stride: int
    bottleneck: bool
    fixup_factor: float

    @nn.compact
    def __call__(self, x, *, train: bool, mc_dropout: bool = False):
        for b in range(self.num_blocks):
            x = _Block(self.net, self.features, self.stride if b == 0 else 1, self.bottleneck,
                       self.fixup_factor, name=f"block_{b}")(x, train=train,
                                                             mc_dropout=mc_dropout)
        return x


class _Block(nn.Module):
    """One residual block; its fields are the network's (see `ResNet`)."""

    net: _Spec
    features: int  # the block's output channels
    stride: int
    bottleneck: bool
    fixup_factor: float = 1.0

    def _conv(self, features, k, stride, name, *, zero=False, scaled=False):
        net = self.net
        init = initializers.get(net.hidden_init)
        if zero:
            init = initializers.get("zeros")
        elif scaled:
            init = _scaled(init, self.fixup_factor)
        use_bias = net.norm == "none" and net.residual != "fixup"  # fixup: scalar biases
        return conv2d(features, k, stride, name=name, use_bias=use_bias and net.use_bias,
                      kernel_init=init, bias_init=initializers.get(net.bias_init),
                      backward=net.conv_backward)

    def _norm(self, name, *, last=False):
        net = self.net
        scale_init = initializers.get("zeros") if (last and net.residual == "zero_gamma") else None
        return make_norm(net.norm, name=name, momentum=net.bn_momentum, epsilon=net.norm_epsilon,
                         num_groups=net.num_groups, layer_norm_axes=net.layer_norm_axes,
                         bn_backward=net.bn_backward, scale_init=scale_init,
                         ghost_batch_size=net.ghost_batch_size)

    def _apply_norm(self, x, name, train, *, last=False):
        norm = self._norm(name, last=last)
        return x if norm is None else norm(x, train=train)

    def _scalar(self, name, value=0.0):
        return self.param(name, nn.initializers.constant(value), (), jnp.float32)

    def _gate(self, branch):
        if self.net.residual in ("skipinit", "rezero"):
            return branch * self._scalar("skip_gain")
        return branch

    def _dropout(self, x, train, mc_dropout):
        net = self.net
        if net.drop_rate > 0.0:
            x = layers.Dropout(net.drop_rate, sampler=net.dropout_sampler,
                               name="dropout")(x, train=train or mc_dropout)
        return x

    def _shortcut(self, x, train, *, preactivated=None):
        """The identity, or option A / B where the shape changes."""
        net = self.net
        if self.stride == 1 and x.shape[-1] == self.features:
            return x
        if net.shortcut_kind == "A":
            return shortcut_a(x, self.features, self.stride)
        source = x if preactivated is None else preactivated
        conv = self._conv(self.features, 1, self.stride, "shortcut_conv")
        y = conv(source)
        if preactivated is None and net.residual != "fixup":
            y = self._apply_norm(y, "shortcut_norm", train)
        return y

    @nn.compact
    def __call__(self, x, *, train: bool, mc_dropout: bool = False):
        net = self.net
        act = get_activation(net.activation)
        if net.residual == "fixup":
            return self._fixup(x, act, train, mc_dropout)
        if net.variant in ("preact", "wide"):
            return self._preact(x, act, train, mc_dropout)
        # Post-activation: conv -> norm -> act [-> conv -> norm -> act] -> conv -> norm, + shortcut.
        widths, kernels, strides = self._branch_shape()
        y = x
        for i, (w, k, s) in enumerate(zip(widths, kernels, strides)):
            last = i == len(widths) - 1
            conv = self._conv(w, k, s, f"conv_{i}")
            y = conv(y)
            conv.sow("intermediates", "preact", y)
            y = self._apply_norm(y, f"norm_{i}", train, last=last)
            if not last:
                y = act(y)
                conv.sow("intermediates", "act", y)
                if i == 0:
                    y = self._dropout(y, train, mc_dropout)
        out = self._gate(y) + self._shortcut(x, train)
        if net.residual != "rezero":
            out = act(out)
        conv.sow("intermediates", "act", out)
        return out

    def _branch_shape(self):
        return branch_shape(self.features, self.stride, self.bottleneck)

    def _preact(self, x, act, train, mc_dropout):
        """norm -> act -> conv, twice (dropout between, as WRN), + shortcut (He et al. 2016b)."""
        pre = act(self._apply_norm(x, "norm_0", train))
        changes = self.stride != 1 or x.shape[-1] != self.features
        shortcut = self._shortcut(x, train, preactivated=pre if changes else None)
        conv0 = self._conv(self.features, 3, self.stride, "conv_0")
        y = conv0(pre)
        conv0.sow("intermediates", "preact", y)
        y = act(self._apply_norm(y, "norm_1", train))
        conv0.sow("intermediates", "act", y)
        y = self._dropout(y, train, mc_dropout)
        conv1 = self._conv(self.features, 3, 1, "conv_1")
        y = conv1(y)
        conv1.sow("intermediates", "preact", y)
        out = self._gate(y) + shortcut
        conv1.sow("intermediates", "act", out)
        return out

    def _fixup(self, x, act, train, mc_dropout):
        """Zhang et al. 2019, Fixup's residual block (their reference code's order of the scalar
        biases): every conv but the last scaled by L^(-1/(2m-2)), the last at 0, a multiplier."""
        widths, kernels, strides = self._branch_shape()
        bias_in = self._scalar("bias_0a")
        y = x + bias_in
        for i, (w, k, s) in enumerate(zip(widths, kernels, strides)):
            last = i == len(widths) - 1
            if i > 0:
                y = y + self._scalar(f"bias_{i}a")
            conv = self._conv(w, k, s, f"conv_{i}", zero=last, scaled=not last)
            y = conv(y)
            conv.sow("intermediates", "preact", y)
            if not last:
                y = act(y + self._scalar(f"bias_{i}b"))
                conv.sow("intermediates", "act", y)
                if i == 0:
                    y = self._dropout(y, train, mc_dropout)
        y = y * self._scalar("scale", 1.0) + self._scalar(f"bias_{len(widths) - 1}b")
        out = act(y + self._shortcut(x + bias_in, train))
        conv.sow("intermediates", "act", out)
        return out


def branch_shape(features: int, stride: int, bottleneck: bool):
    """A residual branch's (widths, kernel sizes, strides) per conv: basic 3x3, 3x3 (the stride
    on the first), or bottleneck 1x1, 3x3, 1x1 with 4x expansion (the stride on the 3x3, as
    torchvision)."""
    if bottleneck:
        inner = features // BOTTLENECK_EXPANSION
        return (inner, inner, features), (1, 3, 1), (1, stride, 1)
    return (features, features), (3, 3), (stride, 1)


class ResNet(nn.Module):
    """A residual network (the variants, shortcuts and residual forms of the module docstring).

    Attributes:
      variant: "cifar", "preact", "wide" or "imagenet".
      depth: total weighted layers: 6n+2 (cifar, preact), 6n+4 (wide), 18/34/50/101/152
        (imagenet).
      num_classes: output logits.
      width_multiplier: channels times this (wide: k, the stem kept at 16).
      shortcut: "A", "B" or "auto".
      residual: "standard", "zero_gamma", "fixup", "skipinit" or "rezero".
      norm, num_groups, layer_norm_axes, bn_momentum, norm_epsilon, bn_backward,
        ghost_batch_size: the norm layers
        (`models.norms.make_norm`); convs get a bias only with norm "none" (and not under Fixup,
        which has its scalar biases instead).
      conv_backward: the convolutions' gradients, "xla" or "chunked" (`models.cnn.conv2d`).
      activation: of every block.
      drop_rate, dropout_sampler: dropout between a block's first two convs (WRN; 0: none).
      hidden_init: the convolutions' initializer (`initializers.get`; He by default).
      output_init: the classifier's (zero under Fixup, whatever this says).
      bias_init, use_bias: conv and classifier biases.

    Calling: the `ml_practical.models` contract on images (N, H, W, C). Module paths are
    "stem/conv", "stage_{s}/block_{b}/conv_{i}" (plus "shortcut_conv"), "head"; each conv sows
    "preact" (its output) and "act" (after the next activation; for the branch's last conv, the
    block's output). `mc_dropout` works where drop_rate > 0.
    """

    variant: str = field("cifar", choices=VARIANTS)
    depth: int = field(20, ge=1)
    num_classes: int = field(10, ge=1)
    width_multiplier: float = field(1.0, gt=0)
    shortcut: str = field("auto", choices=SHORTCUTS)
    residual: str = field("standard", choices=RESIDUALS)
    norm: str = field("batch", choices=NORMS)
    num_groups: int = field(8, ge=1)
    layer_norm_axes: str = field("all", choices=LAYER_NORM_AXES)
    bn_momentum: float = field(0.9, ge=0, le=1)
    norm_epsilon: float = field(1e-5, ge=0)
    bn_backward: str = field("autodiff", choices=layers.BN_BACKWARDS)
    ghost_batch_size: int = field(0, ge=0)
    conv_backward: str = field("xla", choices=CONV_BACKWARDS)
    activation: str = field("relu", choices=tuple(ACTIVATIONS))
    drop_rate: float = field(0.0, ge=0, lt=1)
    dropout_sampler: str = field("bernoulli", choices=layers.DROPOUT_SAMPLERS)
    hidden_init: Initializer = "he_normal"
    output_init: Initializer = "xavier_normal"
    bias_init: Initializer = "zeros"
    use_bias: bool = True

    def __post_init__(self):
        check_fields(self, "model")
        for name in ("hidden_init", "output_init", "bias_init"):
            check_initializer(f"model.{name}", getattr(self, name))
        self.layout()  # the depth fits the variant
        if self.residual == "fixup":
            if self.norm != "none":
                raise ConfigError(f"model.residual: 'fixup' trains without normalization; set "
                                  f"model.norm='none' (got {self.norm!r})")
            if self.variant not in ("cifar", "imagenet"):
                raise ConfigError(f"model.residual: 'fixup' is defined here for the "
                                  f"post-activation variants ['cifar', 'imagenet'], not "
                                  f"{self.variant!r}")
        if self.residual == "zero_gamma":
            if self.norm == "none":
                raise ConfigError("model.residual: 'zero_gamma' zeroes the last norm's gamma; "
                                  "it needs a model.norm other than 'none'")
            if self.variant not in ("cifar", "imagenet"):
                raise ConfigError(f"model.residual: 'zero_gamma' needs a branch that ends in a "
                                  f"norm (variants ['cifar', 'imagenet']), not {self.variant!r}")
        if self.norm == "group":
            bad = [w for w in self.stage_widths() if w % self.num_groups]
            if bad or self.stem_width() % self.num_groups:
                raise ConfigError(f"model.num_groups: {self.num_groups} does not divide the "
                                  f"widths {[self.stem_width(), *self.stage_widths()]}")
        super().__post_init__()

    # The architecture, from the fields ------------------------------------------------------
    @property
    def shortcut_kind(self) -> str:
        if self.shortcut != "auto":
            return self.shortcut
        return "A" if self.variant == "cifar" else "B"

    def layout(self) -> tuple[tuple[int, ...], bool]:
        """(blocks per stage, bottleneck) for this variant and depth; ConfigError if none."""
        if self.variant == "imagenet":
            if self.depth not in IMAGENET_LAYOUTS:
                raise ConfigError(f"model.depth: {self.depth} is not an ImageNet ResNet depth; "
                                  f"expected one of {sorted(IMAGENET_LAYOUTS)}")
            return IMAGENET_LAYOUTS[self.depth]
        extra = 4 if self.variant == "wide" else 2
        if self.depth < 6 + extra or (self.depth - extra) % 6:
            raise ConfigError(f"model.depth: {self.depth} does not fit variant "
                              f"{self.variant!r}; expected 6n+{extra} with n >= 1 (e.g. "
                              f"{', '.join(str(6 * n + extra) for n in (1, 3, 9, 18))})")
        n = (self.depth - extra) // 6
        return (n, n, n), False

    def _scaled(self, base: int) -> int:
        return max(1, int(round(base * self.width_multiplier)))

    def stem_width(self) -> int:
        if self.variant == "imagenet":
            return self._scaled(64)
        return 16 if self.variant == "wide" else self._scaled(16)

    def stage_widths(self) -> tuple[int, ...]:
        """Output channels of each stage's blocks."""
        if self.variant == "imagenet":
            _, bottleneck = self.layout()
            factor = BOTTLENECK_EXPANSION if bottleneck else 1
            return tuple(self._scaled(w) * factor for w in (64, 128, 256, 512))
        return tuple(self._scaled(w) for w in (16, 32, 64))

    def num_branches(self) -> int:
        return sum(self.layout()[0])

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mc_dropout: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ResNet: expected images (N, H, W, C), got shape {x.shape}")
        act = get_activation(self.activation)
        blocks, bottleneck = self.layout()
        fixup = self.residual == "fixup"
        factor = (fixup_scale(self.num_branches(), 3 if bottleneck else 2) if fixup else 1.0)
        preact = self.variant in ("preact", "wide")

        spec = self.spec()
        x = _Stem(spec, name="stem")(x, train=train)
        for s, (n, width) in enumerate(zip(blocks, self.stage_widths())):
            x = _Stage(spec, width, n, 1 if s == 0 else 2, bottleneck, factor,
                       name=f"stage_{s}")(x, train=train, mc_dropout=mc_dropout)
        if preact:  # the pre-activation blocks leave their sum un-normalized
            norm = make_norm(self.norm, name="final_norm", momentum=self.bn_momentum,
                             epsilon=self.norm_epsilon, num_groups=self.num_groups,
                             layer_norm_axes=self.layer_norm_axes, bn_backward=self.bn_backward,
                             ghost_batch_size=self.ghost_batch_size)
            if norm is not None:
                x = norm(x, train=train)
            x = act(x)
        x = jnp.mean(x, axis=(1, 2))
        if fixup:
            x = x + self.param("head_bias_in", nn.initializers.zeros, (), jnp.float32)
        zeros = initializers.get("zeros")
        return nn.Dense(self.num_classes,
                        kernel_init=zeros if fixup else initializers.get(self.output_init),
                        bias_init=zeros if fixup else initializers.get(self.bias_init),
                        name="head")(x)

    def spec(self) -> _Spec:
        """The fields the blocks need, as a plain frozen value (a submodule's attribute)."""
        return _Spec(**{f: getattr(self, f) for f in _Spec.__dataclass_fields__
                        if f not in ("shortcut_kind", "stem_width")},
                     shortcut_kind=self.shortcut_kind, stem_width=self.stem_width())

    def describe(self, input_shape: tuple[int, ...]) -> str:
        return (f"ResNet-{self.depth} ({self.variant}, shortcut {self.shortcut_kind}, residual "
                f"{self.residual}, norm {self.norm}, width x{self.width_multiplier:g}) on "
                f"{'x'.join(map(str, input_shape))}")


class _Stem(nn.Module):
    """conv [-> norm -> act] (post-activation variants) [-> 3x3/2 max pool] (imagenet)."""

    net: _Spec

    @nn.compact
    def __call__(self, x, *, train: bool):
        net = self.net
        imagenet = net.variant == "imagenet"
        use_bias = net.norm == "none" and net.residual != "fixup" and net.use_bias
        conv = conv2d(net.stem_width, 7 if imagenet else 3, 2 if imagenet else 1, name="conv",
                      use_bias=use_bias, kernel_init=initializers.get(net.hidden_init),
                      bias_init=initializers.get(net.bias_init), backward=net.conv_backward)
        x = conv(x)
        conv.sow("intermediates", "preact", x)
        if net.variant not in ("preact", "wide"):  # a pre-activation block starts with its norm
            norm = make_norm(net.norm, name="norm", momentum=net.bn_momentum,
                             epsilon=net.norm_epsilon, num_groups=net.num_groups,
                             layer_norm_axes=net.layer_norm_axes, bn_backward=net.bn_backward,
                             ghost_batch_size=net.ghost_batch_size)
            if norm is not None:
                x = norm(x, train=train)
            if net.residual == "fixup":
                x = x + self.param("bias", nn.initializers.zeros, (), jnp.float32)
            x = get_activation(net.activation)(x)
        # Pre-activation: the stem has no activation of its own (block_0 starts with one).
        conv.sow("intermediates", "act", x)
        if imagenet:
            # torch's MaxPool2d(3, 2, padding=1) pads with -inf.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x
