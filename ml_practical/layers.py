"""Normalization and dropout layers as linen modules, written from the chapter's equations.

Sections 12.3-12.5 and 13.2-13.3 of the chapter. Every module is called `module(x, *, train: bool)`;
`train` has no default so no call site can forget it. Normalization statistics are computed in
float32 (even for bfloat16 inputs) and the variance always in two passes, mean((x - mu)^2), because
the one-pass E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std.

Conventions:
  BatchNorm  statistics over every axis but the last (features), per feature.  Ioffe & Szegedy (2015)
  LayerNorm  statistics over the last axis, per sample.                         Ba et al. (2016)
  GroupNorm  statistics over all non-batch axes within a group of features.    Wu & He (2018)
  InstanceNorm  statistics over the spatial axes, per sample and channel.       Ulyanov et al. (2016)
  Dropout    `rate` is the DROP probability; the chapter's keep probability is p = 1 - rate.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.extend.random
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "batch_norm_train",
           "layer_norm", "group_norm", "instance_norm"]

BN_BACKWARDS = ("autodiff", "manual")


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def _normalize(x: Array, mean: Array, var: Array, scale: Array | None, bias: Array | None,
               eps: float) -> Array:
    """The chapter's steps 3-4: y = gamma * (x - mu) / sqrt(var + eps) + beta.

    Pure, so a hand-written backward pass (custom_vjp) can replace it without touching the modules.

    Args:
      x: input, any shape.
      mean, var: statistics broadcastable to `x`.
      scale, bias: gamma and beta broadcastable to `x`, or None to skip that step.
      eps: added to the variance for numerical stability.

    Returns:
      The normalized array, in the promoted dtype of the arguments.
    """
    y = (x - mean) * lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def _moments(x: Array, axes: Sequence[int], *, keepdims: bool,
             axis_name: str | None = None) -> tuple[Array, Array]:
    """Mean and biased variance over `axes`, in two passes, at least float32.

    mu = mean(x); var = mean((x - mu)^2). With `axis_name`, each pass is averaged across devices
    with `lax.pmean` (the mean before the centring, so every shard centres on the global mean),
    giving the statistics of the global batch when all shards have the same size.

    Args:
      x: input.
      axes: axes to reduce.
      keepdims: keep the reduced axes as size 1 (for broadcasting back against `x`).
      axis_name: optional name of a mapped axis (pmap / vmap / shard_map) to average across.

    Returns:
      (mean, var), float32 (or wider if `x` is wider).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x, axis=tuple(axes), keepdims=True)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x - mean), axis=tuple(axes), keepdims=True)
    if axis_name is not None:
        var = lax.pmean(var, axis_name)
    if not keepdims:
        mean = jnp.squeeze(mean, axis=tuple(axes))
        var = jnp.squeeze(var, axis=tuple(axes))
    return mean, var


