"""The ResNet family (`ml_practical.models.resnet.ResNet`) as nnx modules, on the same fields and
weights.

Every variant ("cifar", "preact", "wide", "imagenet"), shortcut ("A", "B") and residual form
("standard", "zero_gamma", "fixup", "skipinit", "rezero") of the linen family, every norm kind,
dropout and both conv backwards. Built from the linen family's fields (checked there, so a config
or a Python call is accepted or refused the same way) and the input shape (H, W, C); the
architecture is read from the linen instance (`layout()`, `stage_widths()`, `stem_width()`,
`shortcut_kind`, `num_branches()`, `spec()`, a block's branch shape) and the pure helpers of
`ml_practical.models.resnet` (`shortcut_a`, `fixup_scale`), so it is decided in one place.

The module tree is the linen one: "stem" ("conv", "norm", Fixup's "bias"), "stage_{s}" /
"block_{b}" ("conv_{i}", "norm_{i}", "shortcut_conv", "shortcut_norm", "dropout", the scalars
"skip_gain", "bias_{i}a", "bias_{i}b", "scale"), "final_norm", "head_bias_in", "head". So
`nnx.state(model, nnx.Param)` has the structure of the linen model's "params" and
`nnx.state(model, nnx.BatchStat)` that of its "batch_stats" (`ml_practical.nnx.load_variables` /
`linen_variables` convert). Where the linen block decides from its input's runtime shape (is the
shortcut the identity?), the nnx block decides from the input channels it is built for.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from ml_practical import initializers
from ml_practical.models import resnet as linen_resnet
from ml_practical.models.activations import get_activation
from ml_practical.nnx.capture import sow
from ml_practical.nnx.cnn import conv2d, image_channels
from ml_practical.nnx.layers import Dropout, make_norm

__all__ = ["ResNet"]

# What a block needs of its network: the linen `ResNet.spec()` value (a frozen dataclass).
Spec = linen_resnet._Spec


def _scalar(value: float = 0.0) -> nnx.Param:
    """A float32 scalar param at `value`: the linen `self.param(name, constant(value), ())`."""
    return nnx.Param(jnp.full((), value, jnp.float32))


def _norm(net: Spec, features: int, *, rngs: nnx.Rngs, zero_gamma: bool = False):
    """The network's norm layer over `features` channels, or None for norm "none"."""
    scale_init = initializers.get("zeros") if zero_gamma else None
    return make_norm(net.norm, features, rngs=rngs, momentum=net.bn_momentum,
                     epsilon=net.norm_epsilon, num_groups=net.num_groups,
                     layer_norm_axes=net.layer_norm_axes, bn_backward=net.bn_backward,
                     scale_init=scale_init, ghost_batch_size=net.ghost_batch_size)


def _apply(norm, x: jax.Array) -> jax.Array:
    return x if norm is None else norm(x)


