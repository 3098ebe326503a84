"""TrainState, the pure train and eval steps, and the compiled epoch and evaluation scans.

The shape follows nanodo / the flax examples: a `TrainState` pytree, a pure `train_step` that is
jitted once (inside a `lax.scan` over an epoch's batches) and metrics that reach the host once per
epoch. Nothing in the steps talks to the host (no callbacks, no Python state), so the same code runs
sharded over a device mesh. What the outputs mean is the `tasks` object's business; the loop that
drives these pieces is `ml_practical.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ml_practical import distributed, losses
from ml_practical import tasks as tasks_lib

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes; a pytree, so it jits, shards and checkpoints.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: the model's "params" collection.
      batch_stats: BatchNorm running statistics ({} for models without BatchNorm).
      opt_state: the optax state.
      key: the run's base PRNG key; per-step keys are `fold_in(key, step)`, never split in place,
        so the randomness of step s is the same whether or not the run was resumed.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    key: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                       input_shape: tuple[int, ...]) -> TrainState:
    """Initializes the model on a dummy batch of `input_shape` (without the batch axis)."""
    init_key, train_key = jax.random.split(key)
    variables = model.init({"params": init_key}, jnp.zeros((2, *input_shape), jnp.float32),
                           train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), key=train_key)


@dataclasses.dataclass(frozen=True)
class SAM:
    """Sharpness-aware minimization inside `train_step` (`config.OptimConfig.sam_*`).

    Attributes:
      rho: the neighbourhood radius (> 0).
      adaptive: ASAM's scaled neighbourhood instead of SAM's ball.
      eta: ASAM's offset in T_w = |w| + eta.
    """

    rho: float
    adaptive: bool = False
    eta: float = 0.01

    def __post_init__(self):
        if not self.rho > 0 or not self.eta >= 0:
            raise ValueError(f"SAM: rho {self.rho}, eta {self.eta}; expected rho > 0 and "
                             "eta >= 0 (no SAM: pass sam=None)")

    @classmethod
    def from_config(cls, optim_cfg) -> SAM | None:
        """The `optim.sam_*` fields of a config's `OptimConfig`; None when sam_rho is 0 (off)."""
        if not optim_cfg.sam_rho:
            return None
        return cls(rho=float(optim_cfg.sam_rho), adaptive=bool(optim_cfg.sam_adaptive),
                   eta=float(optim_cfg.sam_eta))


def sam_perturbation(grads: PyTree, params: PyTree, sam: SAM) -> PyTree:
    """The ascent step eps(w) of SAM or ASAM, over the whole gradient pytree.

    SAM (Foret et al. 2021, eq. 2 with p = 2): eps = rho g / ||g||_2.
    ASAM (Kwon et al. 2021, Algorithm 1): eps = rho T^2 g / ||T g||_2, T = |w| + eta elementwise,
    so ||T^-1 eps||_2 = rho: the radius is measured relative to each weight's size.

    A zero (scaled) gradient gives eps = 0 instead of 0/0. A non-finite gradient gives a
    non-finite eps, which the caller's guard catches in the second gradient.

    Args:
      grads: the gradient g at w.
      params: w (ASAM's T; unused by SAM).
      sam: rho, adaptive, eta.

    Returns:
      eps, a pytree like `params`.

    References:
      Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
      Generalization", ICLR 2021. Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware
      Minimization for Scale-Invariant Learning of Deep Neural Networks", ICML 2021.
    """
    if sam.adaptive:
        t = jax.tree.map(lambda w: jnp.abs(w) + sam.eta, params)
        tg = jax.tree.map(jnp.multiply, t, grads)
        norm = optax.tree.norm(tg)
        direction = jax.tree.map(jnp.multiply, t, tg)  # T^2 g
    else:
        norm = optax.tree.norm(grads)
        direction = grads
    scale = jnp.where(norm > 0, sam.rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda d: (scale * d).astype(d.dtype), direction)


# fold_in tag of the label-mixing key: a step's dropout and augmentation keys stay the ones of
# the same step without mixing.
MIX_KEY_TAG = 0x4D4958

