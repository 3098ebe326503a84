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

Every decay/penalty uses the project's mask (cfg.optim.decay_mask: "kernels" = leaves named
"kernel", `ml_practical.losses.default_mask`; "all" = every leaf).

cfg.optim fields (defaults in `OPTIM_DEFAULTS`; `name` and `learning_rate` are required):
  name            "sgd" | "momentum" | "adam" | "adamw"; "adamw" is Adam plus the `weight_decay`
                  field (it adds no decay of its own; "adam" with weight_decay > 0 is the same chain)
  learning_rate   peak learning rate > 0
  momentum        0.9, for "momentum" only; torch-style (dampening 0): v = g + m v, step -lr v
  b1, b2, eps     0.9, 0.999, 1e-8, for "adam"/"adamw"
  schedule        "constant" | "warmup_cosine"; both warm up linearly from 0 over warmup_steps
  warmup_steps    0
  end_lr_factor   0.0; warmup_cosine ends at learning_rate * end_lr_factor
  clip            "none" | "value" | "global_norm"
  clip_value      1.0 (tau), > 0
  l2              0.0, coupled L2 coefficient (gradient l2 * w)
  weight_decay    0.0, decoupled decay coefficient (step -lr_t * weight_decay * w)
  l1              0.0, L1 coefficient (penalty l1 * sum |w|)
  l1_mode         "subgradient" | "proximal"
  decay_mask      "kernels" | "all"
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ml_practical.losses import Mask, all_mask, default_mask, mask_tree

OPTIMIZERS = ("adam", "adamw", "momentum", "sgd")
SCHEDULES = ("constant", "warmup_cosine")
CLIPS = ("global_norm", "none", "value")
L1_MODES = ("proximal", "subgradient")
DECAY_MASKS = ("all", "kernels")

# Defaults for every optional cfg.optim field; experiments/configs should still spell them out.
OPTIM_DEFAULTS: dict[str, Any] = {
    "momentum": 0.9,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "schedule": "constant",
    "warmup_steps": 0,
    "end_lr_factor": 0.0,
    "clip": "none",
    "clip_value": 1.0,
    "l2": 0.0,
    "weight_decay": 0.0,
    "l1": 0.0,
    "l1_mode": "subgradient",
    "decay_mask": "kernels",
}
_REQUIRED = ("name", "learning_rate")
_FIELDS = _REQUIRED + tuple(OPTIM_DEFAULTS)

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------- custom transforms


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
    """

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
    """

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


# --------------------------------------------------------------------------- config


class _Optim(NamedTuple):
    name: str
    learning_rate: float
    momentum: float
    b1: float
    b2: float
    eps: float
    schedule: str
    warmup_steps: int
    end_lr_factor: float
    clip: str
    clip_value: float
    l2: float
    weight_decay: float
    l1: float
    l1_mode: str
    decay_mask: str


def _get(cfg: Any, field: str) -> Any:
    missing = object()
    value = cfg.get(field, missing) if hasattr(cfg, "get") else getattr(cfg, field, missing)
    if value is missing:
        if field in _REQUIRED:
            raise ValueError(f"optim.{field}: missing; it is required")
        return OPTIM_DEFAULTS[field]
    return value


def _choice(cfg: Any, field: str, allowed: tuple[str, ...]) -> str:
    value = _get(cfg, field)
    if value not in allowed:
        raise ValueError(f"optim.{field}: unknown {value!r}; expected one of {sorted(allowed)}")
    return value


