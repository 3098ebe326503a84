"""TrainState, the pure train and eval steps, one-scan epochs, and `fit(cfg, workdir)`.

The shape follows nanodo / the flax examples: a `TrainState` pytree, a pure `train_step` that is
jitted once (inside a `lax.scan` over an epoch's batches), metrics that reach the host once per
epoch, and a thin driver (`fit`) that owns the files of a run. Nothing in the steps talks to the host
(no callbacks, no Python state), so the same code runs sharded over a device mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ml_practical import augment as augment_lib
from ml_practical import data as data_lib
from ml_practical import diagnostics
from ml_practical import distributed
from ml_practical import input_pipeline
from ml_practical import losses, models, optim
from ml_practical import run_files

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


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, label_smoothing: float = 0.0,
               augment_fn: Callable | None = None,
               skip_nonfinite: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. Pure: the new state and the step's metrics are its only outputs.

    Clipping, L2 / weight decay and L1 live in `tx`, never in the loss. With `skip_nonfinite`, a
    step whose loss or gradients are not finite leaves params, batch statistics and optimizer state
    as they were (a `lax.cond`, no host sync); only `step` advances, so the next batch gets a fresh
    dropout key and `metrics["skipped"]` counts it. `metrics["nonfinite"]` flags such a step in
    either mode; `fit` runs epochs unguarded and replays the rare epoch that has one guarded
    (`run_epoch`), because the guard inside the step costs 8% of it on CPU.
    """
    step_key = jax.random.fold_in(state.key, state.step)
    dropout_key, augment_key = jax.random.split(step_key)
    images = batch["image"]
    if augment_fn is not None:
        images = augment_fn(augment_key, images)

    def loss_fn(params):
        logits, new_vars = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        objective = losses.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
        return objective, (logits, new_vars)

    (objective, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)

    def apply(_):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return (optax.apply_updates(state.params, updates),
                new_vars.get("batch_stats", state.batch_stats), opt_state)

    # The global norm is finite iff every gradient entry is (an overflowing sum of squares also
    # counts as non-finite), so one scalar decides.
    ok = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        # `lax.cond` runs the optimizer only on good steps instead of selecting between old and
        # new copies of every leaf afterwards (a `jnp.where` over params + Adam moments cost 12%
        # of the step on CPU; the cond still costs 8%, hence `run_epoch`'s replay).
        new_params, new_batch_stats, new_opt_state = jax.lax.cond(
            ok, apply, lambda _: (state.params, state.batch_stats, state.opt_state), None)
        skipped = (~ok).astype(jnp.float32)
    else:
        new_params, new_batch_stats, new_opt_state = apply(None)
        skipped = jnp.zeros((), jnp.float32)

    metrics = {
        # The data term without smoothing: comparable with val/loss and test/loss (NLL).
        "loss": losses.cross_entropy(logits, batch["label"]),
        "objective": objective,
        "accuracy": losses.accuracy(logits, batch["label"]),
        "grad_norm": grad_norm,
        "skipped": skipped,
        "nonfinite": (~ok).astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=new_params,
                              batch_stats=new_batch_stats, opt_state=new_opt_state)
    return new_state, metrics


def eval_step(params: PyTree, batch_stats: PyTree, batch: Mapping[str, jax.Array], *,
              model: nn.Module) -> dict[str, jax.Array]:
    """Sums (not means) of loss and correct predictions over the valid rows of `batch`."""
    logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                         train=False)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1)[:, 0]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    w = batch["weight"]
    return {"loss_sum": jnp.sum(nll * w), "correct": jnp.sum(correct * w), "count": jnp.sum(w)}


# ------------------------------------------------------------------------------------------------
# Compiled epoch functions.


