"""The multi-layer perceptron whose initialization, normalization and dropout are its fields.

The chapter's layer pattern (section 15.4, "the production recipe") is

    Linear -> BN -> ReLU -> Dropout        (option A, BN before the activation; Ioffe & Szegedy 2015)
    Linear -> ReLU -> BN -> Dropout        (option B, BN after the activation)

with He initialization for the hidden ReLU layers, Xavier for the output layer, and no bias on a
Dense that a BatchNorm follows directly (BN's beta already provides the shift).
"""

from __future__ import annotations

from typing import Callable, Union

import flax.linen as nn
import jax

from ml_practical import initializers, layers
from ml_practical.config import ConfigError, check_fields, field
from ml_practical.models.activations import ACTIVATIONS, get_activation
from ml_practical.models.norms import LAYER_NORM_AXES, NORMS, make_norm

Initializer = Union[str, Callable]
NORM_POSITIONS = ("after", "before")


def check_initializer(section_field: str, spec: Initializer) -> None:
    """Resolves an initializer spec once, so a bad name fails when the model is built."""
    try:
        initializers.get(spec)
    except ValueError as e:
        raise ConfigError(f"{section_field}: {e}") from None


class MLP(nn.Module):
    """Dense -> [norm] -> activation -> [norm] -> Dropout per hidden layer, then a Dense head.

    Attributes:
      widths: hidden layer widths, e.g. (512, 256) for the chapter's 784-512-256-10.
      num_classes: output logits.
      activation: "relu" | "leaky_relu" | "tanh" | "sigmoid" | "gelu" | "identity".
      norm: "none" | "batch" | "layer" | "group" (`models.norms`; "instance" needs spatial axes,
        which an MLP's (N, features) activations do not have).
      norm_position: "before" the activation (chapter option A) or "after" it (option B).
      drop_rate: dropout *drop* probability after each hidden layer (keep prob = 1 - rate).
      dropout_sampler: "bernoulli" (`jax.random.bernoulli`) or "threefry16" (a quarter of the
        hashing; keep probability quantized to 2^-16); see `layers.Dropout`.
      hidden_init / output_init: initializer specs (`initializers.get`: "he_normal",
        "constant(0.01)", ...) or `(key, shape, dtype)` callables; the chapter's recipe is He for
        hidden ReLU layers and Xavier for the output.
      bias_init: initializer of the biases (zeros; the chapter's A1 explains why that is safe).
      use_bias: bias on hidden Dense layers. A Dense followed directly by BatchNorm (option A)
        gets none (BN subtracts it again) unless `bias_before_bn`.
      bias_before_bn: keep that redundant bias (to measure the chapter's 12.4.5 claim that
        removing it costs nothing).
      num_groups: groups for norm="group".
      layer_norm_axes: LayerNorm's reduction for norm="layer" (an MLP's "all" equals "features").
      bn_momentum / norm_epsilon: BatchNorm's momentum (chapter convention, 0.9) and the epsilon
        of every norm layer.
      bn_backward: "autodiff" or "manual" (BatchNorm's hand-written backward pass, chapter C1).
      ghost_batch_size: BatchNorm's statistics over contiguous ghost batches of this many rows
        in training (`layers.BatchNorm`; 0 = the whole batch).

    Calling (the `ml_practical.models` contract): `model.apply(variables, x, train=bool,
    mc_dropout=False)` on inputs (N, ...), flattened. Monte Carlo dropout (Gal & Ghahramani 2016)
    is `train=False, mc_dropout=True`: dropout on, BatchNorm on its running statistics. Hidden
    layer i's pre-activation and activation are sown as "preact" / "act" in the scope of its
    Dense `dense_{i}`.
    """

    widths: tuple[int, ...] = field((512, 256), ge=1)
    num_classes: int = field(10, ge=1)
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
    layer_norm_axes: str = field("features", choices=LAYER_NORM_AXES)
    bn_momentum: float = field(0.9, ge=0, le=1)
    norm_epsilon: float = field(1e-5, ge=0)
    bn_backward: str = field("autodiff", choices=layers.BN_BACKWARDS)
    ghost_batch_size: int = field(0, ge=0)
    bias_before_bn: bool = False

    def __post_init__(self):
        check_fields(self, "model")
        if self.norm == "instance":
            raise ConfigError("model.norm: 'instance' normalizes over spatial axes, which the "
                              "MLP's (N, features) activations do not have; expected one of "
                              "['batch', 'group', 'layer', 'none', 'rms']")
        for name in ("hidden_init", "output_init", "bias_init"):
            check_initializer(f"model.{name}", getattr(self, name))
        if self.norm == "group" and any(w % self.num_groups for w in self.widths):
            raise ConfigError(f"model.num_groups: {self.num_groups} does not divide every hidden "
                              f"width {list(self.widths)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mc_dropout: bool = False) -> jax.Array:
        act = get_activation(self.activation)
        hidden_init = initializers.get(self.hidden_init)
        output_init = initializers.get(self.output_init)
        bias_init = initializers.get(self.bias_init)

        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.widths):
            norm_first = self.norm != "none" and self.norm_position == "before"
            # BN right after the Dense makes its bias redundant; LN/GN keep it (they also subtract
            # a mean, but per sample; torch keeps it; we follow the chapter's rule only for
            # BatchNorm, the case it states).
            use_bias = self.use_bias and (self.bias_before_bn
                                                or not (norm_first and self.norm == "batch"))
            dense = nn.Dense(width, use_bias=use_bias, kernel_init=hidden_init,
                             bias_init=bias_init, name=f"dense_{i}")
            x = dense(x)
            dense.sow("intermediates", "preact", x)
            if norm_first:
                x = self._norm(i)(x, train=train)
            x = act(x)
            if self.norm != "none" and self.norm_position == "after":
                x = self._norm(i)(x, train=train)
            dense.sow("intermediates", "act", x)
            if self.drop_rate > 0.0:
                x = layers.Dropout(self.drop_rate, sampler=self.dropout_sampler,
                                   name=f"dropout_{i}")(x, train=train or mc_dropout)
        return nn.Dense(self.num_classes, kernel_init=output_init, bias_init=bias_init,
                        name="head")(x)

    def _norm(self, i: int) -> nn.Module:
        return make_norm(self.norm, name=f"norm_{i}", momentum=self.bn_momentum,
                         epsilon=self.norm_epsilon, num_groups=self.num_groups,
                         layer_norm_axes=self.layer_norm_axes, bn_backward=self.bn_backward,
                         ghost_batch_size=self.ghost_batch_size)

    def describe(self, input_shape: tuple[int, ...]) -> str:
        """'784-512-256-10 relu MLP, norm batch before the activation, dropout 0.2'."""
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        sizes = "-".join(str(v) for v in (n_in, *self.widths, self.num_classes))
        norm = ("no norm" if self.norm == "none"
                else f"{self.norm} norm {self.norm_position} the activation")
        return f"{sizes} {self.activation} MLP, {norm}, dropout {self.drop_rate:g}"