class _Stem(nnx.Module):
    """conv [-> norm -> act] (post-activation variants) [-> 3x3/2 max pool] (imagenet)."""

    def __init__(self, net: Spec, in_features: int, *, rngs: nnx.Rngs):
        self.net = net
        imagenet = net.variant == "imagenet"
        use_bias = net.norm == "none" and net.residual != "fixup" and net.use_bias
        self.conv = conv2d(in_features, net.stem_width, 7 if imagenet else 3,
                           2 if imagenet else 1, use_bias=use_bias,
                           kernel_init=initializers.get(net.hidden_init),
                           bias_init=initializers.get(net.bias_init),
                           backward=net.conv_backward, rngs=rngs)
        # A pre-activation block starts with its own norm: the stem has none, and no activation.
        self.post_act = net.variant not in ("preact", "wide")
        if self.post_act:
            norm = _norm(net, net.stem_width, rngs=rngs)
            if norm is not None:
                self.norm = norm
            if net.residual == "fixup":
                self.bias = _scalar()

    def __call__(self, x: jax.Array) -> jax.Array:
        net = self.net
        x = self.conv(x)
        sow(self.conv, "preact", x)
        if self.post_act:
            x = _apply(getattr(self, "norm", None), x)
            if net.residual == "fixup":
                x = x + self.bias[...]
            x = get_activation(net.activation)(x)
        sow(self.conv, "act", x)
        if net.variant == "imagenet":
            # torch's MaxPool2d(3, 2, padding=1) pads with -inf.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class _Block(nnx.Module):
    """One residual block from `in_features` to `features` channels (see `ResNet`)."""

    def __init__(self, net: Spec, in_features: int, features: int, stride: int, bottleneck: bool,
                 fixup_factor: float = 1.0, *, rngs: nnx.Rngs):
        self.net = net
        self.features = features
        self.stride = stride
        self.fixup_factor = fixup_factor
        # The linen block tests `x.shape[-1] == features` at call time; the nnx one is built for
        # its input channels, so the shortcut (identity or A / B) is fixed here.
        self.changes = stride != 1 or in_features != features
        self.form = ("fixup" if net.residual == "fixup"
                     else "preact" if net.variant in ("preact", "wide") else "post")
        if self.form == "preact":
            # norm -> act -> conv, twice; the shortcut conv sees the pre-activated input.
            norm0 = _norm(net, in_features, rngs=rngs)
            if norm0 is not None:
                self.norm_0 = norm0
            self.conv_0 = self._conv(in_features, features, 3, stride, rngs=rngs)
            norm1 = _norm(net, features, rngs=rngs)
            if norm1 is not None:
                self.norm_1 = norm1
            self.conv_1 = self._conv(features, features, 3, 1, rngs=rngs)
        else:
            # The branch's widths, kernels and strides: the linen block's rule.
            self.branch = linen_resnet.branch_shape(features, stride, bottleneck)
            widths, kernels, strides = self.branch
            fixup = self.form == "fixup"
            n_in = in_features
            for i, (w, k, s) in enumerate(zip(widths, kernels, strides)):
                last = i == len(widths) - 1
                if fixup:
                    setattr(self, f"bias_{i}a", _scalar())
                    setattr(self, f"bias_{i}b", _scalar())
                setattr(self, f"conv_{i}", self._conv(n_in, w, k, s, zero=fixup and last,
                                                      scaled=fixup and not last, rngs=rngs))
                norm = _norm(net, w, rngs=rngs, zero_gamma=last and net.residual == "zero_gamma")
                if norm is not None:
                    setattr(self, f"norm_{i}", norm)
                n_in = w
            if fixup:
                self.scale = _scalar(1.0)
        if self.changes and net.shortcut_kind == "B":
            self.shortcut_conv = self._conv(in_features, features, 1, stride, rngs=rngs)
            # Only a post-activation, normalized block normalizes its shortcut (the linen
            # `_shortcut`: not on a pre-activated input, not under Fixup).
            if self.form == "post":
                norm = _norm(net, features, rngs=rngs)
                if norm is not None:
                    self.shortcut_norm = norm
        if net.residual in ("skipinit", "rezero"):
            self.skip_gain = _scalar()
        if net.drop_rate > 0.0:
            self.dropout = Dropout(net.drop_rate, sampler=net.dropout_sampler, rngs=rngs)

    def _conv(self, in_features, features, k, stride, *, zero=False, scaled=False, rngs):
        """The linen block's `_conv`: He (or `hidden_init`), Fixup's zero / scaled inits, a bias
        only without a norm and not under Fixup (it has scalar biases)."""
        net = self.net
        init = initializers.get(net.hidden_init)
        if zero:
            init = initializers.get("zeros")
        elif scaled:
            init = linen_resnet._scaled(init, self.fixup_factor)
        use_bias = net.norm == "none" and net.residual != "fixup"
        return conv2d(in_features, features, k, stride, use_bias=use_bias and net.use_bias,
                      kernel_init=init, bias_init=initializers.get(net.bias_init),
                      backward=net.conv_backward, rngs=rngs)

    def _norm(self, name: str, x: jax.Array) -> jax.Array:
        return _apply(getattr(self, name, None), x)

    def _gate(self, branch: jax.Array) -> jax.Array:
        if self.net.residual in ("skipinit", "rezero"):
            return branch * self.skip_gain[...]
        return branch

    def _dropout(self, x: jax.Array) -> jax.Array:
        return self.dropout(x) if self.net.drop_rate > 0.0 else x

    def _shortcut(self, x: jax.Array, *, preactivated: jax.Array | None = None) -> jax.Array:
        """The identity, or option A / B where the shape changes."""
        if not self.changes:
            return x
        if self.net.shortcut_kind == "A":
            return linen_resnet.shortcut_a(x, self.features, self.stride)
        y = self.shortcut_conv(x if preactivated is None else preactivated)
        if self.form == "post":
            y = self._norm("shortcut_norm", y)
        return y

    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_activation(self.net.activation)
        if self.form == "fixup":
            return self._fixup(x, act)
        if self.form == "preact":
            return self._preact(x, act)
        # Post-activation: conv -> norm -> act [-> conv -> norm -> act] -> conv -> norm, + shortcut.
        n = len(self.branch[0])
        y = x
        for i in range(n):
            last = i == n - 1
            conv = getattr(self, f"conv_{i}")
            y = conv(y)
            sow(conv, "preact", y)
            y = self._norm(f"norm_{i}", y)
            if not last:
                y = act(y)
                sow(conv, "act", y)
                if i == 0:
                    y = self._dropout(y)
        out = self._gate(y) + self._shortcut(x)
        if self.net.residual != "rezero":
            out = act(out)
        sow(conv, "act", out)
        return out

    def _preact(self, x, act):
        """norm -> act -> conv, twice (dropout between, as WRN), + shortcut (He et al. 2016b)."""
        pre = act(self._norm("norm_0", x))
        shortcut = self._shortcut(x, preactivated=pre if self.changes else None)
        y = self.conv_0(pre)
        sow(self.conv_0, "preact", y)
        y = act(self._norm("norm_1", y))
        sow(self.conv_0, "act", y)
        y = self._dropout(y)
        y = self.conv_1(y)
        sow(self.conv_1, "preact", y)
        out = self._gate(y) + shortcut
        sow(self.conv_1, "act", out)
        return out

    def _fixup(self, x, act):
        """Fixup's residual block (Zhang et al. 2019; the linen `_fixup`'s order of the scalar
        biases): every conv but the last scaled, the last at 0, a scalar multiplier."""
        n = len(self.branch[0])
        bias_in = self.bias_0a[...]
        y = x + bias_in
        for i in range(n):
            last = i == n - 1
            if i > 0:
                y = y + getattr(self, f"bias_{i}a")[...]
            conv = getattr(self, f"conv_{i}")
            y = conv(y)
            sow(conv, "preact", y)
            if not last:
                y = act(y + getattr(self, f"bias_{i}b")[...])
                sow(conv, "act", y)
                if i == 0:
                    y = self._dropout(y)
        y = y * self.scale[...] + getattr(self, f"bias_{n - 1}b")[...]
        out = act(y + self._shortcut(x + bias_in))
        sow(conv, "act", out)
        return out


