"""Normalization and dropout layers as Flax NNX modules, on the same pure functions as the linen ones.

The equations live once, in `ml_practical.normalization` and `ml_practical.dropout`; these modules
hold the variables (`nnx.Param` "scale" / "bias", `nnx.BatchStat` "mean" / "var") and call them, so
for the same variables and input an nnx layer computes exactly what its linen twin in
`ml_practical.layers` computes (tests/test_nnx.py checks it, outputs, gradients and running
statistics).

Modes follow NNX conventions, not linen's `train=` argument:

  linen                                     nnx
  layer(x, train=True)                      layer.train(); layer(x)   (or nnx.view(m, ...))
  layer(x, train=False)                     layer.eval(); layer(x)
  model(x, train=False, mc_dropout=True)    `ml_practical.nnx.mc_dropout(model)(x)`: dropout on,
                                            every BatchNorm on its running statistics

`BatchNorm.use_running_average` and `Dropout.deterministic` are the attributes `Module.train()`,
`Module.eval()` and `nnx.view` set (flax's own names); each call may override them. A layer built
without naming them is in training mode, as flax's nnx layers are. Dropout draws its mask from its
own fork of the `rngs` "dropout" stream given at construction (flax.nnx.Dropout's rule, so the
same `Rngs` gives the masks nnx.Dropout would), or from `rngs=` at call time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ml_practical import dropout as dropout_ops
from ml_practical import normalization as norm_ops

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

__all__ = ["BatchNorm", "Dropout", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "make_norm"]

_ones = jax.nn.initializers.ones
_zeros = jax.nn.initializers.zeros


def _scale_and_bias(module: nnx.Module, features: int, rngs: nnx.Rngs, *, use_scale: bool,
                    use_bias: bool, scale_init: Initializer, bias_init: Initializer,
                    param_dtype: Dtype) -> None:
    """Creates the params "scale" (gamma) and "bias" (beta), shape (features,), or None."""
    shape = (features,)
    module.scale = (nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale
                    else nnx.data(None))
    module.bias = (nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias
                   else nnx.data(None))


def _value(variable: nnx.Variable | None) -> Array | None:
    return None if variable is None else variable[...]


def _check_features(owner: str, num_features: int, x: Array) -> None:
    if x.shape[-1] != num_features:
        raise ValueError(f"{owner}: built for {num_features} features (the last axis), got input "
                         f"of shape {x.shape}")


class BatchNorm(nnx.Module):
    """Batch normalization (Ioffe & Szegedy 2015): `ml_practical.normalization.batch_norm`.

    The same equations, fields and conventions as `ml_practical.layers.BatchNorm` (momentum is the
    weight on the OLD running value, default 0.9; torch_compat; backward "autodiff" | "manual";
    ghost batches; axis_name), as an nnx module. In training (use_running_average False) the
    batch statistics normalize and the `nnx.BatchStat`s "mean" / "var" move by one EMA step;
    with use_running_average True they normalize and stay. Statistics in float32.

    Args:
      num_features: the size of the last axis.
      use_running_average: the mode (False: training); `train()` / `eval()` / `nnx.view` set it.
      momentum, epsilon, use_scale, use_bias, axis_name, torch_compat, backward,
        ghost_batch_size, scale_init, bias_init, dtype, param_dtype: as in
        `ml_practical.layers.BatchNorm`.
      rngs: `nnx.Rngs` with a "params" stream (drawn for scale_init and bias_init).
    """

    def __init__(self, num_features: int, *, use_running_average: bool = False,
                 momentum: float = 0.9, epsilon: float = 1e-5, use_scale: bool = True,
                 use_bias: bool = True, axis_name: str | None = None, torch_compat: bool = False,
                 backward: str = "autodiff", ghost_batch_size: int = 0,
                 scale_init: Initializer = _ones, bias_init: Initializer = _zeros,
                 dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        norm_ops.check_batch_norm("BatchNorm", momentum=momentum, epsilon=epsilon,
                                  backward=backward, ghost_batch_size=ghost_batch_size,
                                  axis_name=axis_name)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        _scale_and_bias(self, num_features, rngs, use_scale=use_scale, use_bias=use_bias,
                        scale_init=scale_init, bias_init=bias_init, param_dtype=param_dtype)
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.momentum = momentum
        self.epsilon = epsilon
        self.axis_name = axis_name
        self.torch_compat = torch_compat
        self.backward = backward
        self.ghost_batch_size = ghost_batch_size
        self.dtype = dtype

    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        """Normalizes `x` (..., num_features) with batch or running statistics (see the class).

        Args:
          x: input whose last axis has `num_features` entries.
          use_running_average: overrides the attribute for this call.

        Returns:
          An array of the shape of `x`.
        """
        _check_features("BatchNorm", self.num_features, x)
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        scale, bias = _value(self.scale), _value(self.bias)
        y, new_mean, new_var = norm_ops.batch_norm(
            x, scale, bias, self.mean[...], self.var[...], train=not use_ra,
            momentum=self.momentum, epsilon=self.epsilon, backward=self.backward,
            ghost_batch_size=self.ghost_batch_size, axis_name=self.axis_name,
            torch_compat=self.torch_compat)
        if not use_ra:
            self.mean[...] = new_mean
            self.var[...] = new_var
        return y.astype(norm_ops.output_dtype(self.dtype, x, scale, bias))

    def set_view(self, use_running_average: bool | None = None):
        """Used by `nnx.view`: sets the mode if given."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