def make_train_epoch(model: nn.Module, tx: optax.GradientTransformation, *,
                     label_smoothing: float = 0.0, augment_fn: Callable | None = None,
                     skip_nonfinite: bool = True, mesh: Mesh | None = None,
                     donate: bool = True, gather: bool = True) -> Callable:
    """Returns `train_epoch(state, images, labels, batch_idx) -> (state, metrics)`, jitted once.

    `images`/`labels` are the device-resident training set and `batch_idx` an int32 array of shape
    (num_batches, batch_size); the epoch is one `lax.scan` over its rows. Per-step metrics come back
    as arrays of length num_batches (a few KiB), so the host syncs once per epoch. With `donate`
    the state buffer is donated (the epoch updates it in place); `run_epoch` keeps it instead, to
    be able to replay the epoch.

    With `gather=False` it returns `train_chunk(state, images, labels)` instead, a scan over batches
    already gathered on the host (images (K, batch, ...), labels (K, batch)): the unit of work of
    the host-resident input pipeline (`input_pipeline.make_streamed_epoch`). Both scans run the
    same body on the same rows, so the two placements compute the same steps.
    """
    step = functools.partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing,
                             augment_fn=augment_fn, skip_nonfinite=skip_nonfinite)
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
            state, batch_idx)

    def train_chunk(state, images, labels):
        return jax.lax.scan(body, state, {"image": images, "label": labels})

    return jax.jit(train_epoch if gather else train_chunk, donate_argnums=(0,) if donate else ())


def run_epoch(fast_epoch: Callable, guarded_epoch: Callable | None, state: TrainState,
              *args) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Runs one epoch optimistically, replaying it with the non-finite guard only if it needs it.

    `fast_epoch` is `make_train_epoch(..., skip_nonfinite=False, donate=False)` and
    `guarded_epoch` the same with `skip_nonfinite=True` (None: no guard, `fast_epoch` may donate).
    Non-finite steps are rare, and a guard inside every step (a `lax.cond` on the gradient norm)
    costs 8% of a CPU step, so the epoch first runs unguarded from a kept copy of `state`; if any
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


def make_split_sums(model: nn.Module, batch_size: int, mesh: Mesh | None = None) -> Callable:
    """Returns `split_sums(params, batch_stats, images, labels, weights)`, not jitted.

    A scan of `eval_step` over the batches of a padded split (see `put_split`), summing loss,
    correct predictions and row count. `make_evaluate` jits it; `multiseed` vmaps it over seeds.
    """
    step = functools.partial(eval_step, model=model)
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

        zero = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
        sums, _ = jax.lax.scan(body, zero, jnp.arange(n))
        return sums

    return split_sums


def make_evaluate(model: nn.Module, batch_size: int, mesh: Mesh | None = None) -> Callable:
    """Returns `evaluate(params, batch_stats, split) -> {"loss", "accuracy"}` over a whole split.

    A split is padded once to a multiple of `batch_size` with weight-0 rows (see `put_split`), so
    every batch has one shape and the function compiles once per split shape.
    """
    _evaluate = jax.jit(make_split_sums(model, batch_size, mesh))

    def evaluate(params, batch_stats, split):
        sums = jax.device_get(_evaluate(params, batch_stats, *split))
        count = float(sums["count"])
        return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}

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
    """Means of the per-step metrics over the steps that were not skipped."""
    skipped = np.asarray(step_metrics["skipped"])
    ok = skipped == 0
    out = {"train/skipped_steps": int(skipped.sum())}
    for name in ("loss", "objective", "accuracy", "grad_norm"):
        values = np.asarray(step_metrics[name])[ok]
        # grad_norm: mean global L2 norm of the raw (pre-clipping) gradient over the epoch.
        key = name if name == "grad_norm" else f"train/{name}"
        out[key] = float(values.mean()) if values.size else float("nan")
    return out


def trailing_run(skipped: np.ndarray, previous: int) -> tuple[int, int]:
    """(longest run of consecutive skipped steps, run still open at the end), across epochs."""
    longest, run = 0, previous
    for s in np.asarray(skipped):
        run = run + 1 if s else 0
        longest = max(longest, run)
    return longest, run


# ------------------------------------------------------------------------------------------------
# The driver.


