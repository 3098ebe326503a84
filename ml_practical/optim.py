"""The optimizer built from cfg.optim: clip -> coupled L2 / L1 -> optimizer -> decoupled decay -> lr -> prox L1.

`make_optimizer(cfg.optim, total_steps)` returns one optax chain, so clipping and every decay live in
the optimizer and never in the loss. The order, and why:

  1. clip ("value" | "global_norm") on the data gradient only, like torch.nn.utils.clip_grad_*_
     called before optimizer.step() (chapter 12.7).
  2. coupled L2: g += l2 * w (optax.add_decayed_weights before the optimizer; torch's
     `weight_decay` argument of SGD/Adam). It is the gradient of (l2/2) sum w^2 (chapter 12.2.2),
     so it passes through momentum / Adam's normalization.
     L1 subgradient: g += l1 * sign(w) (chapter 12.2.3), same place, same reason.
  3. the optimizer's direction: identity ("sgd"), heavy-ball trace ("momentum"), scale_by_adam.
  4. decoupled weight decay: u += weight_decay * w after the optimizer, before the learning rate,
     so the step is -lr_t * weight_decay * w (Loshchilov & Hutter 2019, AdamW; the same placement as
     optax.adamw and torch.optim.AdamW). For plain SGD this equals coupled L2 with l2 = weight_decay.
  5. scale by the (scheduled) learning rate, sign flipped for descent.
  6. proximal L1 (l1_mode="proximal"): soft-threshold the new weights by lr_t * l1 (ISTA), which
     gives exact zeros where the subgradient only oscillates around zero.

Every decay/penalty uses the project's mask (`decay_mask`: "kernels" = leaves named "kernel",
`ml_practical.losses.default_mask`; "all" = every leaf). The fields, their defaults and allowed
values are `ml_practical.config.OptimConfig`'s.

Parameter groups (`ml_practical.param_groups`): `wd_mults` replaces the 0/1 mask of the two
decays by a per-leaf multiplier (`add_scaled_decayed_weights`), `lr_mults` scales each leaf's
final update (`scale_by_leaf`, after step 5), and `freeze` wraps the whole chain in
`optax.multi_transform`, so frozen leaves get `set_to_zero` and are seen by no step above. L1
keeps `decay_mask`. With none of the three set, the chain is the one above, unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_practical.config import CLIPS, OptimConfig
from ml_practical.losses import Mask, all_mask, default_mask, mask_tree

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


# AGC's floor on the weight norm (the paper's epsilon), so zero-initialized weights still move.
AGC_EPS = 1e-3

# --------------------------------------------------------------------------- custom transforms


def _coefficient(name: str, value, *, positive: bool = False) -> float:
    """A finite real >= 0 (> 0 when `positive`), else one ValueError naming `name`.

    inf is refused like NaN: an infinite threshold or penalty is never what a user meant, and it
    turns into NaN weights (0 * inf) rather than a message.
    """
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{name}: {value!r}; expected a finite number {'>' if positive else '>='} 0")
    return float(value)


def clip_transform(kind: str, tau: float) -> optax.GradientTransformation:
    """The clip of the chain for `clip` = kind and `clip_value` = tau (chapter 12.7).

    Args:
      kind: "none" (identity), "value" (optax.clip: each entry to [-tau, tau]), "adaptive"
        (optax.adaptive_grad_clip, AGC of Brock et al. 2021, "High-Performance Large-Scale Image
        Recognition Without Normalization", eq. 3: each unit i of a weight W (a row of the output
        axis: the last axis of a kernel) gets G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i
        when ||G_i|| / max(||W_i||, eps) > lambda, with lambda = tau and eps = AGC_EPS; it
        needs `params`. Applied to every leaf: the paper leaves the final classifier
        unclipped, which a mask on the chain would do), or "global_norm"
        (optax.clip_by_global_norm: g * tau / ||g|| when ||g|| > tau, ||g|| over all leaves).
      tau: the threshold, > 0.

    Returns:
      An optax.GradientTransformation.

    Raises:
      ValueError: unknown kind, or tau not a finite number > 0.
    """
    if kind not in CLIPS:
        raise ValueError(f"optim.clip: unknown {kind!r}; expected one of {sorted(CLIPS)}")
    tau = _coefficient("optim.clip_value", tau, positive=True)
    if kind == "value":
        return optax.clip(tau)
    if kind == "global_norm":
        return optax.clip_by_global_norm(tau)
    if kind == "adaptive":
        return optax.adaptive_grad_clip(tau, eps=AGC_EPS)
    return optax.identity()


def add_l1_subgradient(l1: float, mask: Mask | None = None) -> optax.GradientTransformation:
    """Add the L1 subgradient l1 * sign(w) to the incoming gradient (chapter 12.2.3).

    The gradient of l1 * sum |w| is l1 * sign(w) away from 0; at w = 0 we take sign(0) = 0, a valid
    element of the subdifferential [-l1, l1]. Place it before the optimizer, like coupled L2. Weights
    rarely land on exactly 0 this way (they oscillate around it); use `proximal_l1` for exact zeros.

    Args:
      l1: coefficient >= 0.
      mask: which leaves are penalized: None (the default mask, kernels only), a bool pytree, or a
        callable params -> bool pytree.

    Returns:
      An optax.GradientTransformation; `update` requires `params`.

    Raises:
      ValueError: l1 not a finite number >= 0.
    """
    l1 = _coefficient("optim.l1", l1)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_l1_subgradient: params are required; call update(updates, state, params)")
        flags = mask_tree(params, mask)
        updates = jax.tree.map(
            lambda u, w, m: u + (l1 * jnp.sign(w)).astype(u.dtype) if m else u, updates, params, flags
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class ProximalL1State(NamedTuple):
    """Step counter, so the threshold uses the same lr_t as scale_by_learning_rate in that step."""

    count: jax.Array


def proximal_l1(
    l1: float, learning_rate: ScalarOrSchedule, mask: Mask | None = None
) -> optax.GradientTransformation:
    """Proximal step for l1 * ||w||_1: soft-threshold the proposed weights (ISTA).

    Given the final update u (already scaled by -lr_t), the new weights are
        w' = prox_{lr_t * l1 * ||.||_1}(w + u) = sign(w + u) * max(|w + u| - lr_t * l1, 0)
    and the transform returns u' = w' - w. This is the proximal operator of the L1 norm (Parikh &
    Boyd 2014, "Proximal Algorithms", Sec. 6.5.2); one gradient step followed by it is ISTA
    (Daubechies, Defrise & De Mol 2004; Beck & Teboulle 2009). Coordinates with |w + u| <= lr_t * l1
    become exactly 0, which the subgradient sign(w) never achieves.

    Put it last in the chain, after the learning rate. With adaptive optimizers (Adam) the
    threshold uses the global lr_t, not Adam's per-coordinate step size: a common approximation.

    Args:
      l1: coefficient >= 0 of sum |w|.
      learning_rate: the same float or optax schedule given to scale_by_learning_rate; evaluated
        at this transform's own step count, which advances in lock-step with it.
      mask: which leaves are thresholded: None (the default mask, kernels only), a bool pytree, or
        a callable params -> bool pytree. Unselected leaves pass u through unchanged.

    Returns:
      An optax.GradientTransformation; `update` requires `params`.

    Raises:
      ValueError: l1 not a finite number >= 0.
    """
    l1 = _coefficient("optim.l1", l1)

    def init_fn(params):
        del params
        return ProximalL1State(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("proximal_l1: params are required; call update(updates, state, params)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        flags = mask_tree(params, mask)

        def prox(u, w, m):
            if not m:
                return u
            z = w + u
            threshold = jnp.asarray(lr * l1, z.dtype)
            w_new = jnp.sign(z) * jnp.maximum(jnp.abs(z) - threshold, 0.0)
            return (w_new - w).astype(u.dtype)

        updates = jax.tree.map(prox, updates, params, flags)
        return updates, ProximalL1State(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def _typed(cfg: OptimConfig) -> OptimConfig:
    if not isinstance(cfg, OptimConfig):
        raise TypeError(f"optim: expected an ml_practical.config.OptimConfig, got "
                        f"{type(cfg).__name__}; build one with OptimConfig(name=..., "
                        "learning_rate=...) or config.build(OptimConfig, mapping)")
    return cfg


# --------------------------------------------------------------------------- schedule and chain


def _schedule(o: OptimConfig, total_steps: int | None) -> optax.Schedule:
    if o.schedule != "constant" and (
            total_steps is None or isinstance(total_steps, bool)
            or not isinstance(total_steps, numbers.Integral)):
        raise ValueError(f"optim.schedule: {o.schedule!r} needs total_steps (an integer), got "
                         f"{total_steps!r}")
    if o.schedule == "one_cycle":
        # optax's cosine one-cycle (Smith & Topin 2019; the fast.ai / torch OneCycleLR shape):
        # cosine from lr / div up to lr over pct_start of the steps, then cosine down to
        # lr / (div * final_div).
        return optax.cosine_onecycle_schedule(
            transition_steps=total_steps, peak_value=o.learning_rate,
            pct_start=o.onecycle_pct_start, div_factor=o.onecycle_div_factor,
            final_div_factor=o.onecycle_final_div_factor)
    if o.schedule == "step":
        if not o.warmup_steps < total_steps:
            raise ValueError(f"optim.warmup_steps: {o.warmup_steps} must be < total_steps "
                             f"({total_steps}) for 'step'")
        # Boundaries in optimizer steps, rounded down; counted from step 0 (warmup included).
        bounds = [int(b * total_steps) for b in o.step_boundaries]
        lr, factor, warmup = o.learning_rate, o.step_factor, o.warmup_steps

        def step_decay(count):
            count = jnp.asarray(count)
            passed = sum((count >= b).astype(jnp.float32) for b in bounds)
            value = lr * factor ** passed
            if warmup:
                value = jnp.where(count < warmup, lr * count / warmup, value)
            return value

        return step_decay
    if o.schedule == "warmup_cosine":
        if not o.warmup_steps < total_steps:
            raise ValueError(
                f"optim.warmup_steps: {o.warmup_steps} must be < total_steps ({total_steps}) for 'warmup_cosine'"
            )
        # optax counts decay_steps from step 0, warmup included: the cosine ends exactly at total_steps.
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=o.learning_rate,
            warmup_steps=o.warmup_steps,
            decay_steps=total_steps,
            end_value=o.learning_rate * o.end_lr_factor,
        )
    if o.warmup_steps == 0:
        return optax.constant_schedule(o.learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps), optax.constant_schedule(o.learning_rate)],
        boundaries=[o.warmup_steps],
    )


def make_schedule(cfg: OptimConfig, total_steps: int | None = None) -> optax.Schedule:
    """The learning-rate schedule step -> lr_t that `make_optimizer` uses.

    "constant": lr (after an optional linear warmup from 0 over warmup_steps).
    "warmup_cosine": linear 0 -> lr over warmup_steps, then cosine (Loshchilov & Hutter 2017, SGDR
    without restarts) down to lr * end_lr_factor at step total_steps; lr_t stays there afterwards.
    "step": lr * step_factor ** (number of boundaries b with t >= floor(b * total_steps)), the
    step decay of He et al. 2016 (0.1 at 50 % and 75 %); linear 0 -> lr over warmup_steps
    first (their ResNet-110 warmup), the boundaries still counted from step 0.
    "one_cycle": `optax.cosine_onecycle_schedule` (Smith & Topin 2019): cosine from
    lr / onecycle_div_factor up to lr over onecycle_pct_start of total_steps, then cosine down
    to lr / (onecycle_div_factor * onecycle_final_div_factor) at total_steps.

    Args:
      cfg: the optim section.
      total_steps: number of optimizer steps in the run; required by every schedule but
        "constant".

    Returns:
      An optax schedule (callable on an integer step).

    Raises:
      ValueError: invalid cfg fields, or "warmup_cosine" without a usable total_steps.
    """
    return _schedule(_typed(cfg), total_steps)


def learning_rate_at(cfg: OptimConfig, total_steps: int | None, step: int) -> float:
    """lr_t at a given optimizer step, for logging (e.g. `train/lr` once per epoch).

    Args:
      cfg: the optim section.
      total_steps: as in `make_schedule`.
      step: optimizer step count (0 for the first update).

    Returns:
      The learning rate as a Python float.
    """
    return float(make_schedule(cfg, total_steps)(step))


def add_scaled_decayed_weights(coefficient: float, mults) -> optax.GradientTransformation:
    """u += coefficient * m * w per leaf, m = mults(params) (Python floats: 0 leaves a leaf out).

    `optax.add_decayed_weights` with a per-leaf multiplier instead of a 0/1 mask: the transform
    behind `optim.wd_mults` (`ml_practical.param_groups`).
    """

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_scaled_decayed_weights: update needs params")
        m = mults(params)
        return jax.tree.map(lambda u, w, k: u + (coefficient * k) * w if k else u,
                            updates, params, m), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_leaf(mults) -> optax.GradientTransformation:
    """u *= m per leaf, m = mults(params): per-leaf learning rates (`optim.lr_mults`)."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_leaf: update needs params")
        m = mults(params)
        return jax.tree.map(lambda u, k: u * k if k != 1.0 else u, updates, m), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class PlateauState(NamedTuple):
    """Reduce-on-plateau's state: the lr multiplier, the best monitored value (as "min": a
    "max" monitor is stored negated) and the epochs since it improved."""

    scale: jax.Array
    best: jax.Array
    bad_epochs: jax.Array