# ---------------------------------------------------------------------------------------------
# BatchNorm's training-mode forward with the chapter's hand-written backward pass (coding C1)
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: Array, scale: Array | None, bias: Array | None, eps: float,
                     axis_name: str | None = None) -> tuple[Array, Array, Array]:
    """BatchNorm with batch statistics, differentiated by the chapter's equations, not autodiff.

    Forward (Ioffe & Szegedy 2015, Algorithm 1; the chapter's section 13.3), statistics over every
    axis but the last, m values per feature:

      mu = (1/m) sum_i x_i,  var = (1/m) sum_i (x_i - mu)^2,  r = 1 / sqrt(var + eps),
      xhat = (x - mu) r,     y = gamma xhat + beta.

    Backward (Ioffe & Szegedy 2015, section 3; the chapter's `BatchNormLayer.backward`), given the
    cotangent dy of y, in the compact form that folds the chapter's dvar and dmu steps together:

      dgamma = sum_i dy_i xhat_i
      dbeta  = sum_i dy_i
      dx     = (1/m) gamma r (m dy - sum_i dy_i - xhat sum_i dy_i xhat_i)

    (Substituting the chapter's dvar = sum(dxhat (x - mu)) (-1/2) r^3 and
    dmu = -r sum(dxhat) + dvar mean(-2 (x - mu)) into dx = dxhat r + dvar 2 (x - mu)/m + dmu/m,
    with dxhat = gamma dy, gives this line; the second term of dmu is zero because the deviations
    sum to zero.) The function also returns mu and var (the running statistics are built from
    them); their cotangents, zero in ordinary training, add dmu/m + dvar 2 (x - mu)/m to dx, so the
    VJP is complete for any use. In code dx = a dy + b + c xhat with per-feature a, b, c: one pass
    over the data after the two reductions.

    With `axis_name` (a mapped axis of vmap / pmap / shard_map splitting the batch), the forward
    averages mu and var across shards with `lax.pmean`, and the backward `lax.psum`s the four
    per-feature reductions, so dx is the gradient with respect to the global batch statistics
    (m counts the global batch); dgamma and dbeta stay per-shard, as autodiff gives them. Every
    shard must have the same size. Only reverse mode is defined (jax.custom_vjp): `jax.jvp` /
    `jax.jacfwd` through it raise.

    Args:
      x: input of shape (..., features), float32 or wider (the statistics are in x's dtype).
      scale: gamma, shape (features,), or None for gamma = 1.
      bias: beta, shape (features,), or None for beta = 0.
      eps: added to the variance, > 0.
      axis_name: optional mapped axis across which the batch is split.

    Returns:
      (y, mean, var): y like x; mean and the biased variance of shape (features,).
    """
    outputs, _ = _batch_norm_train_fwd(x, scale, bias, eps, axis_name)
    return outputs


def _batch_norm_train_fwd(x, scale, bias, eps, axis_name):
    axes = tuple(range(x.ndim - 1))
    mean, var = _moments(x, axes, keepdims=False, axis_name=axis_name)
    inv_std = lax.rsqrt(var + eps)
    xhat = (x - mean) * inv_std
    y = xhat
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return (y, mean, var), (xhat, inv_std, scale, bias)


def _batch_norm_train_bwd(eps, axis_name, residuals, cotangents):
    del eps
    xhat, inv_std, scale, bias = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(xhat.ndim - 1))
    m_local = math.prod(xhat.shape[:-1])
    sum_dy = jnp.sum(dy, axis=axes)
    sum_dy_xhat = jnp.sum(dy * xhat, axis=axes)
    # dgamma, dbeta: this shard's contribution, like autodiff (the caller reduces param grads).
    dscale = None if scale is None else sum_dy_xhat.astype(scale.dtype)
    dbias = None if bias is None else sum_dy.astype(bias.dtype)
    m = m_local
    if axis_name is not None:
        # dx depends on every shard through mu and var: sum the reductions over the global batch,
        # once, stacked.
        sums = lax.psum(jnp.stack([sum_dy, sum_dy_xhat, dmean, dvar]), axis_name)
        sum_dy, sum_dy_xhat, dmean, dvar = sums[0], sums[1], sums[2], sums[3]
        m = m_local * lax.axis_size(axis_name)
    gamma = 1.0 if scale is None else scale
    a = gamma * inv_std
    b = (dmean - a * sum_dy) / m
    c = (2.0 * dvar / inv_std - a * sum_dy_xhat) / m
    dx = a * dy + b + c * xhat
    return dx.astype(xhat.dtype), dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _check_epsilon(owner: str, epsilon: float) -> None:
    """epsilon >= 0 and finite. 0 is allowed (the chapter's worked examples, torch and flax allow
    it): the output is then exact, and a constant feature (variance 0) gives 0/0 = NaN."""
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
            and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{owner}.epsilon: {epsilon!r} is not allowed; expected a finite "
                         "number >= 0")


def _scale_and_bias(module: nn.Module, features: int) -> tuple[Array | None, Array | None]:
    """Creates (or fetches) the per-feature params "scale" (gamma) and "bias" (beta)."""
    scale = (module.param("scale", module.scale_init, (features,), module.param_dtype)
             if module.use_scale else None)
    bias = (module.param("bias", module.bias_init, (features,), module.param_dtype)
            if module.use_bias else None)
    return scale, bias


