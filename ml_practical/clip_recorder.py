"""Gradient clipping observed during training: how often it clips and how far it turns the gradient.

The chapter (section 12.7) prefers clipping by global norm, g * min(1, tau / ||g||), which keeps the
direction of g, over clipping by value, clip(g, -tau, tau) element-wise, which changes it.
`recording_clip(kind, tau)` is the clip transform itself (`optim.clip_transform`, what
`optim.make_optimizer` puts first in its chain; `make_optimizer(..., record_clip=True)` puts this
one there) with a state that records, for the step just taken, the cosine between the clipped and
the raw gradient, whether it clipped and the raw per-layer norms. `step_metrics` reads that record
from a train state, so the training loop returns it per step with one host transfer per epoch (a
`loop.Hook` whose `step_metrics` is this function, in `loop.fit(..., record_clip=True)`; see
experiments/clipping); `summarize_records` reduces the per-step records of a run.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_practical.analysis.activations import module_norms
from ml_practical.optim import clip_transform


class ClipRecord(NamedTuple):
    """What `recording_clip` saw at its last update (scalars unless noted).

    Attributes:
      cosine: <g_clipped, g_raw> / (||g_clipped|| ||g_raw||); 1 when either is zero.
      clipped: 1.0 if the transform changed the gradient (global_norm: ||g|| > tau; value: some
        |g_i| > tau), else 0.0.
      element_fraction: share of gradient entries the clip changed (value: |g_i| > tau; global_norm:
        all or none).
      raw_norm, clipped_norm: global L2 norms before and after.
      raw_max_abs: max_i |g_i| before clipping (what clip-by-value compares with tau).
      raw_layer_norms, clipped_layer_norms: {top-level module: L2 norm} before and after.
      inner: the wrapped transform's state.
    """

    cosine: jax.Array
    clipped: jax.Array
    element_fraction: jax.Array
    raw_norm: jax.Array
    clipped_norm: jax.Array
    raw_max_abs: jax.Array
    raw_layer_norms: dict[str, jax.Array]
    clipped_layer_norms: dict[str, jax.Array]
    inner: Any


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def clip_report(raw: Any, clipped: Any, kind: str, tau: float) -> dict[str, Any]:
    """The `ClipRecord` fields (except `inner`) for one raw gradient and its clipped version.

    Args:
      raw, clipped: gradient trees of the same structure (top-level keys = layers).
      kind, tau: the clip that produced `clipped` (see `clip_transform`).

    Returns:
      {"cosine", "clipped", "element_fraction", "raw_norm", "clipped_norm", "raw_max_abs",
      "raw_layer_norms", "clipped_layer_norms"} as jax arrays (jittable).
    """
    raw_norm = jnp.sqrt(_dot(raw, raw))
    clipped_norm = jnp.sqrt(_dot(clipped, clipped))
    denom = raw_norm * clipped_norm
    cosine = jnp.where(denom > 0, _dot(raw, clipped) / jnp.where(denom > 0, denom, 1.0), 1.0)
    leaves = jax.tree.leaves(raw)
    raw_max_abs = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
    if kind == "value":
        over = sum(jnp.sum(jnp.abs(x) > tau) for x in leaves)
        element_fraction = over / sum(x.size for x in leaves)
        did_clip = raw_max_abs > tau
    elif kind == "global_norm":
        did_clip = raw_norm > tau
        element_fraction = did_clip.astype(jnp.float32)
    elif kind == "adaptive":  # per unit: the fraction of entries AGC changed
        changed = sum(jnp.sum(a != b) for a, b in zip(leaves, jax.tree.leaves(clipped)))
        element_fraction = changed / sum(x.size for x in leaves)
        did_clip = changed > 0
    else:
        did_clip = jnp.zeros((), bool)
        element_fraction = jnp.zeros((), jnp.float32)
    return {
        "cosine": cosine, "clipped": did_clip.astype(jnp.float32),
        "element_fraction": jnp.asarray(element_fraction, jnp.float32),
        "raw_norm": raw_norm, "clipped_norm": clipped_norm, "raw_max_abs": raw_max_abs,
        "raw_layer_norms": module_norms(raw),
        "clipped_layer_norms": module_norms(clipped),
    }


def recording_clip(kind: str, tau: float) -> optax.GradientTransformation:
    """`clip_transform(kind, tau)` whose state is a `ClipRecord` of its last update.

    Put it first in the chain, where `optim.make_optimizer` puts clipping:
    `optax.chain(recording_clip(kind, tau), optim.make_optimizer(cfg_with_clip_none))` updates
    exactly like `optim.make_optimizer(cfg)` with cfg.clip = kind, cfg.clip_value = tau.

    Args:
      kind, tau: as in `clip_transform`.

    Returns:
      An optax.GradientTransformation; its state after `update` is the step's `ClipRecord`.
    """
    base = clip_transform(kind, tau)

    def init_fn(params):
        # A fresh buffer per field: the train state is donated, and a buffer shared by two leaves
        # cannot be donated twice.
        zero = lambda: jnp.zeros((), jnp.float32)
        return ClipRecord(cosine=jnp.ones((), jnp.float32), clipped=zero(),
                          element_fraction=zero(), raw_norm=zero(), clipped_norm=zero(),
                          raw_max_abs=zero(), raw_layer_norms={name: zero() for name in params},
                          clipped_layer_norms={name: zero() for name in params},
                          inner=base.init(params))

    def update_fn(updates, state, params=None):
        clipped, inner = base.update(updates, state.inner, params)
        report = clip_report(updates, clipped, kind, tau)
        return clipped, ClipRecord(inner=inner, **report)

    return optax.GradientTransformation(init_fn, update_fn)


def find_record(opt_state: Any) -> ClipRecord:
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ClipRecord))
             if isinstance(x, ClipRecord)]
    if len(found) != 1:
        raise ValueError(f"tx: expected exactly one recording_clip in the optimizer chain, "
                         f"found {len(found)}")
    return found[0]


def step_metrics(old_state: Any, new_state: Any, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The step's `ClipRecord` fields (without `inner`): a hook's `step_metrics` (`loop.Hook`).

    Args:
      old_state, new_state: the train state before and after the step; the record is in
        `new_state.opt_state` (the chain must hold exactly one `recording_clip`).
      metrics: the step's own metrics (unused).

    Returns:
      {"cosine", "clipped", "element_fraction", "raw_norm", "clipped_norm", "raw_max_abs",
      "raw_layer_norms", "clipped_layer_norms"}.
    """
    del old_state, metrics
    record = find_record(new_state.opt_state)._asdict()
    record.pop("inner")
    return record


