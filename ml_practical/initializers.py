"""Weight initializers (chapter 12.1): zero, small random, Xavier, He, orthogonal, embedding.

Every public factory returns a jax-style `init(key, shape, dtype=jnp.float32) -> Array`, so it drops
into any flax layer: `nn.Dense(128, kernel_init=he_normal())`. Config files name initializers by
string; `get(name, **kwargs)` resolves them.

The data-dependent LSUV (Mishkin & Matas 2016) needs the model and a batch, so it is not a
`(key, shape)` factory: it lives in `ml_practical.lsuv`.

Specs. A config names an initializer by a string, optionally with arguments in call syntax:
"he_normal", "normal(stddev=0.05)", "constant(0.01)" (`get` parses it; arguments are Python
literals, positional ones in the factory's order).

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

import ast
import functools
import inspect
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]  # (key, shape, dtype=jnp.float32) -> Array

FAN_MODES = ("fan_avg", "fan_in", "fan_out")

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
    if mode not in FAN_MODES:
        raise ValueError(f"mode: unknown {mode!r}; expected one of {list(FAN_MODES)}")


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


def _embedding_rows(shape: Sequence[int]) -> int:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("shape: a 0-d shape has no rows; expected (num_rows, d)")
    return shape[0]


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


def embedding_rows_uniform() -> Initializer:
    """Embedding table init U(-sqrt(1/n), sqrt(1/n)), n = number of rows = shape[0].

    The public DLRM reference (Naumov et al. 2019, facebookresearch/dlrm `dlrm_s_pytorch.py`,
    `create_emb`) draws each (n, m) table as
    `np.random.uniform(low=-np.sqrt(1 / n), high=np.sqrt(1 / n), size=(n, m))`: the bound shrinks
    with the vocabulary size n, not with the embedding dimension d = m. Each entry has variance
    1/(3n), so a row's expected squared norm is d/(3n), which goes to zero for a big table. The
    chapter's Example 4 states the other rule, U(-1/sqrt(d), 1/sqrt(d)) (`embedding_uniform`,
    variance 1/(3d), row norm^2 1/3 whatever n is); claims.md CASE-04 records the mismatch. With
    both named, a config picks one and a study can compare them.

    Returns:
      `init(key, shape, dtype=jnp.float32)` for an (n, d) table; n is the first axis of `shape`.
    """
    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return _uniform(key, shape, dtype, math.sqrt(1.0 / _embedding_rows(shape)))
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
    "embedding_rows_uniform": embedding_rows_uniform,
}


def names() -> list[str]:
    """The initializer names `get` accepts, sorted."""
    return sorted(_FACTORIES)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Splits an initializer spec into its name and keyword arguments.

    "he_normal" -> ("he_normal", {}); "normal(stddev=0.05)" -> ("normal", {"stddev": 0.05});
    "constant(0.01)" -> ("constant", {"value": 0.01}) (positional arguments in the factory's order).

    Raises:
      ValueError: a malformed spec, an unknown name, or arguments that are not Python literals.
    """
    text = spec.strip()
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise ValueError(f"initializer: {spec!r} is not 'name' or 'name(arguments)'")
    name = text[:text.index("(")].strip()
    if name not in _FACTORIES:
        raise ValueError(f"initializer: unknown {name!r}; expected one of {names()}")
    try:
        call = ast.parse(f"f{text[text.index('('):]}", mode="eval").body
        # One call of the bare name: "normal(0.05)(1)" parses as a call of a call.
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            raise ValueError
        keys = [k.arg for k in call.keywords]
        if None in keys or len(set(keys)) != len(keys):  # **mapping, or a keyword repeated
            raise ValueError
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
        raise ValueError(f"initializer: {spec!r}: the arguments must be Python literals, each "
                         "keyword once, e.g. 'normal(stddev=0.05)'") from None
    params = list(inspect.signature(_FACTORIES[name]).parameters)
    if len(args) > len(params):
        raise ValueError(f"initializer {name!r}: {len(args)} positional arguments in {spec!r} "
                         f"for {params}")
    for param, value in zip(params, args):
        if param in kwargs:
            raise ValueError(f"initializer {name!r}: {param!r} given twice in {spec!r}")
        kwargs[param] = value
    return name, kwargs


def get(name: str | Initializer, **kwargs: Any) -> Initializer:
    """Resolves a config spec to an initializer: `get("he_normal", mode="fan_out")`,
    `get("constant(0.01)")`.

    Args:
      name: one of `names()`, a spec with arguments ("normal(stddev=0.05)", see `parse_spec`), or
        an initializer callable, which is returned unchanged (so a model field can hold either).
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
    if not isinstance(name, str):
        raise ValueError(f"initializer: {name!r}; expected a name such as 'he_normal' or a "
                         "(key, shape, dtype) callable")
    name, spec_kwargs = parse_spec(name)
    kwargs = {**spec_kwargs, **kwargs}
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
      name: one of `names()`, or a spec with arguments ("normal(stddev=0.05)").
      shape: the weight shape.
      **kwargs: the factory's arguments, validated as in `get`.

    Returns:
      The target std as a Python float.
    """
    get(name, **kwargs)  # validates the name and the arguments
    name, spec_kwargs = parse_spec(name)
    kwargs = {**spec_kwargs, **kwargs}
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
    if name == "embedding_rows_uniform":
        return 1.0 / math.sqrt(3.0 * _embedding_rows(shape))
    raise AssertionError(f"expected_std: {name!r} is registered but has no formula")
