"""Sharpness of a trained network: the top Hessian eigenvalue and epsilon-sharpness.

Two diagnostics of how sharp the minimum a run ended in is, for any loss over parameters and for
any saved checkpoint (`from_checkpoint`):

  * curvature: the extreme eigenvalues of the Hessian H = d^2 L / dw^2 of the loss at w, from
    Hessian-vector products H v = d/dt grad L(w + t v) at t = 0 (Pearlmutter 1994: forward-mode
    over reverse-mode, one extra gradient's cost, H never formed). `power_iteration` converges to
    the eigenvalue of largest magnitude; `lanczos` (Lanczos 1950, with full re-orthogonalization,
    as in Ghorbani et al. 2019's spectrum estimates) gives Ritz values whose largest and smallest
    converge to lambda_max and lambda_min, in fewer products.
  * epsilon-sharpness: how much the loss can rise within a small neighbourhood of w,
        max_{delta in C} L(w + delta) - L(w),
    over the L2 ball ||delta|| <= rho (the neighbourhood SAM minimizes over, Foret et al. 2021,
    eq. 1) or Keskar et al. 2017's box |delta_i| <= rho (|w_i| + 1) (their eq. 4, which also
    reports 100 (max - L) / (1 + L)). The maximum is approximated by projected gradient ascent
    from SAM's first step; each iterate is feasible, so the result is a lower bound on the true
    maximum, exact for a loss whose maximum over C is a stationary point of the ascent.

The loss of a network is taken in evaluation mode (`eval_loss_fn`): BatchNorm uses its running
statistics and dropout is off, so L is a deterministic function of the parameters being measured;
the running statistics are held fixed (they are not parameters of the minimum).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]
REGIONS = ("l2", "keskar")


def eval_loss_fn(model, variables: Mapping[str, Any], images, labels,
                 task=None) -> LossFn:
    """params -> the mean loss of `model` on (images, labels) in evaluation mode.

    Args:
      model: a flax module taking (x, train=...).
      variables: {"params": ..., "batch_stats": ...} ("batch_stats" may be absent); the running
        statistics are closed over, fixed.
      images, labels: the batch the loss is measured on.
      task: `ml_practical.tasks` task whose `objective` is the loss (default: classification
        cross entropy without label smoothing, the data term a run reports as its loss).
    """
    from ml_practical import tasks as tasks_lib

    task = tasks_lib.Classification() if task is None else task
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss(params, images, labels, others):
        logits = model.apply({"params": params, **others}, images, train=False)
        return task.objective(logits, labels)

    return DataLoss(loss, (jnp.asarray(images), jnp.asarray(labels), others))


class DataLoss:
    """params -> loss with its data kept apart: `fn(params, *data)`.

    The diagnostics below compile `fn` with the data as arguments. Closed over as constants,
    the images would be constant-folded by XLA through every convolution, which on this CPU
    took 836 s for one checkpoint instead of about 30 s. Calling it works like any loss function.
    """

    def __init__(self, fn: Callable, data: tuple):
        self.fn, self.data = fn, tuple(data)

    def __call__(self, params):
        return self.fn(params, *self.data)


def _split(loss_fn) -> tuple[Callable, tuple]:
    """(fn(params, *data), data) of a loss: a DataLoss's own, or a plain loss with no data."""
    if isinstance(loss_fn, DataLoss):
        return loss_fn.fn, loss_fn.data
    return (lambda params: loss_fn(params)), ()


def hvp(loss_fn: LossFn, params: PyTree, v: PyTree) -> PyTree:
    """The Hessian-vector product H(params) v, a pytree like `params` (forward over reverse)."""
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _flat_hvp(loss_fn: LossFn, params: PyTree) -> tuple[Callable, jax.Array]:
    flat, unravel = ravel_pytree(params)
    fn, data = _split(loss_fn)

    @jax.jit
    def product(v, w, data):
        grad = jax.grad(lambda f: fn(unravel(f), *data))
        return jax.jvp(grad, (w,), (v.astype(w.dtype),))[1]

    return (lambda v: product(v, flat, data)), flat


def _unit(key: jax.Array, like: jax.Array) -> jax.Array:
    v = jax.random.normal(key, like.shape, like.dtype)
    return v / jnp.linalg.norm(v)