@dataclasses.dataclass
class Experiment:
    """What `fit` builds from a config: data, model, optimizer and compiled functions.

    `placement` says where the training set lives (`input_pipeline`): "device" (then
    `train_arrays` are device arrays and `train_epoch` one compiled scan) or "host" (then
    `train_arrays` are the dataset's numpy arrays, never put on a device, and `train_epoch` streams
    prefetched chunks). Both epoch functions take (state, *train_arrays, batch_idx), so
    `run_epoch` and `fit` do not depend on the choice. Validation and test are device-resident.
    """

    cfg: ml_collections.ConfigDict
    dataset: data_lib.Dataset
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: Callable[[int], float]
    mesh: Mesh
    train_epoch: Callable          # unguarded; keeps its input state when a guard is configured
    train_epoch_guarded: Callable | None  # the replay with the non-finite guard (None: no guard)
    evaluate: Callable
    steps_per_epoch: int
    train_arrays: tuple[jax.Array | np.ndarray, jax.Array | np.ndarray]  # numpy when "host"
    val_split: tuple[jax.Array, ...]
    test_split: tuple[jax.Array, ...]
    placement: input_pipeline.InputPlacement

    def init_state(self) -> TrainState:
        state = create_train_state(self.model, self.tx, jax.random.PRNGKey(self.cfg.seed),
                                   self.dataset.train_x.shape[1:])
        # Every process initialises the same state from the seed and fills its own devices;
        # device_put would instead all-gather the state across processes to check it is equal.
        replicated = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: distributed.put_global(np.asarray(a), replicated), state)

    def run_epoch(self, state: TrainState, epoch: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Trains one epoch (see `run_epoch`); per-step metrics come back on the host."""
        return run_epoch(self.train_epoch, self.train_epoch_guarded, state, *self.train_arrays,
                         self.batch_indices(epoch))

    def summary(self, test: Mapping[str, float], history: list[dict[str, Any]], *,
                best_epoch: int | None, best_metric: dict[str, Any], stop_reason: str,
                num_params: int, seed: int) -> dict[str, Any]:
        """A run's summary.json (`fit`, and each seed of `multiseed.fit_seeds`).

        `test` holds the test metrics of the best state, `history` the run's metrics records.
        """
        return {
            "test/accuracy": float(test["accuracy"]),
            "test/loss": float(test["loss"]),
            "best_epoch": best_epoch,
            "best_metric": best_metric,
            "epochs_run": len(history),
            "stop_reason": stop_reason,
            "wall_time_s": history[-1]["wall_time_s"] if history else 0.0,
            "num_params": num_params,
            "seed": seed,
            "dataset": self.dataset.info(),
            "input": self.placement.info(),  # where the training set lived ("device" | "host")
            "devices": [str(d) for d in self.mesh.devices.flat],
        }

    def batch_indices(self, epoch: int) -> jax.Array:
        """The epoch's (num_batches, batch_size) example indices, replicated on every device.

        Every process computes the same indices from (seed, epoch). With the device-resident
        training set (replicated too), each device then gathers only its own rows of each global
        batch inside the compiled epoch: no process sends examples to another.
        """
        idx = data_lib.batch_indices(self.cfg.seed, epoch, len(self.dataset.train_y),
                                     self.cfg.train.batch_size, drop_remainder=True)
        return distributed.put_global(idx.astype(np.int32), NamedSharding(self.mesh, P()))


def build_experiment(cfg: ml_collections.ConfigDict, dataset: data_lib.Dataset | None = None,
                     mesh: Mesh | None = None) -> Experiment:
    """Loads data, builds model and optimizer and compiles nothing yet (jit is lazy)."""
    validate_config(cfg)
    dataset = dataset if dataset is not None else data_lib.load_dataset(cfg.data)
    if cfg.model.num_classes != dataset.num_classes:
        raise ValueError(f"model.num_classes: {cfg.model.num_classes} but the dataset "
                         f"{dataset.name!r} has {dataset.num_classes} classes")
    mesh = mesh if mesh is not None else make_mesh(cfg.train.get("num_devices", 0) or None)
    n_dev = mesh.devices.size
    for field in ("batch_size", "eval_batch_size"):
        if cfg.train[field] % n_dev:
            raise ValueError(f"train.{field}: {cfg.train[field]} does not divide over "
                             f"{n_dev} devices; use a multiple of {n_dev}")
    model = models.make_model(cfg.model)
    steps_per_epoch = len(dataset.train_y) // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size: {cfg.train.batch_size} exceeds the "
                         f"{len(dataset.train_y)} training examples")
    total_steps = steps_per_epoch * cfg.train.num_epochs
    tx = optim.make_optimizer(cfg.optim, total_steps=total_steps)
    schedule = optim.make_schedule(cfg.optim, total_steps=total_steps)
    augment_fn = augment_lib.get(cfg.train.get("augment", "none"))
    replicated = NamedSharding(mesh, P())
    eval_bs = cfg.train.eval_batch_size
    guard = cfg.train.skip_nonfinite
    make_epoch = functools.partial(make_train_epoch, model, tx,
                                   label_smoothing=cfg.train.label_smoothing,
                                   augment_fn=augment_fn, mesh=mesh)
    placement = input_pipeline.resolve_placement(
        cfg.data, dataset.train_x.nbytes + dataset.train_y.nbytes)
    if placement.placement == "device":
        # The training set is replicated: each device gathers its batches locally, then the batch
        # is constrained to be split over "data". MNIST is 188 MB in float32.
        train_arrays = (distributed.put_global(dataset.train_x, replicated),
                        distributed.put_global(dataset.train_y, replicated))
        train_epoch = make_epoch(skip_nonfinite=False, donate=not guard)
        train_epoch_guarded = make_epoch(skip_nonfinite=True) if guard else None
    else:
        # Host-resident: no device_put of the training set (that is the memory saving).
        train_arrays = (dataset.train_x, dataset.train_y)
        stream = functools.partial(input_pipeline.make_streamed_epoch, mesh=mesh,
                                   chunk_steps=placement.chunk_steps)
        train_epoch = stream(make_epoch(skip_nonfinite=False, donate=not guard, gather=False))
        train_epoch_guarded = (stream(make_epoch(skip_nonfinite=True, gather=False))
                               if guard else None)
    return Experiment(
        cfg=cfg, dataset=dataset, model=model, tx=tx, schedule=schedule, mesh=mesh,
        train_epoch=train_epoch,
        train_epoch_guarded=train_epoch_guarded,
        evaluate=make_evaluate(model, eval_bs, mesh),
        steps_per_epoch=steps_per_epoch,
        train_arrays=train_arrays,
        val_split=put_split(dataset.val_x, dataset.val_y, eval_bs, replicated),
        test_split=put_split(dataset.test_x, dataset.test_y, eval_bs, replicated),
        placement=placement,
    )


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Checks the fields `fit` itself reads; sections validate their own (optim, model, data)."""
    t = cfg.train
    if not isinstance(t.num_epochs, int) or t.num_epochs < 1:
        raise ValueError(f"train.num_epochs: {t.num_epochs!r}; expected an integer >= 1")
    if t.batch_size < 1 or t.eval_batch_size < 1:
        raise ValueError(f"train.batch_size / train.eval_batch_size must be >= 1, got "
                         f"{t.batch_size} / {t.eval_batch_size}")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ValueError(f"train.label_smoothing: {t.label_smoothing} is outside [0, 1)")
    if t.max_consecutive_skips < 1:
        raise ValueError(f"train.max_consecutive_skips: {t.max_consecutive_skips}; expected >= 1")


def fit(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        dataset: data_lib.Dataset | None = None, mesh: Mesh | None = None) -> dict[str, Any]:
    """Trains `cfg` in `workdir`, resuming from its checkpoints, and returns the run summary.

    The run ends on patience, max epochs, divergence, non-finite steps or Ctrl-C / SIGTERM; in
    every case the best checkpoint (by `cfg.early_stopping.monitor`) is restored and the test
    metrics in `summary.json` are those of the best weights. See `run_files` for the files.
    """
    from ml_practical import checkpointing  # orbax import is slow; keep `import train` light.

    exp = build_experiment(cfg, dataset=dataset, mesh=mesh)
    # Several processes: process 0 writes the run files, all take part in every checkpoint.
    files = run_files.RunFiles(workdir, primary=distributed.is_primary())
    files.check_or_write_config(cfg, restart=cfg.train.get("restart", False))
    distributed.sync("fit:run_files_ready")  # a restart's deletions done before orbax looks
    stopper = checkpointing.make_early_stopping(cfg.early_stopping)
    ckpt = checkpointing.RunCheckpointer(files.checkpoint_dir, cfg, monitor=stopper.monitor,
                                         mode=stopper.mode)
    fresh = exp.init_state()
    restored = ckpt.restore_latest(fresh)
    if restored is None:
        state, es_state, start_epoch, consecutive = fresh, stopper.initial_state(), 1, 0
        files.truncate_metrics(after_epoch=0)
    else:
        state, es_state, start_epoch, consecutive = (
            restored.state, stopper.state_from_dict(restored.early_stopping),
            restored.epoch + 1, restored.consecutive_skips)
        files.truncate_metrics(after_epoch=restored.epoch)
        print(f"Resumed from epoch {restored.epoch} of {files.workdir}", file=sys.stderr)

    stop_reason = es_state.stop_reason if es_state.stopped else None
    wall_start = time.time() - files.previous_wall_time(start_epoch - 1)
    progress = run_files.Progress(cfg.train.num_epochs, initial=start_epoch - 1,
                                  mode=cfg.train.get("progress", "auto") if files.primary
                                  else "never")
    interrupted = _InterruptFlag()
    # Per-layer activation / gradient statistics every cfg.train.stats_every epochs (0 = off).
    log_stats = diagnostics.make_stats_logger(exp.model, *exp.train_arrays,
                                              every=cfg.train.get("stats_every", 0))
    epoch = start_epoch - 1
    with interrupted:
        for epoch in range(start_epoch, cfg.train.num_epochs + 1):
            if stop_reason is not None:
                break
            t0 = time.time()
            lr = float(exp.schedule(int(state.step)))
            state, step_metrics = exp.run_epoch(state, epoch)
            record = {"epoch": epoch, **summarize_epoch(step_metrics)}
            longest, consecutive = trailing_run(step_metrics["skipped"], consecutive)
            for name, value in exp.evaluate(state.params, state.batch_stats, exp.val_split).items():
                record[f"val/{name}"] = value
            record.update(log_stats(epoch, state.params, state.batch_stats))
            record["lr"] = lr
            record["epoch_time_s"] = time.time() - t0
            record["wall_time_s"] = time.time() - wall_start
            es_state, _ = stopper.update(es_state, epoch, record)
            if longest >= cfg.train.max_consecutive_skips:
                es_state = stopper.stop(es_state, epoch, "non_finite")
            # Metrics line first, then the checkpoint: a crash between the two leaves a line for
            # an epoch that has no checkpoint, which the resume drops (`truncate_metrics`) and
            # writes again. The other order would lose the line of a saved epoch for good.
            files.append_metrics(record)
            ckpt.save(epoch, state, es_state.to_dict(), record, consecutive)
            progress.update(record)
            stop_reason = es_state.stop_reason if es_state.stopped else None
            # A signal may reach only some processes: all must stop after the same epoch.
            if not distributed.all_agree(not interrupted.fired):
                stop_reason = "interrupted"
                break
        else:
            epoch = cfg.train.num_epochs
    progress.close()
    if stop_reason is None:
        stop_reason = "interrupted" if interrupted.fired else "max_epochs"

    best = ckpt.restore_best(fresh, es_state.best_epoch)
    ckpt.close()
    if best is None:  # Nothing was ever finite: report the last state honestly.
        best_state, best_epoch = state, None
    else:
        best_state, best_epoch = best.state, best.epoch
    test = exp.evaluate(best_state.params, best_state.batch_stats, exp.test_split)
    history = files.read_metrics()
    summary = exp.summary(
        test, history, best_epoch=best_epoch, best_metric={stopper.monitor: es_state.best_value},
        stop_reason=stop_reason,
        num_params=int(sum(x.size for x in jax.tree.leaves(best_state.params))), seed=cfg.seed)
    files.write_summary(summary)
    files.close()
    summary["final_state"] = best_state  # for library callers; not written to disk
    return summary


class _InterruptFlag:
    """Turns the first Ctrl-C / SIGTERM into a flag checked between epochs (a second one aborts).

    The epoch in flight finishes and is checkpointed, so an interrupt loses nothing.
    """

    def __init__(self):
        self.fired = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.fired:
            raise KeyboardInterrupt
        self.fired = True
        print("\nInterrupt: finishing this epoch, then restoring the best checkpoint "
              "(interrupt again to abort).", file=sys.stderr)

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # Not the main thread: leave signals alone.
            self._old = {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
