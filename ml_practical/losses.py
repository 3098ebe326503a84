"""Classification loss with label smoothing, and the L1 / L2 / elastic-net weight penalties.

Everything here is a pure function of arrays or parameter pytrees, jittable except `check_labels`
(host-side validation of data). Penalty coefficients follow one convention, shared with
`ml_practical.optim`: the coupled L2 coefficient `l2` multiplies (1/2) sum w^2, so its gradient is
`l2 * w` (the chapter's 12.2.2), and the L1 coefficient `l1` multiplies sum |w| (12.2.3).

Masks say which parameters a penalty or a decay touches. A mask is either a pytree of Python bools
with the structure of the params (or a prefix of it), or a callable params -> such a pytree, the
same convention as optax masks. The project's default, `default_mask`, selects the leaves named
"kernel" only: no biases, no normalization scale/bias, no embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
Mask = Union[PyTree, Callable[[PyTree], PyTree]]


# --------------------------------------------------------------------------- labels and loss


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """Label smoothing targets, the chapter's 12.6.3 (Szegedy et al. 2016, Inception v2).

    y_smooth = (1 - a) * onehot(y) + a / K.
    E.g. K=5, a=0.1, y=2 -> [0.02, 0.02, 0.92, 0.02, 0.02].

    Args:
      labels: integer class indices, any shape.
      num_classes: K.
      smoothing: a in [0, 1]; 0 gives plain one-hot targets.

    Returns:
      float32 array of shape labels.shape + (K,); each row sums to 1.
    """
    if isinstance(smoothing, (int, float)) and not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing: {smoothing!r} out of range; expected 0 <= label_smoothing <= 1")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes: {num_classes!r}; expected an integer >= 1")
    _require_integer_labels(labels, "smooth_labels")
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return (1.0 - smoothing) * onehot + smoothing / num_classes


def _require_integer_labels(labels: Any, owner: str) -> None:
    """A dtype check, so it holds under jit too (dtypes are static). one_hot of a float label 0.5
    is an all-zero row, which makes the cross entropy 0.0: a silent wrong answer."""
    dtype = jnp.asarray(labels).dtype if not hasattr(labels, "dtype") else labels.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{owner}: labels have dtype {dtype}; expected integer class indices "
                        "(for soft or mixed targets use losses.soft_cross_entropy)")


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross entropy with integer labels and optional label smoothing.

    L = -mean_n sum_k y_smooth[n, k] * log_softmax(logits)[n, k], with y_smooth from `smooth_labels`
    (12.6.3). optax computes log_softmax, which subtracts the max logit, so large logits stay finite.
    Labels outside 0..K-1 would silently give a zero one-hot row inside jit: validate data with
    `check_labels` on the host first.

    Args:
      logits: [..., K] unnormalized scores.
      labels: [...] integer class indices.
      label_smoothing: a in [0, 1].

    Returns:
      Scalar float32 mean loss.

    Raises:
      TypeError: labels of a non-integer dtype (soft targets: `soft_cross_entropy`).
    """
    _require_integer_labels(labels, "cross_entropy")
    targets = smooth_labels(labels, logits.shape[-1], label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean softmax cross entropy against soft targets (a distribution per example).

    L = -mean_n sum_k t[n, k] * log_softmax(logits)[n, k]. For mixup / CutMix targets
    (lam * onehot(y_a) + (1 - lam) * onehot(y_b)), distillation, or smoothed targets built by
    `smooth_labels` -- apply label smoothing to the targets once, before this call; this function
    does not smooth. Rows need not be checked to sum to 1 inside jit; with rows summing to 1 it
    equals `cross_entropy` on the matching one-hot labels.

    Args:
      logits: [..., K] unnormalized scores.
      targets: [..., K] floating non-negative weights, the same shape as logits.

    Returns:
      Scalar float32 mean loss.

    Raises:
      TypeError: integer targets (class indices: use `cross_entropy`).
      ValueError: targets of another shape than logits.
    """
    targets = jnp.asarray(targets)
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise TypeError(f"soft_cross_entropy: targets have dtype {targets.dtype}; expected float "
                        "distributions (integer class indices: losses.cross_entropy)")
    if targets.shape != logits.shape:
        raise ValueError(f"soft_cross_entropy: targets shape {targets.shape} != logits shape "
                         f"{logits.shape}; expected one weight per class")
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def check_labels(labels: Any, num_classes: int) -> None:
    """Host-side check that integer labels lie in 0..K-1; call on data, not inside jit.

    Args:
      labels: array-like of class indices.
      num_classes: K.

    Raises:
      ValueError: non-integer labels, or labels outside 0..K-1.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: dtype {labels.dtype} is not an integer type; expected integer class indices")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels out of range: found min {lo} / max {hi}, expected 0..{num_classes - 1} (num_classes={num_classes})"
        )


# --------------------------------------------------------------------------- masks