def power_iteration(loss_fn: LossFn, params: PyTree, key: jax.Array, *, num_iters: int = 100,
                    tol: float = 1e-4) -> dict[str, Any]:
    """The Hessian eigenvalue of largest magnitude, by power iteration on H v.

    v_{t+1} = H v_t / ||H v_t||, lambda_t = v_t . H v_t (the Rayleigh quotient), from a unit
    Gaussian v_0; stops when |lambda_t - lambda_{t-1}| <= tol |lambda_t| or after `num_iters`.
    Converges at the rate |lambda_2 / lambda_1| per iteration; at a minimum (H positive
    semi-definite) the result is lambda_max.

    Returns:
      {"eigenvalue", "iterations", "converged", "history" (lambda_t per iteration)}.
    """
    if num_iters < 1 or not tol > 0:
        raise ValueError(f"power_iteration: num_iters {num_iters!r} >= 1 and tol {tol!r} > 0 "
                         "expected")
    matvec, flat = _flat_hvp(loss_fn, params)
    v = _unit(key, flat)
    history: list[float] = []
    converged = False
    for _ in range(num_iters):
        hv = matvec(v)
        lam = float(jnp.vdot(v, hv))
        history.append(lam)
        norm = float(jnp.linalg.norm(hv))
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(lam):
            converged = True
            break
        if norm == 0.0:  # H v = 0: v is in the null space; 0 is an eigenvalue, and the answer
            converged = True  # when v_0 had a component on every eigenvector is |lambda| = 0.
            break
        v = hv / norm
    return {"eigenvalue": history[-1], "iterations": len(history), "converged": converged,
            "history": history}


