"""The normalization equations as pure functions: BatchNorm, LayerNorm, GroupNorm, InstanceNorm.

Sections 12.4-12.5 and 13.3 of the chapter. Each equation is written once, here; the linen modules
(`ml_practical.layers`) and the nnx modules (`ml_practical.nnx.layers`) only create and store the
variables and call these functions, so the two APIs compute the same numbers by construction.

Statistics are computed in float32 (even for bfloat16 inputs) and the variance always in two
passes, mean((x - mu)^2), because the one-pass E[x^2] - E[x]^2 cancels catastrophically when
|mean| >> std.

Conventions:
  BatchNorm  statistics over every axis but the last (features), per feature.  Ioffe & Szegedy (2015)
  LayerNorm  statistics over the last axis, per sample.                         Ba et al. (2016)
  GroupNorm  statistics over all non-batch axes within a group of features.    Wu & He (2018)
  InstanceNorm  statistics over the spatial axes, per sample and channel.       Ulyanov et al. (2016)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any

__all__ = ["BN_BACKWARDS", "LAYER_NORM_AXES", "batch_norm", "batch_norm_train", "check_epsilon",
           "check_batch_norm", "check_group_norm_input", "check_instance_norm_input",
           "check_num_groups", "group_norm", "instance_norm", "layer_norm", "moments", "normalize",
           "num_ghosts", "output_dtype", "rms_norm"]

BN_BACKWARDS = ("autodiff", "manual")


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


def normalize(x: Array, mean: Array, var: Array, scale: Array | None, bias: Array | None,
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


def moments(x: Array, axes: Sequence[int], *, keepdims: bool,
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
    mean, var = moments(x, axes, keepdims=False, axis_name=axis_name)
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


def check_epsilon(owner: str, epsilon: float) -> None:
    """epsilon >= 0 and finite. 0 is allowed (the chapter's worked examples, torch and flax allow
    it): the output is then exact, and a constant feature (variance 0) gives 0/0 = NaN."""
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
            and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"{owner}.epsilon: {epsilon!r} is not allowed; expected a finite "
                         "number >= 0")


def output_dtype(dtype: Dtype | None, x: Array, *params: Array | None) -> Dtype:
    """`dtype` if given, else the promotion of the input and the params (flax.linen's rule)."""
    if dtype is not None:
        return dtype
    return jnp.result_type(x, *[p for p in params if p is not None])


# ---------------------------------------------------------------------------------------------
# BatchNorm with running statistics (the whole layer, as one pure function)
# ---------------------------------------------------------------------------------------------


def check_batch_norm(owner: str, *, momentum: float, epsilon: float, backward: str,
                     ghost_batch_size: int, axis_name: str | None) -> None:
    """The checks of BatchNorm's options, one line naming the field (`owner.field`) on failure."""
    if (not isinstance(ghost_batch_size, int) or isinstance(ghost_batch_size, bool)
            or ghost_batch_size < 0):
        raise ValueError(f"{owner}.ghost_batch_size: {ghost_batch_size!r}; expected an "
                         "integer >= 0 (0: statistics over the whole batch)")
    if ghost_batch_size and axis_name is not None:
        raise ValueError(f"{owner}.ghost_batch_size: ghost batches are local; expected "
                         f"axis_name None, got {axis_name!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{owner}.momentum: {momentum!r} is outside [0, 1]; it is the "
                         "weight on the old running statistics (torch's 0.1 is our 0.9)")
    check_epsilon(owner, epsilon)
    if backward not in BN_BACKWARDS:
        raise ValueError(f"{owner}.backward: unknown {backward!r}; expected one of "
                         f"{list(BN_BACKWARDS)}")


def num_ghosts(batch: int, ghost_batch_size: int, owner: str = "BatchNorm") -> int:
    """How many ghost batches a training batch of `batch` rows is cut into (1: ordinary BN)."""
    g = ghost_batch_size
    if not g or batch <= g:
        return 1
    if batch % g:
        raise ValueError(f"{owner}.ghost_batch_size: {g} does not divide the batch of {batch} "
                         "rows; expected a batch that is a multiple of it")
    return batch // g


def _running_update(ra_mean: Array, ra_var: Array, mean: Array, var: Array, *, momentum: float,
                    torch_compat: bool, m: int, where: str,
                    owner: str) -> tuple[Array, Array]:
    """The running statistics' EMA step; `m` values per feature behind `var` (torch_compat)."""
    stored_var = var
    if torch_compat:
        if m < 2:
            raise ValueError(
                f"{owner}.torch_compat: the unbiased variance needs at least 2 values per "
                f"feature; got m={m} {where}")
        stored_var = var * (m / (m - 1))
    new_mean = momentum * ra_mean + (1 - momentum) * mean
    new_var = momentum * ra_var + (1 - momentum) * stored_var
    return new_mean, new_var


def batch_norm(x: Array, scale: Array | None, bias: Array | None, ra_mean: Array, ra_var: Array,
               *, train: bool, momentum: float = 0.9, epsilon: float = 1e-5,
               backward: str = "autodiff", ghost_batch_size: int = 0,
               axis_name: str | None = None, torch_compat: bool = False,
               update_stats: bool = True,
               owner: str = "BatchNorm") -> tuple[Array, Array, Array]:
    """Batch normalization (Ioffe & Szegedy 2015), the chapter's sections 12.4 and 13.3.

    Statistics over every axis except the last (features), m values per feature:

      training:  mu_B = (1/m) sum_i z_i
                 var_B = (1/m) sum_i (z_i - mu_B)^2           (biased; two passes)
                 z_hat = (z - mu_B) / sqrt(var_B + eps)
                 y = gamma * z_hat + beta
                 running_mean <- momentum * running_mean + (1 - momentum) * mu_B
                 running_var  <- momentum * running_var  + (1 - momentum) * var_B
      eval:      y = gamma * (z - running_mean) / sqrt(running_var + eps) + beta

    `momentum` is the weight on the OLD running value (the chapter's and flax's convention;
    torch's momentum=0.1 is our 0.9). `torch_compat` stores the unbiased var_B * m / (m - 1) in
    the running variance, as torch does. `backward` picks how the training-mode gradient through
    mu_B and var_B is computed: "autodiff", or "manual" (`batch_norm_train`, the chapter's
    hand-written equations). `ghost_batch_size` > 0 normalizes contiguous ghost batches of that
    many rows separately (Hoffer et al. 2017) and moves the running statistics once, towards the
    ghosts' mean mu_B and var_B. `axis_name` averages the statistics across a mapped axis (the
    global batch). `update_stats=False` (a model being initialized) leaves the running statistics
    as given and ignores `axis_name` (the mapped axis may not exist yet).

    Args:
      x: input (..., features).
      scale, bias: gamma and beta, shape (features,), or None.
      ra_mean, ra_var: the running statistics, shape (features,).
      train: batch statistics (and update the running ones) or the running statistics.
      momentum, epsilon, backward, ghost_batch_size, axis_name, torch_compat: as above.
      update_stats: in training, return the updated running statistics (else the given ones).
      owner: the name error messages start with ("BatchNorm").

    Returns:
      (y, new_mean, new_var): y in float32 (or x's dtype if wider), the caller casts it; the
      running statistics after this call.
    """
    features = x.shape[-1]
    reduction_axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = None
    ghosts = num_ghosts(x.shape[0], ghost_batch_size, owner) if train else 1
    if train and ghosts > 1:
        xg = x32.reshape(ghosts, x.shape[0] // ghosts, *x.shape[1:])
        if backward == "manual":
            y, g_mean, g_var = jax.vmap(
                lambda xi: batch_norm_train(xi, scale, bias, epsilon, None))(xg)
        else:
            g_mean, g_var = moments(xg, tuple(range(1, xg.ndim - 1)), keepdims=True)
            y = normalize(xg, g_mean, g_var, scale, bias, epsilon)
            g_mean = g_mean.reshape(ghosts, features)
            g_var = g_var.reshape(ghosts, features)
        y = y.reshape(x.shape)
        mean, var = jnp.mean(g_mean, axis=0), jnp.mean(g_var, axis=0)
        if update_stats:
            ra_mean, ra_var = _running_update(
                ra_mean, ra_var, mean, var, momentum=momentum, torch_compat=torch_compat,
                m=math.prod(xg.shape[1:-1]), where="per ghost batch", owner=owner)
    elif train:
        # During init the mapped axis may not exist yet, and the stats must stay as given.
        axis_name = axis_name if update_stats else None
        if backward == "manual":
            y, mean, var = batch_norm_train(x32, scale, bias, epsilon, axis_name)
        else:
            mean, var = moments(x, reduction_axes, keepdims=False, axis_name=axis_name)
        if update_stats:
            m = math.prod(x.shape[:-1])
            if axis_name is not None:
                m *= lax.axis_size(axis_name)
            ra_mean, ra_var = _running_update(
                ra_mean, ra_var, mean, var, momentum=momentum, torch_compat=torch_compat, m=m,
                where=f"from input shape {x.shape}", owner=owner)
    else:
        mean, var = ra_mean, ra_var
    if y is None:
        y = normalize(x32, mean, var, scale, bias, epsilon)
    return y, ra_mean, ra_var


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
    mean, var = moments(x, reduce, keepdims=True)
    return normalize(x.astype(mean.dtype), mean, var, scale, bias, eps)


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
    mean, var = moments(grouped, axes, keepdims=True)
    # Back to (N, ..., 1, G, 1) -> broadcast per feature by repeating each group's stat.
    mean = jnp.repeat(mean, features // num_groups, axis=-1).reshape(mean.shape[:-2] + (features,))
    var = jnp.repeat(var, features // num_groups, axis=-1).reshape(var.shape[:-2] + (features,))
    return normalize(x.astype(mean.dtype), mean, var, scale, bias, eps)


def instance_norm(x: Array, scale: Array | None, bias: Array | None, eps: float) -> Array:
    """InstanceNorm (Ulyanov et al. 2016): per sample and channel, over the spatial axes.

    Args:
      x: input (N, *spatial, C) with at least one spatial axis.
      scale, bias: gamma and beta of shape (C,), or None.
      eps: added to the variance.

    Returns:
      float32 (or wider) array like x.
    """
    mean, var = moments(x, tuple(range(1, x.ndim - 1)), keepdims=True)
    return normalize(x.astype(mean.dtype), mean, var, scale, bias, eps)


def rms_norm(x: Array, scale: Array | None, bias: Array | None, eps: float) -> Array:
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): per sample, y = gamma x / sqrt(mean(x^2) + eps).

    No mean is subtracted (the re-centring of LayerNorm is dropped; only the re-scaling stays),
    statistics over the last axis in float32. `bias` (beta) is optional and off in the paper.

    Args:
      x: input (..., features).
      scale, bias: gamma and beta of shape (features,), or None.
      eps: added to the mean square.

    Returns:
      float32 (or wider) array like x.
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return normalize(x, jnp.zeros((), x.dtype), ms, scale, bias, eps)


def check_num_groups(num_groups: int, features: int | None = None) -> None:
    """GroupNorm's G: a positive integer, dividing `features` when they are known."""
    if not (isinstance(num_groups, int) and not isinstance(num_groups, bool) and num_groups >= 1):
        raise ValueError(f"GroupNorm.num_groups: {num_groups!r} is not allowed; expected a "
                         "positive integer dividing the number of features")
    if features is not None and features % num_groups:
        divisors = [g for g in range(1, features + 1) if features % g == 0]
        raise ValueError(f"GroupNorm.num_groups: {num_groups} does not divide the "
                         f"{features} features; expected one of {divisors}")


def check_group_norm_input(x: Array, num_groups: int) -> None:
    """GroupNorm's input: (N, ..., C) with G dividing C."""
    if x.ndim < 2:
        raise ValueError(f"GroupNorm: input must have shape (N, ..., C); got shape {x.shape}")
    check_num_groups(num_groups, x.shape[-1])


def check_instance_norm_input(x: Array) -> None:
    """InstanceNorm's input: (N, *spatial, C) with at least one spatial axis."""
    if x.ndim < 3:
        raise ValueError(
            f"InstanceNorm: input must have shape (N, *spatial, C) with at least one spatial "
            f"axis; got shape {x.shape}. For (N, C) there is nothing to normalize over per "
            "channel: use LayerNorm or BatchNorm instead")
