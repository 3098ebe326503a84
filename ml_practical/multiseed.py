"""Many seeds of one config as one vmapped program: `fit_seeds(cfg, seeds, workdir)`.

On an accelerator a small model leaves most of the chip idle; training S seeds of the same
config as one program (the library's epoch, `jax.vmap`-ped over a leading seed axis of the
state and of the batch indices) fills it. On the 2-core CPU it does not pay: the MLP's matmuls
already keep both cores busy, and `benchmarks/seeds.py` measured 4 vmapped seeds at 0.72-1.41x
the time of 4 sequential ones (median 0.96 over 10 rounds, cores shared with other jobs), i.e. no
resolvable gain, while the sequential runs keep checkpoints and resume. So
`resolve_seed_mode("auto")` picks vmap on GPU/TPU only.

Equivalence with sequential runs. Seed s of a group gets exactly what `train.fit` with
`cfg.seed = s` gets: the init key `PRNGKey(s)` (split by `train.create_train_state`), hence the
same base key for `fold_in(key, step)` dropout / augmentation keys, and the batch order
`data.batch_indices(s, epoch, ...)`. The step is `train.train_step` inside `train.make_train_epoch`'s
scan (reused, not copied): the vmapped epoch is `jit(vmap(make_train_epoch(...)))`. So per-seed
trajectories equal the sequential ones up to float32 rounding, not bit for bit: the initial states
are bit-identical, but XLA compiles the batched matmuls differently (on the 2-core CPU parameters
after two epochs agree to ~5e-7, `tests/test_multiseed.py`). Where training amplifies rounding the
gap grows: weights whose true gradient is 0 (kernel rows of constant input pixels feeding
BatchNorm) get rounding-noise gradients that Adam divides by their own RMS, so they drift apart
(1e-3 after 2 epochs on the digits) and test losses differ in the 4th digit; accuracies, best
epochs and stop reasons agreed in every test. A sequential run is as sensitive to any other
change of compilation (jax version, device count).

Non-finite guard: the replay of `train.run_epoch`, per seed. The vmapped epoch runs unguarded
from a kept copy of the state; if a seed that is still training flagged a `nonfinite` step, the
vmapped guarded epoch is run from the copy and each flagged seed takes its result, every other
seed keeps its unguarded one (a select over the seed axis). Each seed therefore gets what its own
`run_epoch` would give.

What `fit_seeds` keeps from `fit`, and what it does not:
- Per seed: the early-stopping rule (`cfg.early_stopping`, one `EarlyStoppingState` per seed),
  the consecutive-skip stop, the best state (by the monitor) kept on device by a select over the
  seed axis, and test metrics of that best state; run files `config.json` (with `seed = s`),
  `metrics.jsonl` (same keys) and `summary.json` (same keys, plus `seed_mode` and
  `seeds_together`) in `<workdir>/seed_<s>/`.
- All seeds step together: a seed that has stopped keeps being computed (its results are
  ignored, and it no longer triggers a guarded replay) until every seed has stopped or
  `train.num_epochs` is reached, so the group costs as much as its longest seed.
- No orbax checkpoints and no resume: a group that is interrupted (Ctrl-C aborts it) starts again
  from epoch 1; a seed directory holding checkpoints of a sequential run is refused (resume it with
  `train.fit`, or delete it). No per-layer statistics (`train.stats_every` must be 0).
  One process, and the training set on the device (`data.placement` "device"): the vmapped epoch
  gathers every seed's batches from one device-resident copy.
- Times: `epoch_time_s` and `wall_time_s` are the seed's share (the group's time / S), so summing
  runs still gives the time spent; `summary["group_wall_time_s"]` is the group's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ml_practical import augment as augment_lib
from ml_practical import data as data_lib
from ml_practical import run_files
from ml_practical import train as train_lib

SEED_MODES = ("auto", "sequential", "vmap")


def resolve_seed_mode(mode: str, backend: str | None = None) -> str:
    """"sequential" | "vmap" from a `seed_mode` option; "auto" is vmap on GPU/TPU, sequential on CPU.

    Args:
      mode: one of SEED_MODES.
      backend: the platform "auto" decides for (default: `jax.default_backend()`).

    Returns:
      "sequential" or "vmap".

    Raises:
      ValueError: an unknown mode, naming the field and the allowed values.
    """
    if mode not in SEED_MODES:
        raise ValueError(f"seed_mode: unknown {mode!r}; expected one of {list(SEED_MODES)}")
    if mode != "auto":
        return mode
    # benchmarks/seeds.py on the 2-core CPU: 4 vmapped MNIST-MLP seeds are no faster than 4
    # sequential runs (the matmuls already fill both cores), and sequential runs checkpoint.
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"


def seed_dir(workdir: str | os.PathLike, seed: int) -> pathlib.Path:
    """Where `fit_seeds` writes seed `seed`'s run files: <workdir>/seed_<seed>."""
    return pathlib.Path(workdir) / f"seed_{seed}"