def lanczos(loss_fn: LossFn, params: PyTree, key: jax.Array, *,
            num_steps: int = 30) -> dict[str, Any]:
    """Ritz values of the Hessian from `num_steps` Lanczos steps (full re-orthogonalization).

    Builds the tridiagonal T_m = Q_m^T H Q_m on the Krylov space of a unit Gaussian q_1; its
    eigenvalues (Ritz values) approach H's extreme eigenvalues first. Each new vector is
    re-orthogonalized against all earlier ones (twice, classical Gram-Schmidt), which costs
    m vectors of memory and keeps spurious copies of converged eigenvalues out. Stops early when
    the Krylov space is invariant (beta = 0): then the Ritz values are exact eigenvalues. With m
    equal to the number of parameters the Ritz values are H's spectrum, to rounding.

    Returns:
      {"ritz_values" (ascending), "max", "min", "steps", "alpha", "beta"}.
    """
    if num_steps < 1:
        raise ValueError(f"lanczos.num_steps: {num_steps!r}; expected >= 1")
    matvec, flat = _flat_hvp(loss_fn, params)
    n = flat.size
    m = min(num_steps, n)
    q = _unit(key, flat).astype(jnp.float32)
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(m):
        w = matvec(basis[j]).astype(jnp.float32)
        alpha = float(jnp.vdot(basis[j], w))
        alphas.append(alpha)
        if j == m - 1:
            break
        qs = jnp.stack(basis)
        for _ in range(2):  # twice is enough (Kahan's "twice is enough", Parlett 1980)
            w = w - qs.T @ (qs @ w)
        beta = float(jnp.linalg.norm(w))
        if beta <= 1e-6 * max(1.0, abs(alpha)):
            break  # an invariant subspace: T's eigenvalues are eigenvalues of H
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    t = np.diag(np.asarray(alphas, np.float64))
    if k > 1:
        off = np.asarray(betas[:k - 1], np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    ritz = np.linalg.eigvalsh(t)
    return {"ritz_values": ritz.tolist(), "max": float(ritz[-1]), "min": float(ritz[0]),
            "steps": k, "alpha": alphas, "beta": betas[:k - 1]}


def _project(delta: jax.Array, bound: jax.Array | float, region: str) -> jax.Array:
    if region == "l2":
        norm = jnp.linalg.norm(delta)
        return jnp.where(norm > bound, delta * (bound / jnp.maximum(norm, 1e-30)), delta)
    return jnp.clip(delta, -bound, bound)


def epsilon_sharpness(loss_fn: LossFn, params: PyTree, rho: float, *, steps: int = 10,
                      region: str = "l2") -> dict[str, float]:
    """max over delta in C of L(w + delta) - L(w), by projected gradient ascent.

    C is the L2 ball of radius rho ("l2", SAM's neighbourhood) or the box |delta_i| <= rho
    (|w_i| + 1) ("keskar", Keskar et al. 2017). The first iterate is SAM's ascent step, the
    steepest first-order one: rho g / ||g|| in the ball, rho (|w| + 1) sign(g) in the box; each
    further step moves by the same size along the new gradient (normalized, or its sign) and
    projects back onto C. The largest loss seen is kept, so more steps never report less.

    Returns:
      {"loss": L(w), "max_loss", "sharpness": max_loss - loss, "keskar": 100 (max_loss - loss) /
      (1 + loss) (Keskar et al.'s normalization), "steps"}.
    """
    if region not in REGIONS:
        raise ValueError(f"epsilon_sharpness.region: {region!r}; expected one of {list(REGIONS)}")
    if not rho > 0 or steps < 1:
        raise ValueError(f"epsilon_sharpness: rho {rho!r} > 0 and steps {steps!r} >= 1 expected")
    flat, unravel = ravel_pytree(params)
    fn, data = _split(loss_fn)
    compiled = jax.jit(jax.value_and_grad(lambda f, data: fn(unravel(f), *data)))
    value_and_grad = lambda f: compiled(f, data)
    loss0, g = value_and_grad(flat)
    bound = rho if region == "l2" else rho * (jnp.abs(flat) + 1.0)
    delta = jnp.zeros_like(flat)
    best = float(loss0)
    for _ in range(steps):
        if region == "l2":
            gnorm = jnp.linalg.norm(g)
            if float(gnorm) == 0.0:
                break  # a stationary point of the ascent: no first-order direction up
            step = rho * g / gnorm
        else:
            step = bound * jnp.sign(g)
        delta = _project(delta + step, bound, region)
        value, g = value_and_grad(flat + delta)
        best = max(best, float(value))
    loss0 = float(loss0)
    return {"loss": loss0, "max_loss": best, "sharpness": best - loss0,
            "keskar": 100.0 * (best - loss0) / (1.0 + loss0), "steps": steps}


def from_checkpoint(workdir: str | pathlib.Path, *, which: str = "best", split: str = "train",
                    num_examples: int = 1024, rho: float = 0.05, region: str = "l2",
                    ascent_steps: int = 10, lanczos_steps: int = 20, seed: int = 0,
                    dataset=None) -> dict[str, Any]:
    """Both diagnostics for the state saved in a run's workdir (`loop.fit`'s checkpoints).

    The run's config is its config.json (the sections only: a study's own fields do not change
    what one run trained); the dataset is loaded from it unless `dataset` is given. The state
    is the best checkpoint (`which="best"`, the one the run tested) or the newest ("latest");
    the loss is measured on the first `num_examples` images of `split` ("train", "val" or
    "test"; 0 = all of them).

    Returns:
      {"epoch", "split", "num_examples", "loss", "lanczos": `lanczos`, "power": `power_iteration`,
      "epsilon": `epsilon_sharpness`}.

    Raises:
      ValueError: one line naming the workdir or the argument that is wrong.
    """
    from ml_practical import checkpointing, config as config_lib, experiment

    workdir = pathlib.Path(workdir)
    if which not in ("best", "latest"):
        raise ValueError(f"from_checkpoint.which: {which!r}; expected 'best' or 'latest'")
    if split not in ("train", "val", "test"):
        raise ValueError(f"from_checkpoint.split: {split!r}; expected 'train', 'val' or 'test'")
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{workdir}: no config.json; expected the workdir of a finished run")
    raw = json.loads(cfg_path.read_text())
    cfg = config_lib.parse({k: v for k, v in raw.items() if k in config_lib.SECTIONS})
    exp = experiment.build_experiment(cfg, dataset=dataset)
    ckpt = checkpointing.RunCheckpointer(workdir / "checkpoints", cfg)
    fresh = exp.init_state()
    try:
        if which == "latest":
            restored = ckpt.restore_latest(fresh)
        else:
            summary = workdir / "summary.json"
            best_epoch = (json.loads(summary.read_text()).get("tested_epoch")
                          if summary.is_file() else None)
            restored = ckpt.restore_best(fresh, best_epoch)
    finally:
        ckpt.close()
    if restored is None:
        raise ValueError(f"{workdir / 'checkpoints'}: no checkpoint to restore")
    state = restored.state
    x, y = {"train": (exp.dataset.train_x, exp.dataset.train_y),
            "val": (exp.dataset.val_x, exp.dataset.val_y),
            "test": (exp.dataset.test_x, exp.dataset.test_y)}[split]
    if num_examples:
        x, y = x[:num_examples], y[:num_examples]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    loss_fn = eval_loss_fn(cfg.model, variables, jnp.asarray(x), jnp.asarray(y))
    key_l, key_p = jax.random.split(jax.random.PRNGKey(seed))
    params = jax.device_get(state.params)
    out = {"epoch": restored.epoch, "split": split, "num_examples": int(len(y)),
           "loss": float(loss_fn(params)),
           "lanczos": lanczos(loss_fn, params, key_l, num_steps=lanczos_steps),
           "power": power_iteration(loss_fn, params, key_p),
           "epsilon": epsilon_sharpness(loss_fn, params, rho, steps=ascent_steps,
                                        region=region)}
    if not math.isfinite(out["loss"]):
        raise ValueError(f"{workdir}: the restored state's loss is {out['loss']}; "
                         "nothing to measure")
    return out