class _PerSampleNorm(nnx.Module):
    """LayerNorm, GroupNorm, InstanceNorm: per-sample statistics, the same in every mode."""

    def __init__(self, num_features: int, *, epsilon: float = 1e-5, use_scale: bool = True,
                 use_bias: bool = True, scale_init: Initializer = _ones,
                 bias_init: Initializer = _zeros, dtype: Dtype | None = None,
                 param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        norm_ops.check_epsilon(type(self).__name__, epsilon)
        _scale_and_bias(self, num_features, rngs, use_scale=use_scale, use_bias=use_bias,
                        scale_init=scale_init, bias_init=bias_init, param_dtype=param_dtype)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        """Normalizes `x` (N, ..., num_features); no batch dependence, no state."""
        _check_features(type(self).__name__, self.num_features, x)
        self._check_input(x)
        scale, bias = _value(self.scale), _value(self.bias)
        y = self._apply(x, scale, bias)
        return y.astype(norm_ops.output_dtype(self.dtype, x, scale, bias))

    def _check_input(self, x: Array) -> None:
        pass

    def _apply(self, x: Array, scale: Array | None, bias: Array | None) -> Array:
        raise NotImplementedError


class LayerNorm(_PerSampleNorm):
    """Layer normalization (Ba et al. 2016): `ml_practical.normalization.layer_norm`.

    Args:
      num_features: the size of the last axis (gamma and beta are per feature).
      axes: "features" (statistics over the last axis) or "all" (every non-batch axis).
      epsilon, use_scale, use_bias, scale_init, bias_init, dtype, param_dtype, rngs: as
        `BatchNorm`'s.
    """

    def __init__(self, num_features: int, *, axes: str = "features", **kwargs):
        if axes not in norm_ops.LAYER_NORM_AXES:
            raise ValueError(f"LayerNorm.axes: unknown {axes!r}; expected one of "
                             f"{list(norm_ops.LAYER_NORM_AXES)}")
        super().__init__(num_features, **kwargs)
        self.axes = axes

    def _apply(self, x, scale, bias):
        return norm_ops.layer_norm(x, scale, bias, self.epsilon, self.axes)


class GroupNorm(_PerSampleNorm):
    """Group normalization (Wu & He 2018): `ml_practical.normalization.group_norm`.

    Args:
      num_features: C, the last axis; `num_groups` must divide it.
      num_groups: G (1: LayerNorm over all non-batch axes; C: InstanceNorm).
      the rest: as `LayerNorm`'s.
    """

    def __init__(self, num_features: int, *, num_groups: int = 32, **kwargs):
        norm_ops.check_num_groups(num_groups, num_features)
        super().__init__(num_features, **kwargs)
        self.num_groups = num_groups

    def _check_input(self, x):
        norm_ops.check_group_norm_input(x, self.num_groups)

    def _apply(self, x, scale, bias):
        return norm_ops.group_norm(x, self.num_groups, scale, bias, self.epsilon)


class RMSNorm(_PerSampleNorm):
    """RMSNorm (Zhang & Sennrich 2019): `ml_practical.normalization.rms_norm`; no beta by default.

    Args:
      num_features: the size of the last axis.
      use_bias: learn a beta as well (off, as in the paper).
      the rest: as `LayerNorm`'s.
    """

    def __init__(self, num_features: int, *, use_bias: bool = False, **kwargs):
        super().__init__(num_features, use_bias=use_bias, **kwargs)

    def _apply(self, x, scale, bias):
        return norm_ops.rms_norm(x, scale, bias, self.epsilon)


class InstanceNorm(_PerSampleNorm):
    """Instance normalization (Ulyanov et al. 2016): `ml_practical.normalization.instance_norm`.

    Statistics per sample and channel over the spatial axes of (N, *spatial, C) inputs.
    """

    def _check_input(self, x):
        norm_ops.check_instance_norm_input(x)

    def _apply(self, x, scale, bias):
        return norm_ops.instance_norm(x, scale, bias, self.epsilon)


class Dropout(nnx.Module):
    """Inverted dropout (Srivastava et al. 2014): `ml_practical.dropout.dropout`.

    `rate` is the DROP probability (the chapter's keep probability is p = 1 - rate); samplers
    "bernoulli" (the masks of flax.nnx.Dropout for the same key) and "threefry16" (a quarter of
    the hashing, p quantized to 2^-16), as `ml_practical.layers.Dropout`.

    Args:
      rate: drop probability in [0, 1).
      sampler: "bernoulli" | "threefry16".
      deterministic: the mode (False: drop units); `train()` / `eval()` / `nnx.view` set it.
      rng_collection: the `Rngs` stream the mask keys come from.
      rngs: `nnx.Rngs` (this layer keeps a fork of its `rng_collection` stream) or None, in which
        case every stochastic call must pass `rngs=`.
    """

    def __init__(self, rate: float, *, sampler: str = "bernoulli", deterministic: bool = False,
                 rng_collection: str = "dropout", rngs: nnx.Rngs | nnx.RngStream | None = None):
        dropout_ops.check_dropout("Dropout", rate, sampler)
        self.rate = rate
        self.sampler = sampler
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"Dropout.rngs: expected nnx.Rngs, nnx.RngStream or None, got "
                            f"{type(rngs).__name__}")

    def __call__(self, x: Array, *, deterministic: bool | None = None,
                 rngs: nnx.Rngs | nnx.RngStream | Array | None = None) -> Array:
        """Drops units (deterministic False) or returns `x` unchanged.

        Args:
          x: input, any shape.
          deterministic: overrides the attribute for this call.
          rngs: a key, stream or Rngs for this call's mask, instead of the layer's own stream.

        Returns:
          An array of the shape and dtype of `x`.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.rate == 0.0:
            return x
        source = self.rngs if rngs is None else rngs
        if isinstance(source, nnx.Rngs):
            key = source[self.rng_collection]()
        elif isinstance(source, nnx.RngStream):
            key = source()
        elif isinstance(source, jax.Array):
            key = source
        else:
            raise ValueError("Dropout: deterministic is False but there is no key; build it with "
                             "rngs=nnx.Rngs(dropout=...) or pass rngs= to the call")
        return dropout_ops.dropout(key, x, self.rate, self.sampler)

    def set_view(self, deterministic: bool | None = None):
        """Used by `nnx.view`: sets the mode if given."""
        if deterministic is not None:
            self.deterministic = deterministic


def make_norm(kind: str, num_features: int, *, rngs: nnx.Rngs, momentum: float = 0.9,
              epsilon: float = 1e-5, num_groups: int = 8, layer_norm_axes: str = "features",
              bn_backward: str = "autodiff", axis_name: str | None = None, scale_init=None,
              ghost_batch_size: int = 0) -> nnx.Module | None:
    """The nnx normalization layer of `kind` ("batch" | "layer" | "group" | "instance" | "rms"), or None
    for "none": `ml_practical.models.norms.make_norm` with the features given up front.

    BatchNorm layers are called `layer(x)`, and so are the others.

    Raises:
      ValueError: an unknown kind.
    """
    extra = {} if scale_init is None else {"scale_init": scale_init}
    if kind == "none":
        return None
    if kind == "batch":
        return BatchNorm(num_features, momentum=momentum, epsilon=epsilon, backward=bn_backward,
                         axis_name=axis_name, ghost_batch_size=ghost_batch_size, rngs=rngs,
                         **extra)
    if kind == "layer":
        return LayerNorm(num_features, epsilon=epsilon, axes=layer_norm_axes, rngs=rngs, **extra)
    if kind == "group":
        return GroupNorm(num_features, num_groups=num_groups, epsilon=epsilon, rngs=rngs, **extra)
    if kind == "instance":
        return InstanceNorm(num_features, epsilon=epsilon, rngs=rngs, **extra)
    if kind == "rms":
        return RMSNorm(num_features, epsilon=epsilon, rngs=rngs, **extra)
    raise ValueError(f"model.norm: unknown {kind!r}; expected one of "
                     "['batch', 'group', 'instance', 'layer', 'none', 'rms']")