StepMetrics = Callable[["TrainState", "TrainState", Mapping[str, jax.Array]], Mapping[str, Any]]


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, task: tasks_lib.Task | None = None,
               augment_fn: Callable | None = None, skip_nonfinite: bool = True,
               step_metrics: StepMetrics | None = None, grad_accum_steps: int = 1,
               unroll: bool = False, sam: SAM | None = None,
               mix_fn: Callable | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. Pure: the new state and the step's metrics are its only outputs.

    Clipping, L2 / weight decay and L1 live in `tx`, never in the loss. With `skip_nonfinite`, a
    step whose loss or gradients are not finite leaves params, batch statistics and optimizer state
    as they were (a `lax.cond`, no host sync); only `step` advances, so the next batch gets a fresh
    dropout key and `metrics["skipped"]` counts it. `metrics["nonfinite"]` flags such a step in
    either mode, which is what `replay_if_nonfinite` uses to run epochs unguarded and replay the
    rare epoch that needs the guard.

    Args:
      state: the train state before the step.
      batch: {"image": inputs, "label": labels} of one global batch.
      model, tx: the model and the optax chain.
      task: what the outputs mean (`tasks`); default: classification without smoothing.
      augment_fn: `(key, images) -> images` applied on device before the forward pass.
      skip_nonfinite: the inline guard (above).
      step_metrics: `(old_state, new_state, metrics) -> {name: array}`, extra per-step metrics
        computed inside the compiled step (e.g. `clip_recorder.step_metrics`).
      grad_accum_steps: k >= 1. With k > 1 the batch of N rows (the gradient batch) is cut into k
        micro-batches of N/k rows, micro-batch i being rows i, i+k, i+2k, ... (strided, so a
        batch sharded over devices keeps every device busy in every micro-batch). They run one
        after the other (a `lax.scan`; the memory of one micro-batch) and the optimizer sees the
        mean of their gradients: the gradient of the batch's mean objective, up to float32
        summation order, when nothing in the model couples the rows. BatchNorm does couple them:
        its statistics are those of a micro-batch (the device batch), and its running statistics
        move once per micro-batch, in order, as in PyTorch's accumulation loops. Dropout draws
        key fold_in(step key, i) for micro-batch i; the augmentation runs once on the whole
        batch, before the cut. The step's loss and accuracy are over all N rows.
      unroll: unroll the micro-batch scan (`config.TrainConfig.unroll`: XLA:CPU's slow
        convolutions inside while loops).
      sam: sharpness-aware minimization (Foret et al. 2021; ASAM, Kwon et al. 2021), or None.
        The step then makes two forward/backward passes on the same (augmented) batch with the
        same dropout key, so that the second gradient differs from the first only through the
        weights (the paper's g at w + eps for the same mini-batch sample):
          1. at w: the gradient g, the step's loss, accuracy and "grad_norm", and the new
             BatchNorm running statistics;
          2. at w + eps, eps = `sam_perturbation(g, w, sam)`: the gradient that `tx` gets
             (clipping, L2 and decay stay in `tx` and act on it). This pass's BatchNorm uses its
             own batch statistics, as a training pass does, but its running-statistics update
             is discarded: running statistics taken at the perturbed weights would describe a
             network that is never evaluated, and moving them twice per step would shorten
             their average's memory (momentum m becoming m^2 per step): the known SAM +
             BatchNorm pitfall.
        The guard covers both passes: a non-finite loss or gradient in either flags the step
        ("nonfinite") and, with `skip_nonfinite`, skips it. With `grad_accum_steps` k > 1 the
        perturbation is the batch's: eps comes from the mean gradient over all k micro-batches
        and the second pass runs the same k micro-batches (same rows, same keys) at w + eps, so
        the step is SAM on the whole gradient batch, equal to k = 1 when nothing couples the
        rows (not per-micro-batch SAM, whose eps would change with k). Adds the metric
        "sam_grad_norm" (the norm of the gradient at w + eps).
      mix_fn: label mixing (`augment.label_mixer`): `(key, images, labels) -> (images, soft
        targets)`, applied after `augment_fn` with the key fold_in(step key, MIX_KEY_TAG) (the
        dropout and augmentation keys are those of a step without it). The objective is then
        `task.soft_objective` on the mixed targets, and the step's "loss" is the unsmoothed
        cross entropy against them; "accuracy" is against the batch's own labels. With
        grad_accum_steps k > 1 the whole gradient batch is mixed once, before the cut (as the
        augmentation is: partners come from the whole batch), and the micro-batches carry their
        rows' soft targets, so the step equals k = 1 when nothing couples the rows.

    Returns:
      (new state, metrics): the task's metrics ("loss", maybe "accuracy"), "objective",
      "grad_norm" (of the raw gradient at w), "skipped", "nonfinite", with `sam`
      "sam_grad_norm", and `step_metrics`' entries.
    """
    task = tasks_lib.Classification() if task is None else task
    step_key = jax.random.fold_in(state.key, state.step)
    dropout_key, augment_key = jax.random.split(step_key)
    images = batch["image"]
    if augment_fn is not None:
        images = augment_fn(augment_key, images)
    targets = None
    if mix_fn is not None:
        images, targets = mix_fn(jax.random.fold_in(step_key, MIX_KEY_TAG), images,
                                 batch["label"])
    # What the objective compares the logits with: the labels, or the mixed soft targets.
    fit_to, objective_fn = ((batch["label"], task.objective) if targets is None
                            else (targets, task.soft_objective))

    def loss_fn(params):
        logits, new_vars = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        return objective_fn(logits, fit_to), (logits, new_vars)

    def gradient(params):
        if grad_accum_steps == 1:
            (objective, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params)
            return objective, logits, new_vars, grads
        return _accumulated_grads(params, state.batch_stats, images, fit_to, model,
                                  objective_fn, dropout_key, grad_accum_steps, unroll)

    objective, logits, new_vars, grads = gradient(state.params)
    grad_norm = optax.tree.norm(grads)
    # The global norm is finite iff every gradient entry is (an overflowing sum of squares also
    # counts as non-finite), so one scalar decides.
    ok = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    sam_metrics = {}
    if sam is not None:
        eps = sam_perturbation(grads, state.params, sam)
        # Only the objective and gradient of the second pass are used: its logits and its
        # BatchNorm running statistics are dropped (see the docstring), and jit prunes them.
        sam_objective, _, _, grads = gradient(jax.tree.map(jnp.add, state.params, eps))
        sam_grad_norm = optax.tree.norm(grads)
        ok = ok & jnp.isfinite(sam_objective) & jnp.isfinite(sam_grad_norm)
        sam_metrics = {"sam_grad_norm": sam_grad_norm}

    def apply(_):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return (optax.apply_updates(state.params, updates),
                new_vars.get("batch_stats", state.batch_stats), opt_state)

    if skip_nonfinite:
        # `lax.cond` runs the optimizer only on good steps instead of selecting between old and
        # new copies of every leaf afterwards (a `jnp.where` over params and Adam moments costs
        # more; see benchmarks/README.md).
        new_params, new_batch_stats, new_opt_state = jax.lax.cond(
            ok, apply, lambda _: (state.params, state.batch_stats, state.opt_state), None)
        skipped = (~ok).astype(jnp.float32)
    else:
        new_params, new_batch_stats, new_opt_state = apply(None)
        skipped = jnp.zeros((), jnp.float32)

    task_metrics = task.train_metrics(logits, batch["label"])
    if targets is not None:  # the data term of what was trained on: the mixed targets
        task_metrics = {**task_metrics, "loss": losses.soft_cross_entropy(logits, targets)}
    metrics = {
        "loss": task_metrics["loss"],
        "objective": objective,
        **{k: v for k, v in task_metrics.items() if k != "loss"},
        "grad_norm": grad_norm,
        **sam_metrics,
        "skipped": skipped,
        "nonfinite": (~ok).astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=new_params,
                              batch_stats=new_batch_stats, opt_state=new_opt_state)
    if step_metrics is not None:
        metrics.update(step_metrics(state, new_state, metrics))
    return new_state, metrics


def _accumulated_grads(params: PyTree, batch_stats: PyTree, images: jax.Array,
                       targets: jax.Array, model: nn.Module, objective_fn: Callable,
                       dropout_key: jax.Array, k: int, unroll: bool):
    """`train_step`'s gradient at `params` over k strided micro-batches (its `grad_accum_steps`).

    `batch_stats` are the running statistics before the step; `targets` are one row per image
    (integer labels, or mixed soft targets of shape (N, C)), cut with the images, and
    `objective_fn(logits, targets)` the per-micro-batch mean objective (`task.objective` or
    `task.soft_objective`). Returns (mean objective, logits in the batch's row order,
    {"batch_stats": after the last micro-batch}, mean gradient).
    """
    n = images.shape[0]
    if n % k:
        raise ValueError(f"train.grad_accum_steps: {k} does not divide the batch of {n} rows")

    def cut(a):  # (N, ...) -> (k, N/k, ...), micro-batch i = rows i::k
        return jnp.swapaxes(a.reshape(n // k, k, *a.shape[1:]), 0, 1)

    def micro(carry, inputs):
        grad_sum, objective_sum, batch_stats = carry
        i, x, y = inputs

        def loss_fn(params):
            logits, new_vars = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True,
                rngs={"dropout": jax.random.fold_in(dropout_key, i)}, mutable=["batch_stats"])
            return objective_fn(logits, y), (logits, new_vars)

        (objective, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params)
        carry = (jax.tree.map(jnp.add, grad_sum, grads), objective_sum + objective,
                 new_vars.get("batch_stats", batch_stats))
        return carry, logits

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, objective_sum, batch_stats), logits = jax.lax.scan(
        micro, (zeros, jnp.zeros((), jnp.float32), batch_stats),
        (jnp.arange(k), cut(images), cut(targets)), unroll=unroll)
    logits = jnp.swapaxes(logits, 0, 1).reshape(n, *logits.shape[2:])  # back to row order
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    return objective_sum / k, logits, {"batch_stats": batch_stats}, grads


def eval_step(params: PyTree, batch_stats: PyTree, batch: Mapping[str, jax.Array], *,
              model: nn.Module, task: tasks_lib.Task | None = None) -> dict[str, jax.Array]:
    """The task's sums (not means) over the valid rows of `batch` (weight 1; padding has 0)."""
    task = tasks_lib.Classification() if task is None else task
    logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                         train=False)
    return task.eval_sums(logits, batch["label"], batch["weight"])


