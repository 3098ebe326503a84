"""Weight initializers (chapter 12.1): zero, small random, Xavier, He, orthogonal, embedding.

Every public factory returns a jax-style `init(key, shape, dtype=jnp.float32) -> Array`, so it drops
into any flax layer: `nn.Dense(128, kernel_init=he_normal())`. Config files name initializers by
string; `get(name, **kwargs)` resolves them.

`lsuv` (Mishkin & Matas 2016) is the one data-dependent initializer: it needs the model and a
batch, so it takes `(apply_fn, variables, batch)` and returns new variables instead of being a
`(key, shape)` factory, and `get` does not resolve it.

Shapes follow flax's layout: a Dense kernel is (fan_in, fan_out) and a Conv kernel is
(*spatial, in_features, out_features); `compute_fans` turns either into (fan_in, fan_out).

Truncation. The papers (Glorot & Bengio 2010; He et al. 2015), the chapter's equations and torch's
`nn.init.xavier_normal_` / `kaiming_normal_` draw an *untruncated* normal, and so does every normal
initializer here by default. `jax.nn.initializers.variance_scaling` (and so jax's and flax's
`he_normal`, `glorot_normal`, `lecun_normal`) draws a *truncated* normal instead: a standard normal
cut at +-2, then divided by 0.87962566103423978 (the std of that truncated standard normal) so the
final std still equals the formula. `truncated=True` gives exactly that. Unlike
`jax.nn.initializers.truncated_normal(stddev)`, which does not rescale, our `normal(stddev,
truncated=True)` is rescaled too, so `stddev` always means the std of the draw.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]  # (key, shape, dtype=jnp.float32) -> Array

MODES = ("fan_avg", "fan_in", "fan_out")

# Std of a standard normal truncated to (-2, 2): the constant jax's variance_scaling divides by.
# sqrt(1 - 4 * phi(2) / (2 * Phi(2) - 1)) with phi, Phi the standard normal pdf and cdf.
TRUNCATED_NORMAL_STD = 0.87962566103423978


# --------------------------------------------------------------------------------------------------
# Fans and validation


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """The (fan_in, fan_out) of a weight tensor in flax's layout.

    Dense (in, out): (in, out). Conv (*spatial, in, out): each output unit sees in * prod(spatial)
    inputs, so with receptive field rf = prod(shape[:-2]), fan_in = in * rf and fan_out = out * rf
    (the convention of Glorot & Bengio 2010, He et al. 2015, torch and jax). A 1-D shape (a bias
    or a scale) has no in/out split; both fans are its length.

    Args:
      shape: the weight shape, at least 1-D.

    Returns:
      (fan_in, fan_out) as ints.

    Raises:
      ValueError: for a 0-d shape, which has no fan.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("shape: a 0-d (scalar) shape has no fan_in/fan_out; expected at least 1-D")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _fan(shape: Sequence[int], mode: str) -> float:
    fan_in, fan_out = compute_fans(shape)
    if mode == "fan_in":
        return float(fan_in)
    if mode == "fan_out":
        return float(fan_out)
    return (fan_in + fan_out) / 2.0