def _number(cfg: Any, field: str, *, low: float, high: float = float("inf"), low_open: bool = False,
            high_open: bool = False, expected: str) -> float:
    value = _get(cfg, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"optim.{field}: {value!r} is not a number; expected {expected}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or value != value:
        raise ValueError(f"optim.{field}: {value!r} out of range; expected {expected}")
    return value


def _read(cfg: Any) -> _Optim:
    """Validate cfg.optim (ConfigDict, dict, or any object with attributes) into a typed record."""
    if hasattr(cfg, "keys"):
        unknown = sorted(set(cfg.keys()) - set(_FIELDS))
        if unknown:
            raise ValueError(f"optim: unknown field(s) {unknown}; expected fields {sorted(_FIELDS)}")
    warmup = _get(cfg, "warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise ValueError(f"optim.warmup_steps: {warmup!r}; expected an integer >= 0")
    return _Optim(
        name=_choice(cfg, "name", OPTIMIZERS),
        learning_rate=_number(cfg, "learning_rate", low=0.0, low_open=True, expected="learning_rate > 0"),
        momentum=_number(cfg, "momentum", low=0.0, high=1.0, high_open=True, expected="0 <= momentum < 1"),
        b1=_number(cfg, "b1", low=0.0, high=1.0, high_open=True, expected="0 <= b1 < 1"),
        b2=_number(cfg, "b2", low=0.0, high=1.0, high_open=True, expected="0 <= b2 < 1"),
        eps=_number(cfg, "eps", low=0.0, low_open=True, expected="eps > 0"),
        schedule=_choice(cfg, "schedule", SCHEDULES),
        warmup_steps=int(warmup),
        end_lr_factor=_number(cfg, "end_lr_factor", low=0.0, high=1.0, expected="0 <= end_lr_factor <= 1"),
        clip=_choice(cfg, "clip", CLIPS),
        clip_value=_number(cfg, "clip_value", low=0.0, low_open=True, expected="clip_value > 0"),
        l2=_number(cfg, "l2", low=0.0, expected="l2 >= 0"),
        weight_decay=_number(cfg, "weight_decay", low=0.0, expected="weight_decay >= 0"),
        l1=_number(cfg, "l1", low=0.0, expected="l1 >= 0"),
        l1_mode=_choice(cfg, "l1_mode", L1_MODES),
        decay_mask=_choice(cfg, "decay_mask", DECAY_MASKS),
    )


# --------------------------------------------------------------------------- schedule and chain


def _schedule(o: _Optim, total_steps: int | None) -> optax.Schedule:
    if o.schedule == "warmup_cosine":
        if total_steps is None or isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
            raise ValueError(
                f"optim.schedule: 'warmup_cosine' needs total_steps (an integer), got {total_steps!r}"
            )
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


def make_schedule(cfg: Any, total_steps: int | None = None) -> optax.Schedule:
    """The learning-rate schedule step -> lr_t that `make_optimizer` uses.

    "constant": lr (after an optional linear warmup from 0 over warmup_steps).
    "warmup_cosine": linear 0 -> lr over warmup_steps, then cosine (Loshchilov & Hutter 2017, SGDR
    without restarts) down to lr * end_lr_factor at step total_steps; lr_t stays there afterwards.

    Args:
      cfg: cfg.optim (ConfigDict, dict or attribute object); see the module docstring.
      total_steps: number of optimizer steps in the run; required by "warmup_cosine".

    Returns:
      An optax schedule (callable on an integer step).

    Raises:
      ValueError: invalid cfg fields, or "warmup_cosine" without a usable total_steps.
    """
    return _schedule(_read(cfg), total_steps)


def learning_rate_at(cfg: Any, total_steps: int | None, step: int) -> float:
    """lr_t at a given optimizer step, for logging (e.g. `train/lr` once per epoch).

    Args:
      cfg: cfg.optim.
      total_steps: as in `make_schedule`.
      step: optimizer step count (0 for the first update).

    Returns:
      The learning rate as a Python float.
    """
    return float(make_schedule(cfg, total_steps)(step))


def make_optimizer(cfg: Any, total_steps: int | None = None) -> optax.GradientTransformation:
    """Build the optax chain described by cfg.optim (see the module docstring for order and fields).

    Transforms are added only when their coefficient is non-zero, so the plain configs reduce to
    optax.sgd / optax.sgd(momentum=...) / optax.adam / optax.adamw(mask=...), step for step.

    Args:
      cfg: cfg.optim (ConfigDict, dict or attribute object).
      total_steps: number of optimizer steps in the run; required by schedule "warmup_cosine".

    Returns:
      An optax.GradientTransformation. Its `update` needs `params` whenever a decay or L1 term is on.

    Raises:
      ValueError: naming the bad field and its allowed values.
    """
    o = _read(cfg)
    schedule = _schedule(o, total_steps)
    mask = default_mask if o.decay_mask == "kernels" else all_mask

    parts: list[optax.GradientTransformation] = []
    if o.clip == "value":
        parts.append(optax.clip(o.clip_value))
    elif o.clip == "global_norm":
        parts.append(optax.clip_by_global_norm(o.clip_value))
    if o.l2 > 0:
        parts.append(optax.add_decayed_weights(o.l2, mask=mask))
    if o.l1 > 0 and o.l1_mode == "subgradient":
        parts.append(add_l1_subgradient(o.l1, mask=mask))
    if o.name == "momentum":
        parts.append(optax.trace(decay=o.momentum))
    elif o.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    if o.l1 > 0 and o.l1_mode == "proximal":
        parts.append(proximal_l1(o.l1, schedule, mask=mask))
    return optax.chain(*parts)