# ------------------------------------------------------------------------------------------------
# Compiled epoch functions.


def make_train_epoch(model: nn.Module, tx: optax.GradientTransformation, *,
                     task: tasks_lib.Task | None = None, augment_fn: Callable | None = None,
                     skip_nonfinite: bool = True, mesh: Mesh | None = None,
                     donate: bool = True, gather: bool = True,
                     step_metrics: StepMetrics | None = None, unroll: bool = False,
                     grad_accum_steps: int = 1, sam: SAM | None = None,
                     mix_fn: Callable | None = None) -> Callable:
    """Returns `train_epoch(state, images, labels, batch_idx) -> (state, metrics)`, jitted once.

    `images`/`labels` are the device-resident training set and `batch_idx` an int32 array of shape
    (num_batches, batch_size); the epoch is one `lax.scan` over its rows. Per-step metrics come back
    as arrays of length num_batches (a few KiB), so the host syncs once per epoch. With `donate`
    the state buffer is donated (the epoch updates it in place); `replay_if_nonfinite` keeps it
    instead, to be able to replay the epoch. `task`, `augment_fn`, `skip_nonfinite`,
    `step_metrics`, `grad_accum_steps`, `sam` and `mix_fn` are `train_step`'s.

    With `gather=False` it returns `train_chunk(state, images, labels)` instead, a scan over batches
    already gathered on the host (images (K, batch, ...), labels (K, batch)): the unit of work of
    the host-resident input pipeline (`input_pipeline.make_streamed_epoch`). Both scans run the
    same body on the same rows, so the two placements compute the same steps.

    `unroll=True` unrolls the scan (`config.TrainConfig.unroll`: XLA:CPU's slow convolutions in
    while loops); meant for short scans: the chunks of `gather=False`, or an epoch cut by
    `in_chunks`.
    """
    step = functools.partial(train_step, model=model, tx=tx, task=task, augment_fn=augment_fn,
                             skip_nonfinite=skip_nonfinite, step_metrics=step_metrics,
                             grad_accum_steps=grad_accum_steps, unroll=unroll, sam=sam,
                             mix_fn=mix_fn)
    batch_sharding = None if mesh is None else NamedSharding(mesh, P("data"))

    def body(state, batch):
        if batch_sharding is not None:
            # Each device computes on its slice of the global batch; BatchNorm's means over
            # the batch axis become all-reduces, i.e. synchronised BatchNorm.
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return step(state, batch)

    def train_epoch(state, images, labels, batch_idx):
        return jax.lax.scan(
            lambda state, idx: body(state, {"image": images[idx], "label": labels[idx]}),
            state, batch_idx, unroll=unroll)

    def train_chunk(state, images, labels):
        return jax.lax.scan(body, state, {"image": images, "label": labels}, unroll=unroll)

    return jax.jit(train_epoch if gather else train_chunk, donate_argnums=(0,) if donate else ())


