"""Normalization and dropout layers as linen modules; the equations are pure functions elsewhere.

Sections 12.3-12.5 and 13.2-13.3 of the chapter. Every module is called `module(x, *, train: bool)`;
`train` has no default so no call site can forget it. The arithmetic lives once, in
`ml_practical.normalization` (BatchNorm, LayerNorm, GroupNorm, InstanceNorm; float32 statistics,
two-pass variance, BatchNorm's hand-written backward) and `ml_practical.dropout` (the inverted-dropout
samplers); these modules create the variables and call it, as the nnx modules of
`ml_practical.nnx.layers` do, so the two APIs agree by construction.

Conventions:
  BatchNorm  statistics over every axis but the last (features), per feature.  Ioffe & Szegedy (2015)
  LayerNorm  statistics over the last axis, per sample.                         Ba et al. (2016)
  GroupNorm  statistics over all non-batch axes within a group of features.    Wu & He (2018)
  InstanceNorm  statistics over the spatial axes, per sample and channel.       Ulyanov et al. (2016)
  Dropout    `rate` is the DROP probability; the chapter's keep probability is p = 1 - rate.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ml_practical import dropout as dropout_ops
from ml_practical.dropout import DROPOUT_SAMPLERS, threefry16_keep_mask
from ml_practical.normalization import (BN_BACKWARDS, LAYER_NORM_AXES, batch_norm,
                                        batch_norm_train, check_batch_norm, check_epsilon,
                                        check_group_norm_input, check_instance_norm_input,
                                        check_num_groups, group_norm, instance_norm, layer_norm,
                                        output_dtype, rms_norm)

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

__all__ = ["BN_BACKWARDS", "BatchNorm", "DROPOUT_SAMPLERS", "Dropout", "GroupNorm", "InstanceNorm",
           "LAYER_NORM_AXES", "LayerNorm", "RMSNorm", "batch_norm_train", "group_norm", "instance_norm",
           "layer_norm"]

# The old private name, kept for callers of the sampler (its home is `ml_practical.dropout`).
_threefry16_keep_mask = threefry16_keep_mask


def _scale_and_bias(module: nn.Module, features: int) -> tuple[Array | None, Array | None]:
    """Creates (or fetches) the per-feature params "scale" (gamma) and "bias" (beta)."""
    scale = (module.param("scale", module.scale_init, (features,), module.param_dtype)
             if module.use_scale else None)
    bias = (module.param("bias", module.bias_init, (features,), module.param_dtype)
            if module.use_bias else None)
    return scale, bias


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------


class BatchNorm(nn.Module):
    """Batch normalization (Ioffe & Szegedy, 2015), the chapter's Section 12.4 and 13.3.

    Statistics are taken over every axis except the last (features): for (N, C) over N, for
    images (N, H, W, C) over N, H, W. With m the number of reduced elements per feature:

      training:  mu_B = (1/m) sum_i z_i
                 var_B = (1/m) sum_i (z_i - mu_B)^2           (biased; two passes)
                 z_hat = (z - mu_B) / sqrt(var_B + eps)
                 y = gamma * z_hat + beta
                 running_mean <- momentum * running_mean + (1 - momentum) * mu_B
                 running_var  <- momentum * running_var  + (1 - momentum) * var_B
      eval:      y = gamma * (z - running_mean) / sqrt(running_var + eps) + beta

    Momentum convention: `momentum` is the weight on the OLD running value, as in the chapter and
    flax.linen (default 0.9 here; flax's default is 0.99). PyTorch's `momentum` is the weight on
    the NEW batch value, so torch's momentum=0.1 is our momentum=0.9.

    `torch_compat=True` stores the unbiased batch variance var_B * m / (m - 1) in the running
    variance, as torch.nn.BatchNorm does; normalization in training still uses the biased var_B.
    (Under `axis_name`, m counts the global batch.)

    The running statistics start at mean 0, var 1 and are not updated while the model is being
    initialized (`model.init`), as in flax.linen.BatchNorm. Gradients flow through mu_B and var_B
    (the full BatchNorm backward pass of Section 13.3): by autodiff with backward="autodiff", or by
    the chapter's hand-written equations with backward="manual" (coding question C1; see
    `batch_norm_train`). The two give the same gradients to float32 rounding; the forward pass and
    the running statistics are the same either way, and evaluation (train=False, running
    statistics) is not affected by the choice.

    Variables: params "scale" (gamma) and "bias" (beta), shape (features,); collection
    "batch_stats" with "mean" and "var" - the same names as flax.linen.BatchNorm, so apply with
    `mutable=["batch_stats"]` when train=True.

    Attributes:
      momentum: weight on the old running statistics, in [0, 1].
      epsilon: added to the variance, >= 0. With 0 a feature that is constant over the
        normalized axes has variance 0 and gives NaN (0/0); keep it > 0 unless you mean it.
      use_scale: learn gamma; else gamma = 1.
      use_bias: learn beta; else beta = 0 (a preceding layer's bias is redundant under BN).
      axis_name: name of a mapped axis (pmap / vmap / shard_map) over which the batch is split;
        the mean and variance are then averaged across it with `lax.pmean` (two passes), so they
        are the statistics of the global batch. Assumes every shard has the same size.
      torch_compat: store the unbiased batch variance in the running variance (torch's rule).
      backward: "autodiff" (jax differentiates the forward pass) or "manual" (the chapter's
        backward equations as a `jax.custom_vjp`; reverse mode only).
      ghost_batch_size: ghost (virtual) batch normalization (Hoffer, Hubara & Soudry 2017,
        "Train longer, generalize better", section 4): in training, the batch (axis 0) is cut
        into contiguous ghost batches of this many rows, and each is normalized with its own
        mu_B, var_B (the formulas above, over a ghost batch and H, W). The running statistics
        move once per call, towards the mean over ghost batches of their mu_B and var_B (so
        `momentum` means the same per optimizer step as without ghosts). 0, or a batch of at
        most this many rows, is ordinary BatchNorm; otherwise the batch must be a multiple of
        it. Contiguous rows because a batch sharded over a device mesh keeps each device's rows
        contiguous: ghost_batch_size = per-device batch is the unsynchronized per-device
        BatchNorm of data-parallel training (`nn.BatchNorm` without axis_name under pmap).
        Evaluation is unchanged. Not combined with `axis_name` (a ghost batch is local).
      scale_init, bias_init: initializers of gamma and beta.
      dtype: dtype of the output (default: promotion of the input and the params).
      param_dtype: dtype of gamma and beta.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    axis_name: str | None = None
    torch_compat: bool = False
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    backward: str = "autodiff"
    ghost_batch_size: int = 0

    def __post_init__(self):
        check_batch_norm("BatchNorm", momentum=self.momentum, epsilon=self.epsilon,
                         backward=self.backward, ghost_batch_size=self.ghost_batch_size,
                         axis_name=self.axis_name)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """Normalizes `x` with batch statistics (train=True) or running statistics (train=False).

        Args:
          x: input of shape (..., features).
          train: use and accumulate batch statistics; needs `mutable=["batch_stats"]` in apply.

        Returns:
          An array of the same shape as `x`.
        """
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale, bias = _scale_and_bias(self, features)
        out_dtype = output_dtype(self.dtype, x, scale, bias)
        # While initializing, the running statistics stay at 0 / 1 (as in flax.linen.BatchNorm).
        update = train and not self.is_initializing()
        y, new_mean, new_var = batch_norm(
            x, scale, bias, ra_mean.value, ra_var.value, train=train, momentum=self.momentum,
            epsilon=self.epsilon, backward=self.backward, ghost_batch_size=self.ghost_batch_size,
            axis_name=self.axis_name, torch_compat=self.torch_compat, update_stats=update)
        if update:
            ra_mean.value, ra_var.value = new_mean, new_var
        return y.astype(out_dtype)


# ---------------------------------------------------------------------------------------------
# Per-sample normalizations: LayerNorm, GroupNorm, InstanceNorm
# ---------------------------------------------------------------------------------------------

class _PerSampleNorm(nn.Module):
    """The fields and the call shared by LayerNorm, GroupNorm and InstanceNorm.

    No batch dependence and no running statistics: `train` is accepted for the uniform call
    signature and ignored. Subclasses implement `_check_input` and `_apply`.

    Attributes:
      epsilon: added to the variance, >= 0. With 0 a feature that is constant over the
        normalized axes has variance 0 and gives NaN (0/0); keep it > 0 unless you mean it.
      use_scale, use_bias: learn gamma ("scale") / beta ("bias"), shape (features,).
      scale_init, bias_init: their initializers.
      dtype: output dtype (default: promotion of input and params); param_dtype: params' dtype.
    """

    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        check_epsilon(type(self).__name__, self.epsilon)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """Normalizes `x` (N, ..., features); the same in training and evaluation.

        Args:
          x: input of shape (N, ..., features).
          train: ignored.

        Returns:
          An array of the same shape as `x`.
        """
        del train
        self._check_input(x)
        scale, bias = _scale_and_bias(self, x.shape[-1])
        out_dtype = output_dtype(self.dtype, x, scale, bias)
        return self._apply(x, scale, bias).astype(out_dtype)

    def _check_input(self, x: Array) -> None:
        pass

    def _apply(self, x: Array, scale: Array | None, bias: Array | None) -> Array:
        raise NotImplementedError


class LayerNorm(_PerSampleNorm):
    """Layer normalization (Ba et al., 2016), the chapter's Section 12.5: `layer_norm`.

    For each sample, statistics over the last axis (axes="features", the d features):
      mu_i = (1/d) sum_j z_ij;  var_i = (1/d) sum_j (z_ij - mu_i)^2
      y_ij = gamma_j * (z_ij - mu_i) / sqrt(var_i + eps) + beta_j
    or over every non-batch axis (axes="all": C, H, W of an image), gamma and beta per feature.

    Attributes:
      axes: "features" or "all" (see above); the other fields are `_PerSampleNorm`'s.
    """

    axes: str = "features"

    def __post_init__(self):
        if self.axes not in LAYER_NORM_AXES:
            raise ValueError(f"LayerNorm.axes: unknown {self.axes!r}; expected one of "
                             f"{list(LAYER_NORM_AXES)}")
        super().__post_init__()

    def _apply(self, x, scale, bias):
        return layer_norm(x, scale, bias, self.epsilon, self.axes)


class GroupNorm(_PerSampleNorm):
    """Group normalization (Wu & He, 2018): `group_norm`.

    The C features (last axis) are split into G = `num_groups` contiguous groups of C/G. For each
    sample and group, statistics over all non-batch axes within the group (e.g. H, W and the C/G
    channels for (N, H, W, C) images); then gamma and beta per feature. G = 1 is LayerNorm over
    all non-batch axes; G = C is InstanceNorm. Axis 0 is the batch axis.

    Attributes:
      num_groups: number of groups G; must divide the number of features.
    """

    num_groups: int = 32

    def __post_init__(self):
        check_num_groups(self.num_groups)
        super().__post_init__()

    def _check_input(self, x):
        check_group_norm_input(x, self.num_groups)

    def _apply(self, x, scale, bias):
        return group_norm(x, self.num_groups, scale, bias, self.epsilon)


class RMSNorm(_PerSampleNorm):
    """Root-mean-square normalization (Zhang & Sennrich 2019): `rms_norm`.

    For each sample, y_ij = gamma_j z_ij / sqrt((1/d) sum_j z_ij^2 + eps): LayerNorm without the
    mean subtraction (and, by default, without beta), the norm of T5, LLaMA and most recent
    Transformers. Statistics over the last axis.
    """

    use_bias: bool = False

    def _apply(self, x, scale, bias):
        return rms_norm(x, scale, bias, self.epsilon)


class InstanceNorm(_PerSampleNorm):
    """Instance normalization (Ulyanov et al., 2016), the style-transfer normalization.

    For each sample and channel, statistics over the spatial axes only: for (N, H, W, C) over H, W;
    for (N, L, C) over L. A rank-2 input (N, C) has no spatial axes, so it is rejected.
    Equivalent to GroupNorm with num_groups = C (`instance_norm`).
    """

    def _check_input(self, x):
        check_instance_norm_input(x)

    def _apply(self, x, scale, bias):
        return instance_norm(x, scale, bias, self.epsilon)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al., 2014), the chapter's Sections 12.3 and 13.2.

    Two conventions, one number: `rate` is the probability of DROPPING a unit; the chapter's keep
    probability is p = 1 - rate. In training,

      mask ~ Bernoulli(p) elementwise,   output = a * mask / p,

    so E[output] = a and, for a constant input a, Var[output] = a^2 (1 - p) / p
    = a^2 rate / (1 - rate). Dividing by p in training (the "inverted" part) leaves evaluation
    as the identity. The gradient flows only through the kept units, scaled by 1 / p.

    Monte Carlo dropout (Gal & Ghahramani, 2016): average several stochastic forward passes at
    test time for an uncertainty estimate. A model implements it by calling Dropout with
    train=True while its BatchNorm layers get train=False (running statistics).

    The mask is drawn from `self.make_rng("dropout")`: pass `rngs={"dropout": dropout_key}` to
    apply, with a fresh key each step.

    Samplers (`sampler`); both draw from the Threefry-2x32 generator of jax's default key:
      "bernoulli" (default): `jax.random.bernoulli`, one Threefry evaluation per unit; p is
        resolved to 2^-23 (a float32 uniform). The same masks as flax.linen.Dropout for a key.
      "threefry16": four 16-bit uniforms per Threefry evaluation (`_threefry16_keep_mask`),
        a quarter of the hashing (its speed is measured in benchmarks/README.md). Trade-off: the
        keep probability is quantized to a multiple of 2^-16, p_q = round(p * 2^16) / 2^16 (rate
        0.2 keeps with 0.8000031, not 0.8), and kept units are scaled by 1 / p_q, so E[output] = a
        exactly and Var[output] = a^2 (1 - p_q) / p_q. Units within a group of four share one hash
        evaluation (disjoint bits of one 64-bit output, independent as far as Threefry is a good
        pseudorandom function). The masks differ from "bernoulli"'s for the same key, so runs are
        reproducible per sampler only.

    Attributes:
      rate: drop probability, in [0, 1). rate = 0 is the identity.
      sampler: "bernoulli" | "threefry16", how the keep mask is drawn (see above).
    """

    rate: float
    sampler: str = "bernoulli"

    def __post_init__(self):
        dropout_ops.check_dropout("Dropout", self.rate, self.sampler)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """Applies inverted dropout when training; the identity otherwise.

        Args:
          x: input, any shape.
          train: drop units (needs the "dropout" rng stream) or return `x` unchanged.

        Returns:
          An array of the same shape and dtype as `x`.
        """
        if not train or self.rate == 0.0:
            return x
        return dropout_ops.dropout(self.make_rng("dropout"), x, self.rate, self.sampler)
