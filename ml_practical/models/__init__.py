"""Model families by name, and the contract every family follows.

`cfg.model.name` picks a family from `FAMILIES`; the rest of the `model` section are the family
module's own fields. Adding a family is adding a module file and one `register` call.

The contract (what the loop, the diagnostics, LSUV, Monte Carlo dropout and the reports rely on):

1. A family is a `flax.linen.Module` class whose dataclass fields are its config fields: strings,
   numbers, tuples (initializers may also be callables), each with its default, checked in
   `__post_init__` through `ml_practical.config.check_fields(self, "model")`. So a model built in
   Python is checked as one parsed from a config, and its defaults are the config's defaults.
2. It is called `model.apply(variables, x, train=bool)`, `train` keyword-only and without a
   default, on inputs of shape (N, *input_shape). It returns logits (N, K), K = its `num_classes`
   field (the loop checks it against the dataset), or (N,) real outputs when `num_classes` is 0.
   `model.init(keys, x, train=False)` creates the variables: "params", and "batch_stats" when it
   has BatchNorm (updated with `mutable=["batch_stats"]` when train=True).
3. Optional: a keyword `mc_dropout: bool = False`. With train=False, mc_dropout=True, dropout is
   on while every normalization uses its running statistics (Monte Carlo dropout);
   `supports_mc_dropout(model)` tells.
4. Per-layer statistics: every hidden layer sows its pre-activation as "preact" and its
   activation as "act" into the "intermediates" collection, in the scope of the module that
   computes the pre-activation (`dense.sow(...)` after `dense(x)`), so a layer's statistics are
   keyed by that module's path ("dense_0", "stage_1/block_0/conv_1"): `ml_practical.analysis`
   reads them from any family without knowing its fields.
5. Normalization layers come from `models.norms.make_norm` (the family exposes `norm` and the
   norm options as fields), so every family offers the same kinds.
6. Optional: `describe(input_shape) -> str`, one line for reports; `describe` below falls back to
   the family name and parameter count.
7. Its Flax NNX twin, when it has one, is in `ml_practical.nnx` (`ml_practical.nnx.FAMILIES`):
   built from an instance of this class and the input shape, with the same submodule names, so
   the nnx state has the structure of these variables.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax

from ml_practical.config import build, config_fields
from ml_practical.models.activations import ACTIVATIONS, get_activation
from ml_practical.models.cnn import CNN
from ml_practical.models.dlrm import DLRM
from ml_practical.models.linear import Linear
from ml_practical.models.mlp import MLP
from ml_practical.models.norms import NORMS, make_norm
from ml_practical.models.resnet import ResNet
from ml_practical.models.transformer import Transformer

FAMILIES: dict[str, type[nn.Module]] = {}


def register(name: str, family: type[nn.Module]) -> None:
    """Makes `family` available as `model.name = name` (see the contract above)."""
    if name in FAMILIES and FAMILIES[name] is not family:
        raise ValueError(f"models.register: {name!r} is already {FAMILIES[name].__name__}")
    FAMILIES[name] = family


register("mlp", MLP)
register("linear", Linear)
register("cnn", CNN)
register("resnet", ResNet)
register("transformer", Transformer)
register("dlrm", DLRM)


def build_model(name: str, fields: Mapping[str, Any] | None = None) -> nn.Module:
    """The module of family `name` with `fields` (the `model` section without `name`), checked.

    Raises:
      ConfigError: an unknown family, an unknown field (with its close match) or a bad value.
    """
    from ml_practical.config import ConfigError, unknown_field

    if name not in FAMILIES:
        raise ConfigError(f"model.name: unknown {name!r}; expected one of {sorted(FAMILIES)}")
    family = FAMILIES[name]
    fields = dict(fields or {})
    known = [f.name for f in config_fields(family)]
    for key in fields:
        if key not in known:
            raise unknown_field("model", key, known)
    return build(family, fields, "model")


def family_name(model: nn.Module) -> str:
    """The registered name of a model's family."""
    for name, family in FAMILIES.items():
        if type(model) is family:
            return name
    raise ValueError(f"model: {type(model).__name__} is not a registered family; "
                     f"expected one of {sorted(FAMILIES)}")


def supports_mc_dropout(model: nn.Module) -> bool:
    """Whether the family takes the contract's optional `mc_dropout` keyword."""
    return "mc_dropout" in inspect.signature(type(model).__call__).parameters


def describe(model: nn.Module, input_shape: tuple[int, ...], num_params: int | None = None) -> str:
    """One line naming the model for reports: the family's `describe`, else name and size."""
    if hasattr(model, "describe"):
        return model.describe(tuple(input_shape))
    size = "" if num_params is None else f", {num_params:,} parameters"
    return f"{type(model).__name__}{size}"


def kernel_layers(apply_fn: Callable, variables: Any, batch: Any) -> list[tuple[str, ...]]:
    """Module paths of the layers owning a "kernel" param, in the order `apply_fn` first calls them.

    Found by intercepting every module call during an abstract trace (jax.eval_shape: no FLOPs),
    so it follows the forward order even where it differs from the order the params were created
    in (setup-defined submodules, nn.Sequential). A module called twice is listed once.
    """
    order: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and module.has_variable("params", "kernel"):
            if module.path not in order:
                order.append(tuple(module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, b: apply_fn(v, b, mutable=True), variables, batch)
    return order



def kernel_shapes(model: nn.Module, variables: Any, x: Any) -> list[tuple[int, ...]]:
    """The kernel shapes of a model's layers in forward order, e.g. [(784, 512), (512, 256),
    (256, 10)] for the chapter's MLP (what a report needs to speak of fans without the family's
    fields)."""
    params = variables["params"]
    out = []
    for path in kernel_layers(lambda v, b, **kw: model.apply(v, b, train=False, **kw),
                              variables, x):
        node = params
        for name in path:
            node = node[name]
        out.append(tuple(int(d) for d in node["kernel"].shape))
    return out


__all__ = ["ACTIVATIONS", "CNN", "DLRM", "FAMILIES", "Linear", "MLP", "ResNet", "Transformer", "NORMS", "build_model", "describe",
           "family_name", "get_activation", "kernel_layers", "kernel_shapes", "make_norm", "register",
           "supports_mc_dropout"]