def with_seed(cfg: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of `cfg` with `cfg.seed = seed` (the config a sequential run of that seed gets)."""
    out = copy.deepcopy(cfg)
    with out.unlocked():
        out.seed = int(seed)
    return out


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Validates a list of distinct non-negative integer seeds; returns it as a list of ints."""
    seeds = list(seeds)
    bad = [s for s in seeds
           if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if not seeds or bad:
        raise ValueError(f"seeds: {seeds!r}; expected a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {seeds!r} repeats a seed; each seed must appear once")
    return [int(s) for s in seeds]


def _take(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per seed (leading axis): `new` where mask, else `old`."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, new, old)


def make_evaluate_seeds(model, batch_size: int, mesh=None) -> Callable:
    """Returns `evaluate(params, batch_stats, split) -> {"loss": (S,), "accuracy": (S,)}`.

    `train.make_evaluate` vmapped over the seed axis of `params` / `batch_stats`: the same
    `train.eval_step` sums over the batches of a padded split (`train.put_split`), divided on the
    host in float64, as `make_evaluate` does.
    """
    one_seed = train_lib.make_split_sums(model, batch_size, mesh)
    _evaluate = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None, None, None)))

    def evaluate(params, batch_stats, split):
        sums = jax.device_get(_evaluate(params, batch_stats, *split))
        count = np.asarray(sums["count"], np.float64)
        return {"loss": np.asarray(sums["loss_sum"], np.float64) / count,
                "accuracy": np.asarray(sums["correct"], np.float64) / count}

    return evaluate


@dataclasses.dataclass
class SeedGroup:
    """S seeds of one `train.Experiment`, trained as one program (see the module docstring).

    Attributes:
      exp: the shared experiment (data on device, model, optimizer); its `cfg.seed` is not used.
      seeds: the seeds, in the order of the state's leading axis.
      train_epoch: vmapped unguarded epoch `(states, images, labels, batch_idx[S]) -> ...`.
      train_epoch_guarded: the vmapped guarded replay (None: `train.skip_nonfinite` is off).
      evaluate: `make_evaluate_seeds`.
    """

    exp: train_lib.Experiment
    seeds: list[int]
    train_epoch: Callable
    train_epoch_guarded: Callable | None
    evaluate: Callable

    def init_states(self) -> train_lib.TrainState:
        """`create_train_state` with key PRNGKey(s) for every seed, stacked on a leading axis."""
        keys = jnp.stack([jax.random.PRNGKey(s) for s in self.seeds])
        create = functools.partial(train_lib.create_train_state, self.exp.model, self.exp.tx,
                                   input_shape=self.exp.dataset.train_x.shape[1:])
        states = jax.vmap(lambda k: create(key=k))(keys)
        return jax.device_put(states, NamedSharding(self.exp.mesh, P()))

    def batch_indices(self, epoch: int) -> jax.Array:
        """(S, num_batches, batch_size): seed s's `data.batch_indices(s, epoch, ...)` in row s."""
        n, bs = len(self.exp.dataset.train_y), self.exp.cfg.train.batch_size
        return jnp.asarray(np.stack([data_lib.batch_indices(s, epoch, n, bs, drop_remainder=True)
                                     for s in self.seeds]), jnp.int32)

    def run_epoch(self, states: train_lib.TrainState, epoch: int,
                  active: np.ndarray | None = None) -> tuple[train_lib.TrainState,
                                                             dict[str, np.ndarray]]:
        """One epoch of every seed, with `train.run_epoch`'s replay guard per seed.

        Args:
          states: the stacked states (leading axis S).
          epoch: the epoch number (1-based), which fixes each seed's batch order.
          active: bool (S,); only active seeds' non-finite flags trigger the guarded replay
            (default: all).

        Returns:
          The new states and the per-step metrics on the host, each of shape (S, num_batches).
        """
        args = (*self.exp.train_arrays, self.batch_indices(epoch))
        new, metrics = self.train_epoch(states, *args)
        metrics = jax.device_get(metrics)
        if self.train_epoch_guarded is None:
            return new, metrics
        active = np.ones(len(self.seeds), bool) if active is None else np.asarray(active, bool)
        flagged = np.any(np.asarray(metrics["nonfinite"]) > 0, axis=1) & active
        if flagged.any():
            guarded, g_metrics = self.train_epoch_guarded(states, *args)
            new = _select(jnp.asarray(flagged), guarded, new)
            g_metrics = jax.device_get(g_metrics)
            metrics = {k: np.where(flagged[:, None], g_metrics[k], v) for k, v in metrics.items()}
        return new, metrics