def summarize_records(steps: Mapping[str, Any], *, norm_tau: float | None = None,
              value_tau: float | None = None) -> dict[str, float]:
    """Host-side summary of per-step records (several epochs concatenated).

    Args:
      steps: {"cosine", "clipped", "element_fraction", "raw_norm", "raw_max_abs", ...} arrays.
      norm_tau, value_tau: optional thresholds; adds the share of steps whose *raw* gradient would
        have been clipped by them ("would_clip_global_norm", "would_clip_value"), which is how an
        unclipped run is compared with the clipped ones.

    Returns:
      {"steps", "clipped_fraction", "cosine_mean", "cosine_min", "element_fraction_mean",
      "raw_norm_median", "raw_norm_max", "raw_max_abs_median", "nonfinite_steps"} (+ would_clip_*).
      Means, medians and extremes are over the steps whose raw gradient norm is finite and,
      when `steps` has a "skipped" array (the inline non-finite guard's per-step flag, e.g. from
      `loop.StepLog`), that the guard applied: on a skipped step the optimizer, hence the clip
      slot, does not run and its record repeats the last applied step's, so it counts as a
      non-finite step, not as a measurement.
    """
    raw_norm = np.asarray(steps["raw_norm"], np.float64)
    ok = np.isfinite(raw_norm)
    if "skipped" in steps:
        ok &= np.asarray(steps["skipped"]).reshape(ok.shape) == 0
    if not ok.any():
        nan = float("nan")
        return {"steps": int(raw_norm.size), "nonfinite_steps": int(raw_norm.size),
                "clipped_fraction": nan, "cosine_mean": nan, "cosine_min": nan,
                "element_fraction_mean": nan, "raw_norm_median": nan, "raw_norm_max": nan,
                "raw_max_abs_median": nan}
    steps = {k: np.asarray(v)[ok] for k, v in steps.items() if not isinstance(v, Mapping)}
    cos = np.asarray(steps["cosine"], np.float64)
    out = {
        "steps": int(raw_norm.size),
        "nonfinite_steps": int((~ok).sum()),
        "clipped_fraction": float(np.mean(steps["clipped"])),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "element_fraction_mean": float(np.mean(steps["element_fraction"])),
        "raw_norm_median": float(np.median(steps["raw_norm"])),
        "raw_norm_max": float(np.max(steps["raw_norm"])),
        "raw_max_abs_median": float(np.median(steps["raw_max_abs"])),
    }
    if norm_tau is not None:
        out["would_clip_global_norm"] = float(np.mean(steps["raw_norm"] > norm_tau))
    if value_tau is not None:
        out["would_clip_value"] = float(np.mean(steps["raw_max_abs"] > value_tau))
    return out
