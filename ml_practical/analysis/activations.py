"""Per-layer activation and gradient statistics (sections 12.1.3-12.1.5, 13.1; 15.4's "track gradient
norms per layer"), read from the statistics every model family sows (the `ml_practical.models`
contract: "preact" / "act" in the scope of the layer that computes the pre-activation), cheap enough
to log every K epochs.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import losses

# What a layer sows (the models contract): its pre-activation and its activation, in its own scope.
SOWN_KINDS = ("preact", "act")
# The fixed batch of the per-epoch statistics: enough samples that "zero for every sample" is a
# meaningful dead-unit test.
STATS_BATCH_SIZE = 512


def natural_key(name: str) -> tuple:
    """Sort "dense_2" before "dense_10" (and "a/dense_2" before "a/dense_10")."""
    parts = []
    for part in name.split("/"):
        stem, _, index = part.rpartition("_")
        parts.append((stem, int(index)) if index.isdigit() else (part, -1))
    return tuple(parts)


def sown_by_layer(intermediates: Mapping[str, Any]) -> dict[str, dict[str, jax.Array]]:
    """{layer path: {"preact": x, "act": x}} from an "intermediates" collection.

    A layer is any module scope holding a sown "preact" or "act" (the models contract); its key is
    its module path joined by "/", e.g. "dense_0" or "stage_1/block_0/conv_1".
    """
    out: dict[str, dict[str, jax.Array]] = {}

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for name, value in tree.items():
            if name in SOWN_KINDS and not isinstance(value, Mapping):
                # `sow` appends one entry per call; a module called twice reports its last call.
                out.setdefault("/".join(path) or "(root)", {})[name] = value[-1]
            elif isinstance(value, Mapping):
                walk(value, (*path, name))

    walk(intermediates, ())
    return {k: out[k] for k in sorted(out, key=natural_key)}


def _apply_with_intermediates(model: nn.Module, variables: Mapping[str, Any], x: jax.Array,
                              rng: jax.Array | None, train: bool) -> tuple[jax.Array, Any]:
    mutable = ["intermediates"]
    if train and variables.get("batch_stats"):
        # BatchNorm in training mode updates its running statistics; they are discarded here.
        mutable.append("batch_stats")
    rngs = {} if rng is None else {"dropout": rng}
    logits, state = model.apply(dict(variables), x, train=train, rngs=rngs, mutable=mutable)
    return logits, state.get("intermediates", {})


def _histogram(x: jax.Array, bins: int, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """numpy.histogram over the (masked) values, range = their min and max, inside jit."""
    x = x.reshape(-1).astype(jnp.float32)
    if mask is None:
        return jnp.histogram(x, bins=bins, range=(jnp.min(x), jnp.max(x)))
    mask = mask.reshape(-1)
    any_kept = jnp.any(mask)
    lo = jnp.where(any_kept, jnp.min(jnp.where(mask, x, jnp.inf)), 0.0)
    hi = jnp.where(any_kept, jnp.max(jnp.where(mask, x, -jnp.inf)), 0.0)
    return jnp.histogram(x, bins=bins, range=(lo, hi), weights=mask.astype(jnp.float32))


def _layer_stats(sown: Mapping[str, jax.Array], bins: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, x in sown.items():
        x32 = x.astype(jnp.float32)
        s: dict[str, Any] = {"mean": jnp.mean(x32), "var": jnp.var(x32)}
        if kind == "act":
            zero = x == 0
            s["zero_fraction"] = jnp.mean(zero.astype(jnp.float32))
            # A unit is the last axis (a Dense feature, a conv channel); dead = zero for every
            # sample (and every position) of the batch, the chapter's "dead ReLU".
            s["dead_fraction"] = jnp.mean(
                jnp.all(zero, axis=tuple(range(x.ndim - 1))).astype(jnp.float32))
        if bins:
            # Activations: histogram of the non-zero values. A ReLU layer puts about half its mass
            # at exactly 0, a spike that would flatten every other bar; zero_fraction counts it.
            s["hist"] = _histogram(x32, bins, mask=~zero if kind == "act" else None)
        out[kind] = s
    return out


def module_norms(tree: Mapping[str, Any]) -> dict[str, jax.Array]:
    """L2 norm of each top-level entry of a params-like tree (jittable; see `grad_norms`)."""
    def norm(sub):
        leaves = jax.tree.leaves(sub)
        if not leaves:
            return jnp.zeros((), jnp.float32)
        return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
    return {name: norm(sub) for name, sub in tree.items()}


@functools.partial(jax.jit, static_argnames=("model", "train", "bins"))
def _activation_stats_jit(model, variables, x, rng, *, train, bins):
    _, intermediates = _apply_with_intermediates(model, variables, x, rng, train)
    return {layer: _layer_stats(sown, bins) for layer, sown in sown_by_layer(intermediates).items()}


def _to_host(stats: Mapping[str, Any]) -> dict[str, Any]:
    stats = jax.device_get(stats)
    out: dict[str, Any] = {}
    # jax returns dicts with sorted keys ("dense_10" before "dense_2"): restore depth order.
    for layer in sorted(stats, key=natural_key):
        kinds = stats[layer]
        out[layer] = {}
        for kind, s in kinds.items():
            d = {k: float(v) for k, v in s.items() if k != "hist"}
            if "hist" in s:
                counts, edges = s["hist"]
                d["hist"] = (np.rint(np.asarray(counts)).astype(np.int64),
                             np.asarray(edges, np.float64))
            out[layer][kind] = d
    return out


def activation_stats(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, *,
                     train: bool = False, bins: int = 50,
                     rng: jax.Array | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-layer pre-activation and activation statistics on one batch, from flax's intermediates.

    One jitted forward pass with `mutable=["intermediates"]` (compiled once per model, shapes, `train`
    and `bins`). Works for any model that follows the `ml_practical.models` contract (it sows
    "preact" / "act" in the scope of each hidden layer).
    The statistics are the chapter's signal-propagation quantities (section 12.1, 13.1): the mean and
    variance of a layer's values over the whole batch (all samples and units, numpy's `var`, ddof=0),
    which He / Xavier initialization aim to keep constant across depth.

    Args:
      model: a linen module called as `model.apply(variables, x, train=...)`.
      variables: its variables ({"params": ..., "batch_stats": ...}).
      x: one batch of inputs.
      train: the mode of the forward pass (False: dropout off, BatchNorm on running statistics).
      bins: histogram bins; 0 skips the histograms.
      rng: the "dropout" key, needed only for train=True with dropout.

    Returns:
      {layer: {"preact": {"mean", "var", "hist"}, "act": {"mean", "var", "zero_fraction",
      "dead_fraction", "hist"}}} with Python floats and `hist = (counts, edges)` as numpy.histogram
      returns them. Layers are keyed by the path of the module that sowed them ("dense_0", ...),
      in depth order.
      zero_fraction: share of activation entries that are exactly 0.
      dead_fraction: share of units (last axis) that are 0 for every sample in the batch.
      The activation histogram covers the non-zero values only (zeros are in zero_fraction).

    Raises:
      ValueError: bins < 0, or a model that sows no "preact" / "act" intermediates (the models
        contract).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 0:
        raise ValueError(f"bins: {bins!r}; expected an integer >= 0 (0 = no histograms)")
    stats = _activation_stats_jit(model, variables, x, rng, train=train, bins=bins)
    if not stats:
        raise ValueError(f"model: {type(model).__name__} sows no 'preact' / 'act' "
                         "intermediates; see the contract in ml_practical.models")
    return _to_host(stats)


@functools.partial(jax.jit, static_argnames=("graphdef", "bins"))
def _activation_stats_nnx_jit(state, x, *, graphdef, bins):
    """Compiled once per model structure (the hashable GraphDef), shapes and `bins`, like
    `_activation_stats_jit`, so a logger calling it every K epochs does not recompile."""
    from flax import nnx

    from ml_practical.nnx.capture import intermediates

    copy = nnx.merge(graphdef, state)
    _, sown = intermediates(lambda m, x: m(x), copy, x)
    return {layer: _layer_stats(kinds, bins) for layer, kinds in sown_by_layer(sown).items()}


def activation_stats_nnx(model: Any, x: jax.Array, *,
                         bins: int = 50) -> dict[str, dict[str, dict[str, Any]]]:
    """`activation_stats` for a Flax NNX model, in the mode it is in.

    The same statistics from the same sown "preact" / "act" values (the nnx families sow them
    inside `nnx.capture`, `ml_practical.nnx.capture`), one jitted forward pass. The mode is the
    model's (`model.eval()`: dropout off, BatchNorm on running statistics; `model.train()`). The
    model is left exactly as given: the pass runs on a copy, so BatchNorm's running statistics
    and the dropout streams' counters do not move (calling it twice in training mode draws the
    same masks).

    Args:
      model: an `nnx.Module` called `model(x)` that sows the models contract's statistics.
      x: one batch of inputs.
      bins: histogram bins; 0 skips the histograms.

    Returns:
      As `activation_stats`.

    Raises:
      ValueError: bins < 0, or a model that sows nothing.
    """
    from flax import nnx

    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 0:
        raise ValueError(f"bins: {bins!r}; expected an integer >= 0 (0 = no histograms)")
    graphdef, state = nnx.split(model)
    stats = _activation_stats_nnx_jit(state, x, graphdef=graphdef, bins=bins)
    if not stats:
        raise ValueError(f"model: {type(model).__name__} sows no 'preact' / 'act' "
                         "intermediates; see the contract in ml_practical.models")
    return _to_host(stats)


def grad_norms(grads: Mapping[str, Any]) -> dict[str, float]:
    """Per-layer gradient L2 norms: one per top-level module of a params tree.

    The chapter's monitoring advice (section 15.4, "track gradient norms per layer"): a layer whose
    norm is orders of magnitude below the others is not learning (vanishing gradient); a spike is
    what clipping (section 12.7) is for. The squares of the per-layer norms sum to the square of the
    global norm that `optax.clip_by_global_norm` uses.

    Args:
      grads: a gradient tree shaped like the "params" collection, e.g. {"dense_0": {"kernel",
        "bias"}, ..., "head": {...}}.

    Returns:
      {module name: sqrt(sum of squares of all its leaves)} as Python floats.
    """
    norms = jax.device_get(module_norms(grads))
    return {k: float(norms[k]) for k in sorted(norms, key=natural_key)}


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _epoch_stats_jit(model, variables, images, labels, rng, *, train):
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p):
        logits, intermediates = _apply_with_intermediates(model, {"params": p, **rest}, images,
                                                          rng, train)
        return losses.cross_entropy(logits, labels), intermediates

    (_, intermediates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    layers = {layer: _layer_stats(sown, 0) for layer, sown in sown_by_layer(intermediates).items()}
    return layers, module_norms(grads)


def epoch_stats(model: nn.Module, variables: Mapping[str, Any], images: jax.Array,
                labels: jax.Array, *, train: bool = False,
                rng: jax.Array | None = None) -> dict[str, float]:
    """Flat per-layer statistics for a metrics record: one jitted forward + backward on one batch.

    The forward pass gives the activation statistics of `activation_stats` (without histograms); the
    backward pass of the plain cross entropy (no label smoothing, no penalties: the data gradient
    that clipping sees) gives the per-layer gradient norms of `grad_norms`.

    Args:
      model, variables, train, rng: as in `activation_stats`.
      images, labels: the batch (a fixed one, so epochs are comparable).

    Returns:
      {"stats/{layer}/preact_mean", ".../preact_var", ".../act_mean", ".../act_var",
      ".../zero_fraction", ".../dead_fraction", "stats/{module}/grad_norm"} as Python floats.
    """
    layers, norms = jax.device_get(
        _epoch_stats_jit(model, variables, images, labels, rng, train=train))
    out: dict[str, float] = {}
    for layer in sorted(layers, key=natural_key):
        for kind, s in layers[layer].items():
            for name, value in s.items():
                key = name if name.endswith("_fraction") else f"{kind}_{name}"
                out[f"stats/{layer}/{key}"] = float(value)
    for module in sorted(norms, key=natural_key):
        out[f"stats/{module}/grad_norm"] = float(norms[module])
    return out


def make_stats_logger(model: nn.Module, images: jax.Array, labels: jax.Array, *, every: int,
                      batch_size: int = STATS_BATCH_SIZE,
                      train: bool = False) -> Callable[[int, Any, Any], dict[str, float]]:
    """`log(epoch, params, batch_stats) -> record entries` every `every` epochs (`train.stats_every`).

    The batch is fixed: the first `batch_size` training examples, so the numbers of different epochs
    describe the same inputs. On other epochs, and always when every == 0, `log` returns {} and
    costs nothing. The returned entries include "stats/time_s", the seconds the statistics took
    (device work and the transfer to the host; the first call includes compilation).

    Args:
      model: the trained model.
      images, labels: the training set (device arrays or numpy).
      every: log on epochs that are multiples of `every`; 0 = never.
      batch_size: size of the fixed batch (capped at the training-set size).
      train: the forward mode of the statistics (default False: deterministic, BatchNorm on running
        statistics, so dropout does not add noise to the numbers).

    Raises:
      ValueError: `every` not an integer >= 0.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"train.stats_every: {every!r}; expected an integer >= 0 (0 = off)")
    if every == 0:
        return lambda epoch, params, batch_stats: {}
    n = min(int(batch_size), int(images.shape[0]))
    x, y = images[:n], labels[:n]

    def log(epoch: int, params: Any, batch_stats: Any) -> dict[str, float]:
        if epoch % every:
            return {}
        t0 = time.perf_counter()
        out = epoch_stats(model, {"params": params, "batch_stats": batch_stats}, x, y, train=train)
        out["stats/time_s"] = time.perf_counter() - t0
        return out

    return log