def build_seed_group(cfg: ml_collections.ConfigDict, seeds: Sequence[int], *,
                     dataset: data_lib.Dataset | None = None, mesh=None) -> SeedGroup:
    """`train.build_experiment(cfg)` plus the vmapped epoch and evaluation for `seeds`.

    The epoch functions are `train.make_train_epoch` with the options `build_experiment` uses
    (label smoothing, augmentation, mesh), built without donation and vmapped with
    `in_axes=(0, None, None, 0)`: the state and the batch indices carry the seed axis, the
    device-resident training set is shared. The outer jit donates the states when no guard is
    configured (as `fit` does), and keeps them for the replay otherwise.
    """
    seeds = check_seeds(seeds)
    if jax.process_count() > 1:
        raise ValueError(f"seed_mode: 'vmap' runs in one process, not {jax.process_count()}; "
                         "expected seed_mode 'sequential' for a multi-process run")
    exp = train_lib.build_experiment(cfg, dataset=dataset, mesh=mesh)
    placement = exp.placement
    if placement.placement != "device":
        # The vmapped epoch gathers every seed's batches from one device-resident copy; streaming
        # S different batch orders from the host is not implemented.
        raise ValueError(f"data.placement: {placement.placement!r}; the vmapped seed mode needs "
                         "the training set on the device, expected 'device' (or seed_mode "
                         "'sequential')")
    guard = cfg.train.skip_nonfinite
    make = functools.partial(train_lib.make_train_epoch, exp.model, exp.tx,
                             label_smoothing=cfg.train.label_smoothing,
                             augment_fn=augment_lib.get(cfg.train.get("augment", "none")),
                             mesh=exp.mesh, donate=False)

    def vmapped(skip_nonfinite: bool, donate: bool) -> Callable:
        epoch = jax.vmap(make(skip_nonfinite=skip_nonfinite), in_axes=(0, None, None, 0))
        return jax.jit(epoch, donate_argnums=(0,) if donate else ())

    return SeedGroup(
        exp=exp, seeds=seeds,
        train_epoch=vmapped(False, donate=not guard),
        train_epoch_guarded=vmapped(True, donate=False) if guard else None,
        evaluate=make_evaluate_seeds(exp.model, cfg.train.eval_batch_size, exp.mesh))


