"""Models whose initialization, normalization and dropout are constructor fields (the ablation axes).

The chapter's layer pattern (section 15.4, "the production recipe") is

    Linear -> BN -> ReLU -> Dropout        (option A, BN before the activation; Ioffe & Szegedy 2015)
    Linear -> ReLU -> BN -> Dropout        (option B, BN after the activation)

with He initialization for the hidden ReLU layers, Xavier for the output layer, and no bias on a Dense
that a BatchNorm follows directly (BN's beta already provides the shift).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_practical import initializers, layers

Initializer = Union[str, Callable]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    # The chapter's "Leaky ReLU with slope alpha"; 0.01 is torch's and flax's default slope.
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}
NORMS = ("none", "batch", "layer", "group")
NORM_POSITIONS = ("before", "after")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Resolves an activation name; the error lists the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"model.activation: unknown {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: unknown {value!r}; expected one of {list(allowed)}")


def _make_norm(norm: str, num_groups: int, momentum: float, epsilon: float,
               bn_backward: str, name: str) -> nn.Module:
    if norm == "batch":
        kwargs = {} if bn_backward == "autodiff" else {"backward": bn_backward}
        return layers.BatchNorm(momentum=momentum, epsilon=epsilon, name=name, **kwargs)
    if norm == "layer":
        return layers.LayerNorm(epsilon=epsilon, name=name)
    return layers.GroupNorm(num_groups=num_groups, epsilon=epsilon, name=name)


class MLP(nn.Module):
    """Multi-layer perceptron: Dense -> [norm] -> activation -> [norm] -> Dropout, then a Dense head.

    Attributes:
      widths: hidden layer widths, e.g. (512, 256) for the chapter's 784-512-256-10.
      num_classes: output logits.
      activation: "relu" | "leaky_relu" | "tanh" | "sigmoid" | "gelu" | "identity".
      norm: "none" | "batch" | "layer" | "group".
      norm_position: "before" the activation (chapter option A) or "after" it (option B).
      drop_rate: dropout *drop* probability after each hidden layer (the chapter's keep prob is 1 - rate).
      dropout_sampler: how dropout masks are drawn, "bernoulli" (default, `jax.random.bernoulli`) or
        "threefry16" (a quarter of the hashing; keep probability quantized to 2^-16, masks differ
        from "bernoulli"'s for the same key). See `layers.Dropout`.
      hidden_init / output_init: initializer names (see `initializers.get`) or `(key, shape, dtype)`
        callables; the chapter's recipe is He for hidden ReLU layers and Xavier for the output.
      bias_init: initializer of the biases (zeros; the chapter's A1 explains why that is safe).
      use_bias: bias on hidden Dense layers. A Dense followed directly by BatchNorm (option A) never
        gets one, whatever this says, because BN subtracts it again.
      num_groups: groups for norm="group".
      bn_momentum / norm_epsilon: BatchNorm running-average momentum (chapter convention, 0.9) and the
        epsilon of every norm layer.
      bn_backward: "autodiff" or "manual" (BatchNorm's hand-written backward pass, chapter C1).

    Calling: `model.apply(variables, x, train=bool, mc_dropout=False)`. Inputs of any shape
    (N, ...) are flattened. Monte Carlo dropout (Gal & Ghahramani 2016) is `train=False,
    mc_dropout=True`: dropout stays on while BatchNorm uses its running statistics.

    Pre-activations and activations are `sow`n into the "intermediates" collection as
    `preact_{i}` / `act_{i}` (free unless "intermediates" is mutable), for diagnostics.
    """

    widths: Sequence[int] = (512, 256)
    num_classes: int = 10
    activation: str = "relu"
    norm: str = "none"
    norm_position: str = "before"
    drop_rate: float = 0.0
    dropout_sampler: str = "bernoulli"
    hidden_init: Initializer = "he_normal"
    output_init: Initializer = "xavier_normal"
    bias_init: Initializer = "zeros"
    use_bias: bool = True
    num_groups: int = 8
    bn_momentum: float = 0.9
    norm_epsilon: float = 1e-5
    bn_backward: str = "autodiff"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mc_dropout: bool = False) -> jax.Array:
        act = get_activation(self.activation)
        _check_choice("model.norm", self.norm, NORMS)
        _check_choice("model.norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("model.dropout_sampler", self.dropout_sampler, layers.DROPOUT_SAMPLERS)
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"model.drop_rate: {self.drop_rate} is outside [0, 1)")
        hidden_init = initializers.get(self.hidden_init)
        output_init = initializers.get(self.output_init)
        bias_init = initializers.get(self.bias_init)

        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.widths):
            norm_first = self.norm != "none" and self.norm_position == "before"
            # BN right after the Dense makes its bias redundant; LN/GN keep it (they also subtract a
            # mean, but per sample, so the bias is likewise cancelled; torch keeps it; we follow
            # the chapter's rule only for BatchNorm, the case it states).
            use_bias = self.use_bias and not (norm_first and self.norm == "batch")
            x = nn.Dense(width, use_bias=use_bias, kernel_init=hidden_init, bias_init=bias_init,
                         name=f"dense_{i}")(x)
            self.sow("intermediates", f"preact_{i}", x)
            if norm_first:
                x = self._norm(i)(x, train=train)
            x = act(x)
            if self.norm != "none" and self.norm_position == "after":
                x = self._norm(i)(x, train=train)
            self.sow("intermediates", f"act_{i}", x)
            if self.drop_rate > 0.0:
                x = layers.Dropout(self.drop_rate, sampler=self.dropout_sampler,
                                   name=f"dropout_{i}")(x, train=train or mc_dropout)
        return nn.Dense(self.num_classes, kernel_init=output_init, bias_init=bias_init,
                        name="head")(x)

    def _norm(self, i: int) -> nn.Module:
        return _make_norm(self.norm, self.num_groups, self.bn_momentum, self.norm_epsilon,
                          self.bn_backward, name=f"norm_{i}")


def make_model(cfg_model) -> MLP:
    """Builds the model named by `cfg.model.name` from its config section."""
    name = cfg_model.get("name", "mlp")
    if name != "mlp":
        raise ValueError(f"model.name: unknown {name!r}; expected one of ['mlp']")
    fields = {k: v for k, v in cfg_model.items() if k != "name"}
    allowed = set(MLP.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"model: unknown field(s) {unknown}; expected some of {sorted(allowed)}")
    if "widths" in fields:
        fields["widths"] = tuple(fields["widths"])
    return MLP(**fields)