class _Stage(nnx.Module):
    """n blocks of one width; the first has the stage's stride."""

    def __init__(self, net: Spec, in_features: int, features: int, num_blocks: int, stride: int,
                 bottleneck: bool, fixup_factor: float, *, rngs: nnx.Rngs):
        self.num_blocks = num_blocks
        for b in range(num_blocks):
            setattr(self, f"block_{b}", _Block(net, in_features if b == 0 else features, features,
                                               stride if b == 0 else 1, bottleneck, fixup_factor,
                                               rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        for b in range(self.num_blocks):
            x = getattr(self, f"block_{b}")(x)
        return x


class ResNet(nnx.Module):
    """A residual network (the variants, shortcuts and residual forms of `models.resnet`).

    Args:
      input_shape: the shape of one image, (H, W, C) (C sets the stem conv's input channels).
      rngs: `nnx.Rngs` with a "params" stream (initializers) and, for drop_rate > 0, a "dropout"
        stream.
      config: a `models.ResNet` (its fields); or give the fields as keywords (`**fields`).

    Calling: `model(x)` on images (N, H, W, C); the mode is the layers' (`model.train()`,
    `model.eval()`, `ml_practical.nnx.mc_dropout(model)` where drop_rate > 0). Module paths are
    the linen ones ("stem/conv", "stage_{s}/block_{b}/conv_{i}", "head"); each conv sows
    "preact" / "act" where the linen one does (inside `nnx.capture`,
    `ml_practical.nnx.capture.intermediates`).
    """

    def __init__(self, input_shape: tuple[int, ...], *, rngs: nnx.Rngs,
                 config: linen_resnet.ResNet | None = None, **fields):
        cfg = config if config is not None else linen_resnet.ResNet(**fields)
        self.config = cfg
        n_in = image_channels("ResNet", input_shape)
        blocks, bottleneck = cfg.layout()
        fixup = cfg.residual == "fixup"
        factor = (linen_resnet.fixup_scale(cfg.num_branches(), 3 if bottleneck else 2) if fixup
                  else 1.0)
        spec = cfg.spec()
        self.stem = _Stem(spec, n_in, rngs=rngs)
        n_in = spec.stem_width
        self.num_stages = len(blocks)
        for s, (n, width) in enumerate(zip(blocks, cfg.stage_widths())):
            setattr(self, f"stage_{s}", _Stage(spec, n_in, width, n, 1 if s == 0 else 2,
                                               bottleneck, factor, rngs=rngs))
            n_in = width
        self.preact = cfg.variant in ("preact", "wide")
        if self.preact:  # the pre-activation blocks leave their sum un-normalized
            norm = _norm(spec, n_in, rngs=rngs)
            if norm is not None:
                self.final_norm = norm
        if fixup:
            self.head_bias_in = _scalar()
        zeros = initializers.get("zeros")
        self.head = nnx.Linear(n_in, cfg.num_classes,
                               kernel_init=zeros if fixup else initializers.get(cfg.output_init),
                               bias_init=zeros if fixup else initializers.get(cfg.bias_init),
                               rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"ResNet: expected images (N, H, W, C), got shape {x.shape}")
        x = self.stem(x)
        for s in range(self.num_stages):
            x = getattr(self, f"stage_{s}")(x)
        if self.preact:
            x = _apply(getattr(self, "final_norm", None), x)
            x = get_activation(cfg.activation)(x)
        x = jnp.mean(x, axis=(1, 2))
        if cfg.residual == "fixup":
            x = x + self.head_bias_in[...]
        return self.head(x)