def in_chunks(epoch_fn: Callable, chunk_steps: int) -> Callable:
    """`epoch_fn(state, images, labels, batch_idx)` run over chunks of `chunk_steps` steps.

    For `train.unroll` with a device-resident training set (and the vmapped seeds): an unrolled
    epoch-long scan would compile every step of the epoch, so the epoch's batch-index rows
    (axis -2 of `batch_idx`: (num_batches, batch) or, vmapped, (S, num_batches, batch)) are cut
    into chunks, each one call of the same compiled unrolled function (a shorter last chunk
    compiles once more). The steps, their order and their keys are the epoch's (keys fold in
    the state's step counter); the per-step metrics are concatenated back along the steps axis.
    """
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps: {chunk_steps}; expected an integer >= 1")

    def run(state, images, labels, batch_idx):
        axis = batch_idx.ndim - 2
        n = batch_idx.shape[axis]
        parts = []
        for start in range(0, n, chunk_steps):
            rows = jax.lax.slice_in_dim(batch_idx, start, min(start + chunk_steps, n), axis=axis)
            state, metrics = epoch_fn(state, images, labels, rows)
            parts.append(metrics)
        return state, jax.tree.map(lambda *a: jnp.concatenate(a, axis=axis), *parts)

    return run


def replay_if_nonfinite(fast_epoch: Callable, guarded_epoch: Callable | None, state: TrainState,
                        *args) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Runs one epoch optimistically, replaying it with the non-finite guard only if it needs it.

    `fast_epoch` is `make_train_epoch(..., skip_nonfinite=False, donate=False)` and
    `guarded_epoch` the same with `skip_nonfinite=True` (None: no guard, `fast_epoch` may donate).
    Non-finite steps are rare, and a guard inside every step (a `lax.cond` on the gradient norm)
    has a cost (benchmarks/README.md), so the epoch first runs unguarded from a kept copy of `state`; if any
    step flagged `nonfinite`, the whole epoch is run again from that copy with the guard. The
    result is exactly the guarded epoch's whenever a skip was needed, and the unguarded one's
    (the same arithmetic) otherwise. Returns the new state and the per-step metrics on the host.
    """
    new_state, metrics = fast_epoch(state, *args)
    metrics = jax.device_get(metrics)
    if guarded_epoch is not None and np.any(metrics["nonfinite"]):
        new_state, metrics = guarded_epoch(state, *args)
        metrics = jax.device_get(metrics)
    return new_state, metrics


def make_split_sums(model: nn.Module, batch_size: int, mesh: Mesh | None = None,
                    task: tasks_lib.Task | None = None, unroll: bool = False) -> Callable:
    """Returns `split_sums(params, batch_stats, images, labels, weights)`, not jitted.

    A scan of `eval_step` over the batches of a padded split (see `put_split`), summing the task's
    sums (loss, correct predictions, row count). `make_evaluate` jits it; `multiseed` vmaps it.
    """
    task = tasks_lib.Classification() if task is None else task
    step = functools.partial(eval_step, model=model, task=task)
    batch_sharding = None if mesh is None else NamedSharding(mesh, P("data"))

    def split_sums(params, batch_stats, images, labels, weights):
        n = images.shape[0] // batch_size

        def body(carry, i):
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size)
            batch = {"image": sl(images), "label": sl(labels), "weight": sl(weights)}
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            out = step(params, batch_stats, batch)
            return jax.tree.map(jnp.add, carry, out), None

        first = {"image": images[:batch_size], "label": labels[:batch_size],
                 "weight": weights[:batch_size]}
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                            jax.eval_shape(step, params, batch_stats, first))
        sums, _ = jax.lax.scan(body, zero, jnp.arange(n), unroll=unroll)
        return sums

    return split_sums


def make_evaluate(model: nn.Module, batch_size: int, mesh: Mesh | None = None,
                  task: tasks_lib.Task | None = None, unroll: bool = False) -> Callable:
    """Returns `evaluate(params, batch_stats, split) -> {"loss", "accuracy"}` over a whole split.

    A split is padded once to a multiple of `batch_size` with weight-0 rows (see `put_split`), so
    every batch has one shape and the function compiles once per split shape. The means are
    `tasks.finalize` of the sums ("accuracy" only for tasks that count correct predictions).
    """
    _evaluate = jax.jit(make_split_sums(model, batch_size, mesh, task, unroll=unroll))

    def evaluate(params, batch_stats, split):
        return tasks_lib.finalize(jax.device_get(_evaluate(params, batch_stats, *split)))

    return evaluate


def put_split(x: np.ndarray, y: np.ndarray, batch_size: int,
              sharding: jax.sharding.Sharding | None = None) -> tuple[jax.Array, ...]:
    """Pads a split to a multiple of `batch_size` (weight-0 rows) and puts it on device.

    The arrays are global (`distributed.put_global`): with several processes each one, holding the
    whole split, fills the shards of its own devices.
    """
    n = len(x)
    padded = -(-n // batch_size) * batch_size
    pad = padded - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)]) if pad else y
    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return tuple(distributed.put_global(a, sharding) for a in (xp, yp, w))


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over the first `num_devices` devices (default: all).

    With several processes the mesh spans the devices of all of them (`jax.devices()` lists them
    process by process, so each process holds one contiguous block of every batch), and
    `num_devices` must be 0 / None or the total: every process needs devices in the mesh.
    """
    devices = jax.devices()
    if num_devices and jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(f"train.num_devices: {num_devices}, but a run of {jax.process_count()} "
                         f"processes uses all {len(devices)} devices; use 0 (all)")
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"train.num_devices: {num_devices} requested, {len(devices)} available")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def summarize_epoch(step_metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means of the task's per-step metrics over the steps that were not skipped.

    Returns:
      {"train/skipped_steps", "train/loss", "train/objective", ["train/accuracy"], "grad_norm",
      ["sam_grad_norm"]}; extra per-step metrics (`step_metrics`) are not averaged here.
    """
    skipped = np.asarray(step_metrics["skipped"])
    ok = skipped == 0
    out = {"train/skipped_steps": int(skipped.sum())}
    for name in ("loss", "objective", "accuracy", "grad_norm", "sam_grad_norm"):
        if name not in step_metrics:  # "accuracy": tasks that count correct predictions; SAM
            continue
        values = np.asarray(step_metrics[name])[ok]
        # grad_norm: mean global L2 norm of the raw (pre-clipping) gradient over the epoch.
        key = name if name.endswith("grad_norm") else f"train/{name}"
        out[key] = float(values.mean()) if values.size else float("nan")
    return out


def trailing_run(skipped: np.ndarray, previous: int) -> tuple[int, int]:
    """(longest run of consecutive skipped steps, run still open at the end), across epochs."""
    longest, run = 0, previous
    for s in np.asarray(skipped):
        run = run + 1 if s else 0
        longest = max(longest, run)
    return longest, run