def scale_by_plateau() -> optax.GradientTransformation:
    """u *= scale, scale from the state; `plateau_step` changes the state between epochs."""

    def init(params):
        return PlateauState(scale=jnp.ones((), jnp.float32),
                            best=jnp.full((), jnp.inf, jnp.float32),
                            bad_epochs=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def plateau_step(opt_state, values, cfg: OptimConfig):
    """The optimizer state after one validation: reduce-on-plateau's rule on `values`.

    torch's ReduceLROnPlateau (threshold_mode "abs", cooldown 0): with v the monitored value
    (negated for mode "max"), v < best - min_delta is an improvement (best = v, bad = 0), else
    bad += 1; when bad > patience, scale = max(scale * factor, min_scale) and bad = 0. Host-side,
    on numpy; `values` has the shape of the state's leaves (one per stacked seed, or a scalar).
    A non-finite value counts as no improvement. The new leaves keep the old ones' sharding.
    """
    o = _typed(cfg)
    sign = 1.0 if o.plateau_mode == "min" else -1.0

    def step(s: PlateauState) -> PlateauState:
        v = sign * np.asarray(values, np.float32)
        scale, best, bad = (np.asarray(jax.device_get(x)) for x in s)
        better = np.isfinite(v) & (v < best - o.plateau_min_delta)
        best = np.where(better, v, best).astype(np.float32)
        bad = np.where(better, 0, bad + 1).astype(np.int32)
        reduce = bad > o.plateau_patience
        scale = np.where(reduce, np.maximum(scale * o.plateau_factor, o.plateau_min_scale),
                         scale).astype(np.float32)
        bad = np.where(reduce, 0, bad).astype(np.int32)
        put = lambda new, old: jax.device_put(new, old.sharding) if hasattr(old, "sharding") \
            else jnp.asarray(new)
        return PlateauState(scale=put(scale, s.scale), best=put(best, s.best),
                            bad_epochs=put(bad, s.bad_epochs))

    return jax.tree.map(lambda s: step(s) if isinstance(s, PlateauState) else s, opt_state,
                        is_leaf=lambda x: isinstance(x, PlateauState))


def plateau_scale(opt_state) -> np.ndarray | None:
    """The reduce-on-plateau multiplier in an optimizer state (None when the chain has none)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PlateauState))
             if isinstance(s, PlateauState)]
    return np.asarray(jax.device_get(found[0].scale)) if found else None


def param_groups_of(cfg: OptimConfig):
    """The `param_groups.Groups` of an optim section (its wd_mults, lr_mults, freeze)."""
    from ml_practical import param_groups

    o = _typed(cfg)
    return param_groups.Groups(
        wd_rules=param_groups.parse_rules(o.wd_mults, "optim.wd_mults"),
        lr_rules=param_groups.parse_rules(o.lr_mults, "optim.lr_mults"),
        frozen=param_groups.parse_freeze(o.freeze),
        decay_default=default_mask if o.decay_mask == "kernels" else all_mask)


def make_optimizer(cfg: OptimConfig, total_steps: int | None = None, *,
                   record_clip: bool = False) -> optax.GradientTransformation:
    """Build the optax chain an optim section describes (the module docstring gives the order).

    Transforms are added only when their coefficient is non-zero, so the plain configs reduce to
    optax.sgd / optax.sgd(momentum=...) / optax.adam / optax.adamw(mask=...), step for step.

    Args:
      cfg: the optim section (`config.OptimConfig`).
      total_steps: number of optimizer steps in the run; required by schedule "warmup_cosine".
      record_clip: put `clip_recorder.recording_clip(clip, clip_value)` in the clip slot (also for
        clip "none"): the same updates, and the optimizer state then holds each step's
        `ClipRecord` (cosine to the raw gradient, whether it clipped, per-layer norms).

    Returns:
      An optax.GradientTransformation. Its `update` needs `params` whenever a decay or L1 term is on.

    Raises:
      TypeError: `cfg` is not an OptimConfig (a mapping is checked by `config.build`).
      ValueError: "warmup_cosine" without a usable total_steps.
    """
    o = _typed(cfg)
    schedule = _schedule(o, total_steps)
    mask = default_mask if o.decay_mask == "kernels" else all_mask
    groups = param_groups_of(o)

    def decay(coefficient):
        if groups.wd_rules:
            return add_scaled_decayed_weights(coefficient, groups.decay_mults)
        return optax.add_decayed_weights(coefficient, mask=mask)

    parts: list[optax.GradientTransformation] = []
    if record_clip:
        from ml_practical.clip_recorder import recording_clip
        parts.append(recording_clip(o.clip, o.clip_value))
    elif o.clip != "none":
        parts.append(clip_transform(o.clip, o.clip_value))
    if o.l2 > 0:
        parts.append(decay(o.l2))
    if o.l1 > 0 and o.l1_mode == "subgradient":
        parts.append(add_l1_subgradient(o.l1, mask=mask))
    if o.name == "momentum":
        parts.append(optax.trace(decay=o.momentum))
    elif o.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.weight_decay > 0:
        parts.append(decay(o.weight_decay))
    parts.append(optax.scale_by_learning_rate(schedule))
    if o.plateau_factor > 0:
        parts.append(scale_by_plateau())  # lr_t * scale: before the proximal step reads lr_t
    if groups.lr_rules:
        parts.append(scale_by_leaf(groups.lr_mults))
    if o.l1 > 0 and o.l1_mode == "proximal":
        parts.append(proximal_l1(o.l1, schedule, mask=mask))
    chain = optax.chain(*parts)
    if groups.frozen:
        if record_clip:
            raise ValueError("optim.freeze: the clip recorder reads the plain chain's state; "
                             "expected no frozen leaves in a run that records clipping")
        # Frozen leaves: zeros instead of their gradient, before anything else sees it, no state.
        labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train",
                                             groups.is_frozen(params))
        chain = optax.multi_transform({"train": chain, "frozen": optax.set_to_zero()}, labels)
    averages = []
    if o.ema_decay > 0:
        from ml_practical import averaging
        averages.append(averaging.param_ema(o.ema_decay))
    if o.swa_start_frac > 0:
        from ml_practical import averaging
        if total_steps is None:
            raise ValueError("optim.swa_start_frac: SWA needs total_steps (an integer)")
        averages.append(averaging.swa(max(1, int(o.swa_start_frac * total_steps)),
                                      o.swa_every_steps))
    if not averages:
        return chain
    if record_clip:
        raise ValueError("optim.ema_decay / swa_start_frac: the clip recorder reads the plain "
                         "chain's state; expected no weight averaging in a run that records "
                         "clipping")
    # Last, so that they see the step's final updates (weights = params + updates).
    return optax.chain(chain, *averages)
