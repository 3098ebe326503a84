"""Weight averaging: an EMA of the parameters and SWA, kept in the optimizer state, and the
BatchNorm recalibration that averaged weights need before they are evaluated.

Both averages are optax transforms placed last in the chain (`optim.make_optimizer`, fields
`optim.ema_decay`, `optim.swa_start_frac`, `optim.swa_every_steps`). They pass the updates
through unchanged and keep the average of the weights the step produces (params + updates) in
their state. So the average is checkpointed with the optimizer state, a resumed run continues it
exactly, vmapped seeds each carry their own, and a step the non-finite guard skips leaves it as it
was (the guard keeps the old optimizer state).

  EMA   (Polyak & Juditsky 1992; timm's ModelEmaV2): ema <- d ema + (1 - d) w_t after every step,
        starting from the initial weights (no bias correction, as timm).
  SWA   (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"): the running mean of
        the weights at every `every` steps, from step `start` on: mean <- mean + (w - mean) / n.

Averaged weights were never trained with their own BatchNorm statistics: the running statistics
of the last state describe other weights. `recalibrate_batch_stats` recomputes them in a pass
over training batches. That is torch.optim.swa_utils.update_bn: the cumulative average of the
batch statistics, in training mode.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class ParamEMAState(NamedTuple):
    ema: PyTree


class SWAState(NamedTuple):
    mean: PyTree
    count: jax.Array  # models averaged so far
    step: jax.Array   # optimizer steps seen


def param_ema(decay: float) -> optax.GradientTransformation:
    """The EMA of the weights the chain produces; the updates pass through unchanged."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"optim.ema_decay: {decay!r}; expected 0 < decay < 1")

    def init(params):
        # A copy, not the params' own buffers: a train step donates the state, and one buffer
        # in two places of a donated tree is an error.
        return ParamEMAState(ema=jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("param_ema: update needs params")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, w: decay * e + (1.0 - decay) * w.astype(e.dtype),
                           state.ema, new)
        return updates, ParamEMAState(ema=ema)

    return optax.GradientTransformation(init, update)


def swa(start: int, every: int) -> optax.GradientTransformation:
    """The mean of the weights after optimizer steps start, start + every, ... (1-based)."""
    if start < 1 or every < 1:
        raise ValueError(f"swa: start {start!r} and every {every!r}; expected integers >= 1")

    def init(params):
        return SWAState(mean=jax.tree.map(jnp.zeros_like, params),
                        count=jnp.zeros((), jnp.int32), step=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("swa: update needs params")
        step = state.step + 1
        take = (step >= start) & ((step - start) % every == 0)
        count = state.count + take.astype(jnp.int32)
        new = optax.apply_updates(params, updates)
        inv = jnp.where(take, 1.0 / jnp.maximum(count, 1).astype(jnp.float32), 0.0)
        mean = jax.tree.map(lambda m, w: m + inv.astype(m.dtype) * (w.astype(m.dtype) - m),
                            state.mean, new)
        return updates, SWAState(mean=mean, count=count, step=step)

    return optax.GradientTransformation(init, update)


def averaged_params(opt_state: PyTree, kind: str) -> PyTree:
    """The EMA ("ema") or SWA ("swa") weights held in an optimizer state.

    Raises:
      ValueError: the state has no such average (the chain was built without it), or SWA has
        averaged no model yet.
    """
    cls = {"ema": ParamEMAState, "swa": SWAState}.get(kind)
    if cls is None:
        raise ValueError(f"averaged_params.kind: {kind!r}; expected 'ema' or 'swa'")
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
             if isinstance(s, cls)]
    if not found:
        raise ValueError(f"the optimizer state holds no {kind.upper()} average; set "
                         + ("optim.ema_decay" if kind == "ema" else "optim.swa_start_frac"))
    state = found[0]
    if kind == "ema":
        return state.ema
    if int(jax.device_get(state.count)) == 0:
        raise ValueError("SWA has averaged no weights yet (its start step is not reached)")
    return state.mean


@functools.partial(jax.jit, static_argnums=0)
def _batch_statistics(model, params, batch_stats, x, key):
    """One batch's BatchNorm statistics (the model has bn_momentum 0); compiled once per model
    and shape, the weights an argument."""
    _, new = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                         mutable=["batch_stats"], rngs={"dropout": key})
    return new["batch_stats"]


def eval_weights(kind: str, state, model, train_x, *, batch_size: int,
                 num_batches: int) -> tuple[PyTree, PyTree]:
    """(params, batch_stats) to evaluate for `train.eval_weights` `kind`.

    "last": the state's own. "ema" / "swa": the average in the optimizer state (SWA before its
    first snapshot: the state's own weights), with BatchNorm statistics recomputed over the first
    `num_batches` batches of `train_x` (0: the state's running statistics).
    """
    if kind == "last":
        return state.params, state.batch_stats
    try:
        params = averaged_params(state.opt_state, kind)
    except ValueError:
        if kind == "swa" and has_average(state.opt_state, kind):
            return state.params, state.batch_stats  # SWA has not started yet
        raise
    if not num_batches or not jax.tree.leaves(state.batch_stats):
        return params, state.batch_stats
    n = min(num_batches, len(train_x) // batch_size)
    batches = [train_x[i * batch_size:(i + 1) * batch_size] for i in range(max(n, 1))]
    return params, recalibrate_batch_stats(model, params, state.batch_stats, batches)


def has_average(opt_state: PyTree, kind: str) -> bool:
    """Whether the optimizer state holds an EMA ("ema") or SWA ("swa") average at all."""
    cls = {"ema": ParamEMAState, "swa": SWAState}[kind]
    return any(isinstance(s, cls)
               for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls)))


def recalibrate_batch_stats(model, params: PyTree, batch_stats: PyTree,
                            batches: Iterable[jax.Array], *, key: jax.Array | None = None
                            ) -> PyTree:
    """BatchNorm running statistics recomputed for `params`: the mean over `batches` of each
    layer's batch statistics, in training mode (torch's `update_bn` with momentum=None).

    The model is run with `bn_momentum=0` (so one pass's "running" statistics are that batch's
    own) and the passes' statistics are averaged with equal weights. Layer k sees the output of
    layer k - 1 normalized with batch statistics, as in training; dropout is on, with `key`
    (default PRNGKey(0)), as torch's pass runs the model in train mode.

    Args:
      model: a family with a `bn_momentum` field (mlp, cnn, resnet).
      params: the (averaged) weights.
      batch_stats: the current statistics (their structure; the values are replaced).
      batches: training input batches of equal size.
    """
    if not jax.tree.leaves(batch_stats):
        return batch_stats
    if not hasattr(model, "bn_momentum"):
        raise ValueError(f"recalibrate_batch_stats: {type(model).__name__} has no bn_momentum")
    fresh = model.clone(bn_momentum=0.0)
    key = jax.random.PRNGKey(0) if key is None else key
    total, n = None, 0
    for i, x in enumerate(batches):
        stats = _batch_statistics(fresh, params, batch_stats, jnp.asarray(x),
                                  jax.random.fold_in(key, i))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    if n == 0:
        raise ValueError("recalibrate_batch_stats: no batches")
    return jax.tree.map(lambda t: t / n, total)