def fit_seeds(cfg: ml_collections.ConfigDict, seeds: Sequence[int],
              workdir: str | os.PathLike | None, *, dataset: data_lib.Dataset | None = None,
              mesh=None) -> list[dict[str, Any]]:
    """Trains `cfg` once per seed, all seeds as one vmapped program; returns per-seed summaries.

    Each seed follows `train.fit`'s epoch loop (metrics record, early stopping, consecutive
    non-finite skips, test metrics of the best state); see the module docstring for what is the
    same as `fit(with_seed(cfg, s), ...)` and what is not (no checkpoints / resume, shared epochs,
    time shares).

    Args:
      cfg: the training config; `cfg.seed` is replaced by each seed.
      seeds: distinct seeds, e.g. [0, 1, 2, 3].
      workdir: run files go to `seed_dir(workdir, s)` (None: no files, summaries only).
      dataset, mesh: as in `train.fit`.

    Returns:
      One summary per seed, in `seeds` order, with `fit`'s keys (and "final_state": the seed's
      best TrainState, not written to disk).

    Raises:
      ValueError: bad seeds, `train.stats_every` > 0, a host-resident training set, several
        processes, or a seed directory holding checkpoints.
    """
    from ml_practical import checkpointing  # orbax import is slow; see train.fit.

    seeds = check_seeds(seeds)
    if cfg.train.get("stats_every", 0):
        raise ValueError(f"train.stats_every: {cfg.train.stats_every}; the vmapped seed mode "
                         "logs no per-layer statistics, expected 0 (or use seed_mode='sequential')")
    group = build_seed_group(cfg, seeds, dataset=dataset, mesh=mesh)
    exp, S = group.exp, len(seeds)
    files: list[run_files.RunFiles | None] = [None] * S
    if workdir is not None:
        restart = cfg.train.get("restart", False)
        for i, s in enumerate(seeds):
            f = run_files.RunFiles(seed_dir(workdir, s))
            if f.checkpoint_dir.exists() and any(f.checkpoint_dir.iterdir()):
                # Even with train.restart, which only wipes a run whose config changed.
                raise ValueError(f"{f.workdir} holds checkpoints of a sequential run; resume it "
                                 "with train.fit (seed_mode='sequential') or delete that "
                                 "directory to start it over")
            f.check_or_write_config(with_seed(cfg, s), restart=restart)
            f.truncate_metrics(after_epoch=0)
            files[i] = f

    stopper = checkpointing.make_early_stopping(cfg.early_stopping)
    es = [stopper.initial_state() for _ in seeds]
    consecutive = [0] * S
    histories: list[list[dict[str, Any]]] = [[] for _ in seeds]
    states = group.init_states()
    best = jax.tree.map(jnp.copy, states)  # its own buffers: the epoch may donate `states`
    progress = run_files.Progress(cfg.train.num_epochs, mode=cfg.train.get("progress", "auto"))
    wall_start = time.time()
    for epoch in range(1, cfg.train.num_epochs + 1):
        active = np.array([not e.stopped for e in es])
        if not active.any():
            break
        t0 = time.time()
        lr = float(exp.schedule(int(states.step[0])))  # every seed has taken the same steps
        states, step_metrics = group.run_epoch(states, epoch, active)
        val = group.evaluate(states.params, states.batch_stats, exp.val_split)
        epoch_share = (time.time() - t0) / S
        wall_share = (time.time() - wall_start) / S
        improved = np.zeros(S, bool)
        for i in np.flatnonzero(active):
            record = {"epoch": epoch, **train_lib.summarize_epoch(_take(step_metrics, i))}
            longest, consecutive[i] = train_lib.trailing_run(step_metrics["skipped"][i],
                                                             consecutive[i])
            record["val/loss"] = float(val["loss"][i])
            record["val/accuracy"] = float(val["accuracy"][i])
            record["lr"] = lr
            record["epoch_time_s"] = epoch_share
            record["wall_time_s"] = wall_share
            es[i], improved[i] = stopper.update(es[i], epoch, record)
            if longest >= cfg.train.max_consecutive_skips:
                es[i] = stopper.stop(es[i], epoch, "non_finite")
            histories[i].append(record)
            if files[i] is not None:
                files[i].append_metrics(record)
        if improved.any():
            best = _select(jnp.asarray(improved), states, best)
        progress.update(histories[int(np.flatnonzero(active)[0])][-1])
    progress.close()
    group_wall = time.time() - wall_start

    # As in `fit`: a seed that never had a finite monitor value reports its last state.
    never = np.array([e.best_epoch is None for e in es])
    if never.any():
        best = _select(jnp.asarray(never), states, best)
    test = group.evaluate(best.params, best.batch_stats, exp.test_split)
    num_params = int(sum(x[0].size for x in jax.tree.leaves(best.params)))
    summaries = []
    for i, s in enumerate(seeds):
        summary = exp.summary(
            {name: values[i] for name, values in test.items()}, histories[i],
            best_epoch=es[i].best_epoch, best_metric={stopper.monitor: es[i].best_value},
            stop_reason=es[i].stop_reason if es[i].stopped else "max_epochs",
            num_params=num_params, seed=s)
        summary.update(seed_mode="vmap", seeds_together=seeds, group_wall_time_s=group_wall)
        if files[i] is not None:
            files[i].write_summary(summary)
            files[i].close()
        summary["final_state"] = _take(best, i)
        summaries.append(summary)
    return summaries