def _output_dtype(dtype: Dtype | None, x: Array, *params: Array | None) -> Dtype:
    """`dtype` if given, else the promotion of the input and the params (flax.linen's rule)."""
    if dtype is not None:
        return dtype
    return jnp.result_type(x, *[p for p in params if p is not None])


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
        if (not isinstance(self.ghost_batch_size, int) or isinstance(self.ghost_batch_size, bool)
                or self.ghost_batch_size < 0):
            raise ValueError(f"BatchNorm.ghost_batch_size: {self.ghost_batch_size!r}; expected an "
                             "integer >= 0 (0: statistics over the whole batch)")
        if self.ghost_batch_size and self.axis_name is not None:
            raise ValueError("BatchNorm.ghost_batch_size: ghost batches are local; expected "
                             f"axis_name None, got {self.axis_name!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNorm.momentum: {self.momentum!r} is outside [0, 1]; it is the "
                             "weight on the old running statistics (torch's 0.1 is our 0.9)")
        _check_epsilon("BatchNorm", self.epsilon)
        if self.backward not in BN_BACKWARDS:
            raise ValueError(f"BatchNorm.backward: unknown {self.backward!r}; expected one of "
                             f"{list(BN_BACKWARDS)}")
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
        reduction_axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        scale, bias = _scale_and_bias(self, features)
        out_dtype = _output_dtype(self.dtype, x, scale, bias)
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        y = None
        ghosts = self._num_ghosts(x)
        if train and ghosts > 1:
            initializing = self.is_initializing()
            xg = x32.reshape(ghosts, x.shape[0] // ghosts, *x.shape[1:])
            if self.backward == "manual":
                y, g_mean, g_var = jax.vmap(
                    lambda xi: batch_norm_train(xi, scale, bias, self.epsilon, None))(xg)
            else:
                g_mean, g_var = _moments(xg, tuple(range(1, xg.ndim - 1)), keepdims=True)
                y = _normalize(xg, g_mean, g_var, scale, bias, self.epsilon)
                g_mean = g_mean.reshape(ghosts, features)
                g_var = g_var.reshape(ghosts, features)
            y = y.reshape(x.shape)
            mean, var = jnp.mean(g_mean, axis=0), jnp.mean(g_var, axis=0)
            if not initializing:
                self._update_running(ra_mean, ra_var, mean, var, math.prod(xg.shape[1:-1]),
                                     "per ghost batch")
        elif train:
            # During init the mapped axis may not exist yet, and the stats must stay at 0 / 1.
            initializing = self.is_initializing()
            axis_name = None if initializing else self.axis_name
            if self.backward == "manual":
                y, mean, var = batch_norm_train(x32, scale, bias, self.epsilon, axis_name)
            else:
                mean, var = _moments(x, reduction_axes, keepdims=False, axis_name=axis_name)
            if not initializing:
                m = math.prod(x.shape[:-1])
                if axis_name is not None:
                    m *= lax.axis_size(axis_name)
                self._update_running(ra_mean, ra_var, mean, var, m, f"from input shape {x.shape}")
        else:
            mean, var = ra_mean.value, ra_var.value

        if y is None:
            y = _normalize(x32, mean, var, scale, bias, self.epsilon)
        return y.astype(out_dtype)

    def _update_running(self, ra_mean, ra_var, mean, var, m: int, where: str) -> None:
        """The running statistics' EMA step; `m` values per feature behind `var` (torch_compat)."""
        stored_var = var
        if self.torch_compat:
            if m < 2:
                raise ValueError(
                    "BatchNorm.torch_compat: the unbiased variance needs at least 2 values per "
                    f"feature; got m={m} {where}")
            stored_var = var * (m / (m - 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * stored_var

    def _num_ghosts(self, x: Array) -> int:
        """How many ghost batches a training batch `x` is cut into (1: ordinary BatchNorm)."""
        g, n = self.ghost_batch_size, x.shape[0]
        if not g or n <= g:
            return 1
        if n % g:
            raise ValueError(f"BatchNorm.ghost_batch_size: {g} does not divide the batch of {n} "
                             "rows; expected a batch that is a multiple of it")
        return n // g


# ---------------------------------------------------------------------------------------------
# Per-sample normalizations: LayerNorm, GroupNorm, InstanceNorm
# ---------------------------------------------------------------------------------------------

LAYER_NORM_AXES = ("all", "features")


def layer_norm(x: Array, scale: Array | None, bias: Array | None, eps: float,
               axes: str = "features") -> Array:
    """LayerNorm (Ba et al. 2016): per sample, y = gamma (x - mu) / sqrt(var + eps) + beta.

    Args:
      x: input (N, ..., features).
      scale, bias: gamma and beta of shape (features,), or None.
      eps: added to the variance.
      axes: "features" (statistics over the last axis: the Transformer / MLP form) or "all"
        (over every non-batch axis: C, H, W for images).

    Returns:
      float32 (or wider) array like x.
    """
    reduce = (x.ndim - 1,) if axes == "features" else tuple(range(1, x.ndim))
    mean, var = _moments(x, reduce, keepdims=True)
    return _normalize(x.astype(mean.dtype), mean, var, scale, bias, eps)


def group_norm(x: Array, num_groups: int, scale: Array | None, bias: Array | None,
               eps: float) -> Array:
    """GroupNorm (Wu & He 2018): per sample and group of C / G contiguous features (and H, W).

    Args:
      x: input (N, ..., C) with C divisible by `num_groups`.
      num_groups: G; G = 1 is LayerNorm over all non-batch axes, G = C is InstanceNorm.
      scale, bias: gamma and beta of shape (C,), or None.
      eps: added to the variance.

    Returns:
      float32 (or wider) array like x.
    """
    features = x.shape[-1]
    grouped = x.reshape(x.shape[:-1] + (num_groups, features // num_groups))
    # Reduce over every non-batch axis except the group index (second to last).
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean, var = _moments(grouped, axes, keepdims=True)
    # Back to (N, ..., 1, G, 1) -> broadcast per feature by repeating each group's stat.
    mean = jnp.repeat(mean, features // num_groups, axis=-1).reshape(mean.shape[:-2] + (features,))
    var = jnp.repeat(var, features // num_groups, axis=-1).reshape(var.shape[:-2] + (features,))
    return _normalize(x.astype(mean.dtype), mean, var, scale, bias, eps)


def instance_norm(x: Array, scale: Array | None, bias: Array | None, eps: float) -> Array:
    """InstanceNorm (Ulyanov et al. 2016): per sample and channel, over the spatial axes.

    Args:
      x: input (N, *spatial, C) with at least one spatial axis.
      scale, bias: gamma and beta of shape (C,), or None.
      eps: added to the variance.

    Returns:
      float32 (or wider) array like x.
    """
    mean, var = _moments(x, tuple(range(1, x.ndim - 1)), keepdims=True)
    return _normalize(x.astype(mean.dtype), mean, var, scale, bias, eps)


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
        _check_epsilon(type(self).__name__, self.epsilon)
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
        out_dtype = _output_dtype(self.dtype, x, scale, bias)
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
        if not (isinstance(self.num_groups, int) and self.num_groups >= 1):
            raise ValueError(f"GroupNorm.num_groups: {self.num_groups!r} is not allowed; "
                             "expected a positive integer dividing the number of features")
        super().__post_init__()

    def _check_input(self, x):
        if x.ndim < 2:
            raise ValueError(f"GroupNorm: input must have shape (N, ..., C); got shape {x.shape}")
        features = x.shape[-1]
        if features % self.num_groups != 0:
            divisors = [g for g in range(1, features + 1) if features % g == 0]
            raise ValueError(f"GroupNorm.num_groups: {self.num_groups} does not divide the "
                             f"{features} features; expected one of {divisors}")

    def _apply(self, x, scale, bias):
        return group_norm(x, self.num_groups, scale, bias, self.epsilon)


class InstanceNorm(_PerSampleNorm):
    """Instance normalization (Ulyanov et al., 2016), the style-transfer normalization.

    For each sample and channel, statistics over the spatial axes only: for (N, H, W, C) over H, W;
    for (N, L, C) over L. A rank-2 input (N, C) has no spatial axes, so it is rejected.
    Equivalent to GroupNorm with num_groups = C (`instance_norm`).
    """

    def _check_input(self, x):
        if x.ndim < 3:
            raise ValueError(
                f"InstanceNorm: input must have shape (N, *spatial, C) with at least one spatial "
                f"axis; got shape {x.shape}. For (N, C) there is nothing to normalize over per "
                "channel: use LayerNorm or BatchNorm instead")

    def _apply(self, x, scale, bias):
        return instance_norm(x, scale, bias, self.epsilon)


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


def _threefry16_keep_mask(key: Array, shape: tuple[int, ...], threshold: int) -> Array:
    """Keep mask from Threefry-2x32 with four 16-bit uniforms per hash evaluation.

    Each evaluation of the Threefry-2x32 block cipher (Salmon et al. 2011) on a counter gives 64
    random bits; they are cut into four 16-bit integers u, and a unit is kept iff u < threshold,
    so P(keep) = threshold / 2^16. `jax.random.bernoulli` instead spends one evaluation per unit
    and keeps 32 of its 64 bits (jax's partitionable layout XORs the two words), i.e. 4x the
    hashing. The counter is each unit's (row, word) position, elementwise like jax's own layout,
    so a batch sharded over devices draws its mask shard-locally.

    Args:
      key: a PRNG key (any impl; two 32-bit words of cipher key are drawn from it).
      shape: mask shape (..., features).
      threshold: integer in [1, 2^16]; units are kept with probability threshold / 2^16.

    Returns:
      A boolean array of `shape`.
    """
    features = shape[-1] if shape else 1
    rows = math.prod(shape) // features if features else 0
    words = -(-features // 4)  # hash evaluations per row; the last may be partly unused
    if rows * words >= 2**32:
        raise ValueError(f"Dropout.sampler: 'threefry16' counts units in 32 bits; shape {shape} "
                         "is too large, use sampler='bernoulli'")
    k1, k2 = jax.random.bits(key, (2,), jnp.uint32)
    counts = lax.iota(jnp.uint32, rows * words).reshape(rows, words)
    hi, lo = jax.extend.random.threefry2x32_p.bind(k1, k2, jnp.zeros_like(counts), counts)
    fields = jnp.stack([hi & 0xFFFF, hi >> 16, lo & 0xFFFF, lo >> 16], axis=-1)
    u = fields.reshape(rows, words * 4)[:, :features]
    return (u < jnp.uint32(threshold)).reshape(shape)


DROPOUT_SAMPLERS = ("bernoulli", "threefry16")


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
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout.rate: {self.rate!r} is outside [0, 1); rate is the drop "
                             "probability (the chapter's keep probability is p = 1 - rate)")
        if self.sampler not in DROPOUT_SAMPLERS:
            raise ValueError(f"Dropout.sampler: unknown {self.sampler!r}; expected one of "
                             f"{list(DROPOUT_SAMPLERS)}")
        if self.sampler == "threefry16" and round((1.0 - self.rate) * 2**16) < 1:
            raise ValueError(f"Dropout.rate: {self.rate!r} leaves a keep probability below "
                             "2^-16, which sampler='threefry16' cannot represent; use 'bernoulli'")
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
        key = self.make_rng("dropout")
        if self.sampler == "threefry16":
            threshold = round((1.0 - self.rate) * 2**16)
            keep_prob = threshold / 2**16
            mask = _threefry16_keep_mask(key, x.shape, threshold)
        else:
            keep_prob = 1.0 - self.rate
            mask = jax.random.bernoulli(key, p=keep_prob, shape=x.shape)
        # where, not x * mask: dropped units contribute an exact 0 and receive an exact 0 gradient.
        return jnp.where(mask, x / keep_prob, jnp.zeros_like(x))