def _check_positive(name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{name}: must be > 0, got {value!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: unknown {mode!r}; expected one of {list(MODES)}")


def _check_negative_slope(negative_slope: float) -> None:
    if not negative_slope >= 0:
        raise ValueError(f"negative_slope: must be >= 0, got {negative_slope!r}")


# --------------------------------------------------------------------------------------------------
# Formulas (the targets the samplers hit; also used by tests and diagnostics)


def _xavier_var(shape: Sequence[int]) -> float:
    fan_in, fan_out = compute_fans(shape)
    return 2.0 / (fan_in + fan_out)


def _he_var(shape: Sequence[int], mode: str, negative_slope: float) -> float:
    return 2.0 / ((1.0 + negative_slope**2) * _fan(shape, mode))


def _orthogonal_matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape: orthogonal needs at least 2-D, got {shape}")
    return math.prod(shape[:-1]), shape[-1]


def _embedding_dim(shape: Sequence[int]) -> int:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("shape: a 0-d shape has no embedding dimension; expected (..., d)")
    return shape[-1]


# --------------------------------------------------------------------------------------------------
# Samplers


def _canonical(shape: Sequence[int], dtype: Any) -> tuple[tuple[int, ...], Any]:
    return tuple(int(s) for s in shape), jnp.dtype(dtype)


def _work_dtype(dtype: Any) -> Any:
    # Scale (and QR) in at least float32: a bfloat16 scale alone would bias the std by up to 0.4%.
    return jnp.promote_types(dtype, jnp.float32)


# The samplers are jitted with shape and dtype static: one XLA program per (shape, dtype) shared by
# every initializer, instead of one compile per eager op. The scale is traced, so Xavier, He and
# small-random draws of the same shape reuse the same program. They draw a flat vector and reshape:
# the same bits as drawing `shape` directly (threefry numbers elements in row-major order), but XLA
# on CPU compiles a rank-5 draw (a 3-D conv kernel) ~10x slower than a rank-1 one.
@functools.partial(jax.jit, static_argnames=("shape", "dtype", "truncated"))
def _normal_jit(key: Array, scale: Array, *, shape: tuple[int, ...], dtype: Any,
                truncated: bool) -> Array:
    flat = (math.prod(shape),)
    if truncated:
        z = jax.random.truncated_normal(key, -2.0, 2.0, flat, dtype)
    else:
        z = jax.random.normal(key, flat, dtype)
    return (z * scale).astype(dtype).reshape(shape)


def _normal(key: Array, shape: Sequence[int], dtype: Any, std: float, truncated: bool) -> Array:
    shape, dtype = _canonical(shape, dtype)
    # Truncated: same draw as jax's variance_scaling(distribution="truncated_normal"), cut at
    # 2 sigma of the underlying normal and rescaled so the std of the result is `std`.
    scale = std / TRUNCATED_NORMAL_STD if truncated else std
    return _normal_jit(key, jnp.asarray(scale, _work_dtype(dtype)), shape=shape, dtype=dtype,
                       truncated=bool(truncated))


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _uniform_jit(key: Array, limit: Array, *, shape: tuple[int, ...], dtype: Any) -> Array:
    # Drawn on [-1, 1) then scaled, as jax's variance_scaling does, so same key -> same sample.
    z = jax.random.uniform(key, (math.prod(shape),), dtype, -1.0, 1.0)
    return (z * limit).astype(dtype).reshape(shape)


def _uniform(key: Array, shape: Sequence[int], dtype: Any, limit: float) -> Array:
    shape, dtype = _canonical(shape, dtype)
    return _uniform_jit(key, jnp.asarray(limit, _work_dtype(dtype)), shape=shape, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _orthogonal_jit(key: Array, gain: Array, *, shape: tuple[int, ...], dtype: Any) -> Array:
    rows, cols = _orthogonal_matrix_shape(shape)
    # Low-precision QR is not supported on every backend: factorise in float32 (float64 if asked).
    work = _work_dtype(dtype)
    a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), work)
    q, r = jnp.linalg.qr(a)  # reduced: q is (max, min) with orthonormal columns
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(work)  # sign(0) -> +1, not 0
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


# --------------------------------------------------------------------------------------------------
# Public factories


def zeros() -> Initializer:
    """All zeros: the chapter's "never" row for weights (every unit computes the same function, so
    symmetry is never broken), but the right choice for biases and norm shifts.

    Returns:
      `init(key, shape, dtype=jnp.float32)`; `key` is unused.
    """
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        del key
        return jnp.zeros(tuple(shape), dtype)
    return init


def constant(value: float) -> Initializer:
    """Every entry equal to `value` (e.g. 1.0 for a norm layer's scale gamma).

    Args:
      value: the fill value.

    Returns:
      `init(key, shape, dtype=jnp.float32)`; `key` is unused.
    """
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        del key
        return jnp.full(tuple(shape), value, dtype)
    return init


def normal(stddev: float = 0.01, truncated: bool = False) -> Initializer:
    """The chapter's "small random" initialization, W ~ N(0, stddev^2), stddev = 0.01 by default
    (`np.random.randn(n_in, n_out) * 0.01`, section 12.1.3; the chapter's variance-propagation run
    shows the signal of a 10-layer ReLU net dying by layer 2 with it).

    Args:
      stddev: standard deviation of the draw, > 0.
      truncated: draw a normal truncated at +-2 sigma, rescaled so the std is still `stddev`
        (see the module docstring).

    Returns:
      `init(key, shape, dtype=jnp.float32)`.
    """
    _check_positive("stddev", stddev)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _normal(key, shape, dtype, stddev, truncated)
    return init


def xavier_normal(truncated: bool = False) -> Initializer:
    """Xavier/Glorot normal (Glorot & Bengio 2010): W ~ N(0, sigma^2), sigma^2 = 2 / (n_in + n_out).

    The chapter's section 12.1.4: Var(W) = 1/n_in keeps the forward variance, 1/n_out the backward
    one, and Xavier averages the two fans. For tanh/sigmoid layers and the softmax output.
    Hand value (chapter Example 1): n_in=256, n_out=128 gives sigma = 0.0722.

    Untruncated by default, as in the paper; `jax.nn.initializers.glorot_normal` is the
    `truncated=True` version.

    Args:
      truncated: truncate at +-2 sigma and rescale (jax's convention); the std is unchanged.

    Returns:
      `init(key, shape, dtype=jnp.float32)`; fans from `compute_fans`.
    """
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _normal(key, shape, dtype, math.sqrt(_xavier_var(shape)), truncated)
    return init


def xavier_uniform() -> Initializer:
    """Xavier/Glorot uniform (Glorot & Bengio 2010, eq. 16): W ~ U(-limit, limit),
    limit = sqrt(6 / (n_in + n_out)), so Var(W) = limit^2 / 3 = 2 / (n_in + n_out).

    Hand value (chapter Example 1): n_in=256, n_out=128 gives limit = 0.125. Same samples as
    `jax.nn.initializers.glorot_uniform` for the same key.

    Returns:
      `init(key, shape, dtype=jnp.float32)`.
    """
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _uniform(key, shape, dtype, math.sqrt(3.0 * _xavier_var(shape)))
    return init


def he_normal(mode: str = "fan_in", negative_slope: float = 0.0,
              truncated: bool = False) -> Initializer:
    """He/Kaiming normal (He et al. 2015): W ~ N(0, sigma^2), sigma^2 = 2 / ((1 + a^2) * fan).

    The chapter's section 12.1.5: ReLU halves the variance (Var(a) = Var(z)/2), so Var(W) = 2/n_in;
    a leaky ReLU of slope a keeps (1 + a^2)/2 of it (exercise B1). Hand value (chapter Example 1):
    n_in=256 gives sigma = 0.0884. Equals torch's `kaiming_normal_(W, a, mode, "leaky_relu")`.

    Untruncated by default, as in the paper and torch; `jax.nn.initializers.he_normal` is
    `he_normal(truncated=True)`.

    Args:
      mode: "fan_in" (preserve forward variance, the paper's choice), "fan_out" (preserve backward
        variance) or "fan_avg" ((fan_in + fan_out) / 2).
      negative_slope: the leaky-ReLU slope a >= 0 (0 for ReLU).
      truncated: truncate at +-2 sigma and rescale (jax's convention); the std is unchanged.

    Returns:
      `init(key, shape, dtype=jnp.float32)`.
    """
    _check_mode(mode)
    _check_negative_slope(negative_slope)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        std = math.sqrt(_he_var(shape, mode, negative_slope))
        return _normal(key, shape, dtype, std, truncated)
    return init


def he_uniform(mode: str = "fan_in", negative_slope: float = 0.0) -> Initializer:
    """He/Kaiming uniform (He et al. 2015): W ~ U(-limit, limit), limit = sqrt(3 * Var) with
    Var = 2 / ((1 + a^2) * fan), so the variance matches `he_normal`.

    Args:
      mode: "fan_in", "fan_out" or "fan_avg" (see `he_normal`).
      negative_slope: the leaky-ReLU slope a >= 0.

    Returns:
      `init(key, shape, dtype=jnp.float32)`.
    """
    _check_mode(mode)
    _check_negative_slope(negative_slope)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _uniform(key, shape, dtype, math.sqrt(3.0 * _he_var(shape, mode, negative_slope)))
    return init


def orthogonal(gain: float = 1.0) -> Initializer:
    """Random orthogonal matrix times `gain` (Saxe et al. 2014), LSUV's starting point (chapter
    section 12.1.6, Mishkin & Matas 2016).

    The weight is flattened to (rows, cols) = (prod(shape[:-1]), shape[-1]). A standard normal
    (max, min) matrix is QR-factorised and Q's columns are multiplied by sign(diag(R)), which makes
    Q Haar-distributed (uniform over orthogonal matrices) rather than biased by the QR convention.
    Tall (rows >= cols): W^T W = gain^2 I. Wide (rows < cols): W W^T = gain^2 I. Either way every
    entry has mean square gain^2 / max(rows, cols).

    The QR runs in float32 (float64 when asked for), then the result is cast to `dtype`.

    Args:
      gain: scale of the orthogonal matrix, > 0.

    Returns:
      `init(key, shape, dtype=jnp.float32)`; needs a shape of at least 2-D.
    """
    _check_positive("gain", gain)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        shape, dtype = _canonical(shape, dtype)
        _orthogonal_matrix_shape(shape)  # a clear error before tracing
        return _orthogonal_jit(key, jnp.asarray(gain, _work_dtype(dtype)), shape=shape, dtype=dtype)
    return init


def embedding_uniform() -> Initializer:
    """Embedding table init U(-1/sqrt(d), 1/sqrt(d)), d = embedding dimension = shape[-1].

    The chapter's Example 4 (Meta DLRM): each entry has variance 1/(3d), so every embedding row
    has expected squared norm 1/3 whatever d is, while fan-based rules would read the vocabulary
    size as fan_in and shrink the rows of a huge table towards zero.

    Returns:
      `init(key, shape, dtype=jnp.float32)` for a (vocab, d) table (any leading axes).
    """
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _uniform(key, shape, dtype, 1.0 / math.sqrt(_embedding_dim(shape)))
    return init


# --------------------------------------------------------------------------------------------------
# Name resolution


_FACTORIES: dict[str, Callable[..., Initializer]] = {
    "zeros": zeros,
    "constant": constant,
    "normal": normal,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "orthogonal": orthogonal,
    "embedding_uniform": embedding_uniform,
}


def names() -> list[str]:
    """The initializer names `get` accepts, sorted."""
    return sorted(_FACTORIES)


def get(name: str | Initializer, **kwargs: Any) -> Initializer:
    """Resolves a config string to an initializer: `get("he_normal", mode="fan_out")`.

    Args:
      name: one of `names()`, or an initializer callable, which is returned unchanged (so a model
        field can hold either).
      **kwargs: the factory's arguments (e.g. `stddev` for "normal", `value` for "constant").

    Returns:
      `init(key, shape, dtype=jnp.float32)`.

    Raises:
      ValueError: unknown name (the message lists the valid ones), an argument the factory does not
        take, kwargs together with a callable, or an invalid argument value (stddev/gain <= 0,
        unknown mode, negative_slope < 0).
    """
    if callable(name):
        if kwargs:
            raise ValueError(f"initializer: got a callable and arguments {sorted(kwargs)}; "
                             "arguments apply only to a name")
        return name
    if name not in _FACTORIES:
        raise ValueError(f"initializer: unknown {name!r}; expected one of {names()}")
    factory = _FACTORIES[name]
    allowed = list(inspect.signature(factory).parameters)
    unexpected = sorted(set(kwargs) - set(allowed))
    if unexpected:
        raise ValueError(f"initializer {name!r}: unexpected argument(s) {unexpected}; "
                         f"expected a subset of {allowed}")
    return factory(**kwargs)


def expected_std(name: str, shape: Sequence[int], **kwargs: Any) -> float:
    """The standard deviation the named initializer targets for `shape` (its formula, no sampling).

    Useful to compare measured weight or activation statistics against the chapter's equations:
    xavier sqrt(2/(n_in+n_out)); he sqrt(2/((1+a^2) fan)); uniform limit/sqrt(3); orthogonal
    gain/sqrt(max(rows, cols)) (the root mean square of an entry); constant and zeros 0.

    Args:
      name: one of `names()`.
      shape: the weight shape.
      **kwargs: the factory's arguments, validated as in `get`.

    Returns:
      The target std as a Python float.
    """
    get(name, **kwargs)  # validates the name and the arguments
    if name in ("zeros", "constant"):
        return 0.0
    if name == "normal":
        return float(kwargs.get("stddev", 0.01))
    if name in ("xavier_normal", "xavier_uniform"):
        return math.sqrt(_xavier_var(shape))
    if name in ("he_normal", "he_uniform"):
        return math.sqrt(_he_var(shape, kwargs.get("mode", "fan_in"),
                                 kwargs.get("negative_slope", 0.0)))
    if name == "orthogonal":
        return kwargs.get("gain", 1.0) / math.sqrt(max(_orthogonal_matrix_shape(shape)))
    if name == "embedding_uniform":
        return 1.0 / math.sqrt(3.0 * _embedding_dim(shape))
    raise AssertionError(f"expected_std: {name!r} is registered but has no formula")


# --------------------------------------------------------------------------------------------------
# LSUV: data-dependent initialization (it needs a batch, so it is not a (key, shape) factory)


def _check_layer_filter(layer_filter: Callable[[str], bool] | None) -> None:
    if layer_filter is not None and not callable(layer_filter):
        raise ValueError(f"layer_filter: {layer_filter!r} is not callable; expected None or a "
                         "function (layer name like 'dense_0' or 'block/conv') -> bool")


def _kernel_layers(apply_fn: Callable, variables: Any, batch: Any) -> list[tuple[str, ...]]:
    """Module paths of the layers owning a "kernel" param, in the order apply_fn first calls them.

    Found by intercepting every module call during an abstract trace (jax.eval_shape: no FLOPs),
    so it follows the forward order even where it differs from the order the params were created
    in (setup-defined submodules, nn.Sequential). A module called twice is listed once.
    """
    import flax.linen as nn  # local: keep `import initializers` free of flax for (key, shape) use

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


def _layer_name(path: Sequence[str]) -> str:
    return "/".join(path) if path else "(root)"  # the model itself is a Dense/Conv


def _get_path(tree: Any, path: Sequence[str]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _set_kernel(params: Any, path: Sequence[str], kernel: Array) -> Any:
    """A copy of the nested params dict with params[path]["kernel"] replaced (others shared)."""
    if not path:
        return {**params, "kernel": kernel}
    head, *rest = path
    return {**params, head: _set_kernel(params[head], rest, kernel)}


def _make_variance_fn(apply_fn: Callable, paths: Sequence[tuple[str, ...]]) -> Callable:
    """Jitted `variables, batch -> (len(paths),) float32` output variance of each layer."""
    wanted = set(paths)

    def capture(module, method_name):
        return method_name == "__call__" and tuple(module.path) in wanted

    @jax.jit
    def variances(variables, batch):
        # mutable=True: every collection may be written (BatchNorm in train mode updates its
        # running statistics, MLP sows); the updates are dropped, only intermediates are read.
        _, state = apply_fn(variables, batch, capture_intermediates=capture, mutable=True)
        out = []
        for path in paths:
            y = _get_path(state["intermediates"], path)["__call__"][0]  # first call's output
            if not isinstance(y, jax.Array):
                raise ValueError(f"lsuv: layer {_layer_name(path)!r} returned {type(y).__name__}, "
                                 "not an array; LSUV needs the layer's output tensor")
            out.append(jnp.var(y.astype(jnp.float32)))
        return jnp.stack(out)

    return variances


def layer_output_variances(apply_fn: Callable, variables: Any, batch: Any, *,
                           layer_filter: Callable[[str], bool] | None = None) -> dict[str, float]:
    """Variance of each kernel layer's output (Dense/Conv output, before any norm or activation).

    The statistic LSUV drives to its target: the variance of all entries of the layer's output
    tensor on `batch` (over samples, positions and units together, as Mishkin & Matas 2016 measure
    a layer's output blob). Layers are the modules owning a param named "kernel" (nn.Dense,
    nn.Conv, nn.DenseGeneral, ...), in forward order.

    Args:
      apply_fn: `model.apply` or a partial of it (e.g. `functools.partial(model.apply,
        train=False)`); it is called as `apply_fn(variables, batch, capture_intermediates=...,
        mutable=True)`.
      variables: the model's variables, with a "params" collection.
      batch: the model's input, passed as apply_fn's second positional argument.
      layer_filter: optional `name -> bool` keeping a subset of layers; a layer's name is its
        module path joined by "/" (e.g. "dense_3", "head", "layers_0").

    Returns:
      {layer name: variance} in forward order.
    """
    _check_layer_filter(layer_filter)
    paths = [p for p in _kernel_layers(apply_fn, variables, batch)
             if layer_filter is None or layer_filter(_layer_name(p))]
    if not paths:
        return {}
    values = jax.device_get(_make_variance_fn(apply_fn, paths)(variables, batch))
    return {_layer_name(p): float(v) for p, v in zip(paths, values)}


def lsuv(apply_fn: Callable, variables: Any, batch: Any, target_var: float = 1.0,
         tol: float = 0.1, max_iter: int = 10, *, key: Array | None = None,
         orthogonal_start: bool = True,
         layer_filter: Callable[[str], bool] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Layer-sequential unit-variance initialization (Mishkin & Matas 2016; chapter 12.1.6).

    The paper's Algorithm 1, for any flax model:

      1. Re-draw every kernel as a random orthogonal matrix (Saxe et al. 2014; `orthogonal()`,
         conv kernels flattened to (prod(shape[:-1]), out)).
      2. For each layer in forward order, with the layers before it already fixed: measure the
         variance v of its output on `batch`; while |v - target_var| >= tol and fewer than
         `max_iter` rescalings were made, multiply its kernel by sqrt(target_var / v) and measure
         again.

    The measured output is the kernel layer's own output (a Dense's x W + b, before any norm or
    activation), captured with flax's `capture_intermediates`, so no model code has to `sow`
    anything; its variance is taken over all entries of the output tensor, as in the paper.
    Biases are left alone. Without a bias (or with a zero bias, the usual init) the output is
    linear in the kernel, so one rescaling is exact and later layers are measured after it;
    a non-zero bias is why the loop exists. `tol` is absolute, |v - target_var| < tol, the
    paper's Tol_var (0.1) and T_max (10) being the defaults.

    Two departures from the chapter's pseudo-code (`lsuv_init`, "Extension: LSUV
    Implementation"): it divides the weights by sqrt(v), which aims at variance 1 whatever
    `target_var` says, so with target_var != 1 it can never stop early; here the factor is
    sqrt(target_var / v). And a layer whose output variance is 0 or not finite (e.g. a dead
    input) is left as it is and reported as not converged instead of being divided by zero.

    BatchNorm. `apply_fn` decides the mode. The recommended `partial(model.apply, train=False)`
    normalizes with the running statistics, which right after init are mean 0 and variance 1,
    i.e. BN is (nearly) the identity: every Dense is measured before its BN, and the next layer
    sees the variance LSUV has just set, exactly as in the network without BN. With
    `train=True` BN uses batch statistics, so each layer's input is re-normalized and every
    layer converges in one step independently of the others. Either way the running statistics
    (and every collection other than the kernels) come back exactly as given: LSUV applies the
    model with `mutable=True` and discards the updates.

    Args:
      apply_fn: `model.apply` or a partial of it (bind `train=False` for library models); it is
        called as `apply_fn(variables, batch, capture_intermediates=..., mutable=True)`.
      variables: the model's variables (at least "params"), e.g. from `model.init`.
      batch: a representative input batch (the paper uses one mini-batch; a few hundred
        samples give a variance accurate to a few %), apply_fn's second positional argument.
      target_var: the output variance to reach, > 0.
      tol: absolute tolerance on the variance, > 0.
      max_iter: most rescalings per layer, an integer >= 1.
      key: PRNG key for the orthogonal start (layer i uses `fold_in(key, i)`); required when
        `orthogonal_start` is True.
      orthogonal_start: re-draw the kernels orthogonally first (the paper's step 1); False keeps
        the given kernels and only rescales them.
      layer_filter: optional `name -> bool` selecting the layers LSUV touches (names as in
        `layer_output_variances`, e.g. `lambda n: n != "head"`); the others keep their kernels.

    Returns:
      (new_variables, report). `new_variables` has the structure of `variables` with the selected
      kernels replaced. `report` has one dict per selected layer, in forward order: "layer"
      (name), "var_before" (its output variance when LSUV reached it: after the orthogonal start
      and with the previous layers fixed), "var_after", "iterations" (rescalings made), "scale"
      (the product of the factors applied after the orthogonal start) and "converged"
      (|var_after - target_var| < tol).

    Raises:
      ValueError: target_var or tol <= 0, max_iter not an integer >= 1, key missing with
        orthogonal_start, a layer_filter that is not callable, no "params" in variables, or no
        layer with a "kernel" param called by apply_fn (or left by layer_filter).
    """
    _check_positive("target_var", target_var)
    _check_positive("tol", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    if orthogonal_start and key is None:
        raise ValueError("key: required when orthogonal_start=True (the orthogonal kernels are "
                         "drawn from it); pass a jax.random key or orthogonal_start=False")
    _check_layer_filter(layer_filter)
    if "params" not in variables:
        raise ValueError(f"variables: no 'params' collection; got collections {list(variables)}")

    paths = [p for p in _kernel_layers(apply_fn, variables, batch)
             if layer_filter is None or layer_filter(_layer_name(p))]
    if not paths:
        raise ValueError("variables: apply_fn called no layer with a 'kernel' parameter"
                         + ("" if layer_filter is None else " that layer_filter kept"))

    params = variables["params"]
    if orthogonal_start:
        draw = orthogonal()
        for i, path in enumerate(paths):
            kernel = _get_path(params, path)["kernel"]
            params = _set_kernel(params, path,
                                 draw(jax.random.fold_in(key, i), kernel.shape, kernel.dtype))

    variances = _make_variance_fn(apply_fn, paths)
    rest = {name: value for name, value in variables.items() if name != "params"}
    measure = lambda p, i: float(variances({**rest, "params": p}, batch)[i])

    report = []
    for i, path in enumerate(paths):
        var = var_before = measure(params, i)
        total_scale, iterations = 1.0, 0
        # Stop on a zero or non-finite variance: no rescaling can fix it.
        while (abs(var - target_var) >= tol and iterations < max_iter
               and math.isfinite(var) and var > 0):
            factor = math.sqrt(target_var / var)
            kernel = _get_path(params, path)["kernel"]
            params = _set_kernel(params, path,
                                 (kernel.astype(_work_dtype(kernel.dtype)) * factor)
                                 .astype(kernel.dtype))
            total_scale *= factor
            iterations += 1
            var = measure(params, i)
        report.append({"layer": _layer_name(path), "var_before": var_before, "var_after": var,
                       "iterations": iterations, "scale": total_scale,
                       "converged": bool(abs(var - target_var) < tol)})
    new_variables = dict(variables)
    new_variables["params"] = params
    return new_variables, report
