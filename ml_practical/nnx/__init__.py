"""The library's layers and model families as Flax NNX modules, one implementation of each equation.

    from flax import nnx
    from ml_practical import nnx as mpx

    model = mpx.build_model("mlp", {"widths": (512, 256), "norm": "batch"}, (28, 28, 1),
                            rngs=nnx.Rngs(params=0, dropout=1))

Layers (`ml_practical.nnx.layers`): BatchNorm, LayerNorm, GroupNorm, InstanceNorm, Dropout, on the
pure functions of `ml_practical.normalization` and `ml_practical.dropout` that the linen layers
call too. Families (`FAMILIES`): the linen families of `ml_practical.models` rebuilt as nnx modules
from the same fields, with the linen submodule names, so their `nnx.Param` / `nnx.BatchStat` state
has the structure of the linen "params" / "batch_stats" and `load_variables` / `linen_variables`
move weights either way (tests/test_nnx.py: equal outputs, gradients and running statistics).

Modes: `model.train()`, `model.eval()` (flax's), and `mc_dropout(model)` for Monte Carlo dropout
(the linen `train=False, mc_dropout=True`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from ml_practical import models as linen_models
from ml_practical.nnx import capture, layers
from ml_practical.nnx.layers import BatchNorm, Dropout, GroupNorm, InstanceNorm, LayerNorm
from ml_practical.nnx.cnn import CNN
from ml_practical.nnx.dlrm import DLRM
from ml_practical.nnx.linear import Linear
from ml_practical.nnx.mlp import MLP
from ml_practical.nnx.resnet import ResNet
from ml_practical.nnx.transformer import Transformer

__all__ = ["CNN", "DLRM", "FAMILIES", "MLP", "Linear", "ResNet", "Transformer", "BatchNorm", "Dropout", "GroupNorm", "InstanceNorm", "LayerNorm",
           "build_model", "capture", "from_linen", "layers", "linen_variables", "load_variables",
           "mc_dropout", "register"]

FAMILIES: dict[str, type[nnx.Module]] = {}


def register(name: str, family: type[nnx.Module]) -> None:
    """The nnx twin of the linen family `name` (`ml_practical.models.FAMILIES`)."""
    if name not in linen_models.FAMILIES:
        raise ValueError(f"nnx.register: {name!r} is not a linen family; expected one of "
                         f"{sorted(linen_models.FAMILIES)}")
    FAMILIES[name] = family


register("mlp", MLP)
register("linear", Linear)
register("cnn", CNN)
register("resnet", ResNet)
register("transformer", Transformer)
register("dlrm", DLRM)


def from_linen(module: Any, input_shape: tuple[int, ...], *, rngs: nnx.Rngs) -> nnx.Module:
    """The nnx model of a linen family instance (same fields), for inputs of `input_shape`."""
    name = linen_models.family_name(module)
    if name not in FAMILIES:
        raise ValueError(f"model: family {name!r} has no nnx version yet; expected one of "
                         f"{sorted(FAMILIES)}")
    return FAMILIES[name](tuple(input_shape), rngs=rngs, config=module)


def build_model(name: str, fields: Mapping[str, Any] | None, input_shape: tuple[int, ...], *,
                rngs: nnx.Rngs) -> nnx.Module:
    """The nnx model of family `name` with `fields` (checked as `models.build_model` checks them).

    Raises:
      ConfigError: an unknown family or field, or a bad value (one line naming it).
      ValueError: a family without an nnx version.
    """
    return from_linen(linen_models.build_model(name, fields), input_shape, rngs=rngs)


# linen collection <-> nnx Variable type
_COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def linen_variables(model: nnx.Module) -> dict[str, Any]:
    """The model's state as linen variables: {"params": ..., "batch_stats": ...} (nested dicts of
    arrays; "batch_stats" only if it has any)."""
    out = {}
    for collection, kind in _COLLECTIONS.items():
        pure = nnx.to_pure_dict(nnx.state(model, kind))
        if pure or collection == "params":
            out[collection] = pure
    return out


def load_variables(model: nnx.Module, variables: Mapping[str, Any]) -> None:
    """Writes linen variables (e.g. `linen_model.init(...)`) into the nnx model, in place.

    Every leaf of "params" / "batch_stats" must exist in the model with the same shape and
    dtype, and every model Param / BatchStat must be given: a mismatch raises one line naming
    the paths, instead of loading part of a model.
    """
    extra = sorted(set(variables) - set(_COLLECTIONS))
    if extra:
        raise ValueError(f"variables: collections {extra} have no nnx counterpart; expected a "
                         f"subset of {sorted(_COLLECTIONS)}")
    for collection, kind in _COLLECTIONS.items():
        state = nnx.state(model, kind)
        have = _flat(nnx.to_pure_dict(state))
        given = _flat(variables.get(collection, {}))
        if set(have) != set(given):
            missing = sorted("/".join(p) for p in set(have) - set(given))
            unknown = sorted("/".join(p) for p in set(given) - set(have))
            raise ValueError(f"variables[{collection!r}]: does not match the nnx model "
                             f"(missing {missing[:5]}, unknown {unknown[:5]})")
        for path, value in given.items():
            if tuple(value.shape) != tuple(have[path].shape) or value.dtype != have[path].dtype:
                raise ValueError(f"variables[{collection!r}]/{'/'.join(path)}: shape {value.shape} "
                                 f"{value.dtype}, the model has {have[path].shape} "
                                 f"{have[path].dtype}")
        nnx.replace_by_pure_dict(state, variables.get(collection, {}))
        nnx.update(model, state)


def mc_dropout(model: nnx.Module) -> nnx.Module:
    """A view of `model` for Monte Carlo dropout (Gal & Ghahramani 2016): every Dropout on, every
    BatchNorm on its running statistics (the linen `train=False, mc_dropout=True`). It shares the
    model's variables (so the dropout streams advance); the model itself is not changed."""
    return nnx.view(model, use_running_average=True, deterministic=False, raise_if_not_found=False)