def _key_name(key: Any) -> str:
    """Name of one path entry, whatever pytree node produced it (dict, dataclass, sequence)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(path: tuple) -> tuple[str, ...]:
    """The names along a jax key path, as a params dict spells them: ("dense_0", "kernel").

    An `nnx.Variable` is itself a pytree node whose leaf sits under the attribute "value", so the
    state of an nnx model (`nnx.state(model, nnx.Param)`) gives paths like dense_0/kernel/value;
    that trailing attribute is dropped, so masks and parameter-group rules select the same leaves
    in an nnx state as in the linen params of the same model. (A dict entry called "value" is a
    DictKey, not an attribute, and is kept.)
    """
    names = tuple(_key_name(k) for k in path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        names = names[:-1]
    return names


def _path_str(path: tuple) -> str:
    return "/".join(path_names(path))


def default_mask(params: PyTree) -> PyTree:
    """The project's default decay/penalty mask: True for leaves named "kernel", False elsewhere.

    Biases, normalization scale/bias and embedding tables are left out: penalizing them does not
    reduce capacity in a useful way (a norm layer's scale is re-learned freely; the chapter's case
    studies keep L2 off embeddings).

    Args:
      params: a parameter pytree (e.g. flax.linen `variables["params"]`).

    Returns:
      A pytree of Python bools with the structure of `params`.
    """
    def is_kernel(path, _):
        names = path_names(path)
        return bool(names) and names[-1] == "kernel"
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def all_mask(params: PyTree) -> PyTree:
    """A mask selecting every leaf (optax's `mask=None`), for studies that decay everything.

    Args:
      params: a parameter pytree.

    Returns:
      A pytree of True with the structure of `params`.
    """
    return jax.tree.map(lambda _: True, params)


def mask_tree(params: PyTree, mask: Mask | None = None) -> PyTree:
    """Resolve a mask to a full pytree of Python bools matching `params`.

    Args:
      params: a parameter pytree.
      mask: None (means `default_mask`), a callable params -> bool pytree, or a bool pytree whose
        structure is `params`' or a prefix of it (a prefix leaf applies to its whole subtree).

    Returns:
      A pytree of Python bools with the structure of `params`.
    """
    if mask is None:
        mask = default_mask
    if callable(mask):
        mask = mask(params)
    # A mask leaf may stand for a whole subtree of params: broadcast it down.
    return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params)


def masked_leaves(params: PyTree, mask: Mask | None = None) -> list[str]:
    """The '/'-joined paths of the leaves a mask selects, e.g. ["Dense_0/kernel", "Dense_1/kernel"].

    Args:
      params: a parameter pytree.
      mask: as in `mask_tree`; None means `default_mask`.

    Returns:
      Paths in pytree (sorted-key) order.
    """
    flags = jax.tree.leaves(mask_tree(params, mask))
    paths = [_path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [p for p, m in zip(paths, flags, strict=True) if m]


def _selected(params: PyTree, mask: Mask | None) -> list[jax.Array]:
    flags = jax.tree.leaves(mask_tree(params, mask))
    return [w for w, m in zip(jax.tree.leaves(params), flags, strict=True) if m]


# --------------------------------------------------------------------------- penalties


def l2_penalty(params: PyTree, mask: Mask | None = None) -> jax.Array:
    """L2 (ridge) penalty Omega(W) = 1/2 sum w^2 over the masked leaves (chapter 12.2.1).

    The 1/2 makes the gradient exactly w, so `l2 * l2_penalty` matches optax.add_decayed_weights(l2).

    Args:
      params: a parameter pytree.
      mask: as in `mask_tree`; None means `default_mask` (kernels only).

    Returns:
      Scalar float32; 0 when the mask selects nothing.
    """
    return 0.5 * sum((jnp.sum(jnp.square(w)) for w in _selected(params, mask)), jnp.float32(0.0))


def l1_penalty(params: PyTree, mask: Mask | None = None) -> jax.Array:
    """L1 (lasso) penalty Omega(W) = sum |w| over the masked leaves (chapter 12.2.1).

    Args:
      params: a parameter pytree.
      mask: as in `mask_tree`; None means `default_mask` (kernels only).

    Returns:
      Scalar float32; 0 when the mask selects nothing.
    """
    return sum((jnp.sum(jnp.abs(w)) for w in _selected(params, mask)), jnp.float32(0.0))


def elastic_net_penalty(params: PyTree, l1: float, l2: float, mask: Mask | None = None) -> jax.Array:
    """Elastic net (Zou & Hastie 2005): l1 * sum |w| + (l2 / 2) * sum w^2 over the masked leaves.

    Convention: `l2` is the coupled L2 coefficient whose gradient is l2 * w (the same `l2` as
    cfg.optim.l2), and `l1` multiplies sum |w| (the same `l1` as cfg.optim.l1). This is not
    scikit-learn's (alpha, l1_ratio) parameterization.

    Args:
      params: a parameter pytree.
      l1: L1 coefficient >= 0.
      l2: L2 coefficient >= 0.
      mask: as in `mask_tree`; None means `default_mask` (kernels only).

    Returns:
      Scalar float32.
    """
    return l1 * l1_penalty(params, mask) + l2 * l2_penalty(params, mask)
