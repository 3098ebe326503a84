"""Many seeds of one config as one vmapped program: the engine behind `loop.fit_seeds`.

On an accelerator a small model leaves most of the chip idle; training S seeds of the same
config as one program (the library's epoch, `jax.vmap`-ped over a leading seed axis of the state
and of the batch indices) fills it. On a CPU whose matmuls already keep every core busy it need
not pay (`benchmarks/seeds.py` measures it; the figures are in benchmarks/README.md), while
sequential runs keep checkpoints and resume; so `resolve_seed_mode("auto")` picks vmap on GPU/TPU
only.

Equivalence with sequential runs. Seed s of a group gets exactly what `loop.fit` with
`cfg.seed = s` gets: the init key `PRNGKey(s)` (split by `train.create_train_state`), hence the
same base key for `fold_in(key, step)` dropout / augmentation keys, and the batch order
`data.batch_indices(s, epoch, ...)`. The step is `train.train_step` inside
`train.make_train_epoch`'s scan (reused, not copied): the vmapped epoch is
`jit(vmap(make_train_epoch(...)))`. So per-seed trajectories equal the sequential ones up to
float32 rounding, not bit for bit: the initial states are bit-identical, but XLA compiles the
batched matmuls differently (`tests/test_multiseed.py` bounds the difference). Where training
amplifies rounding the gap grows: weights whose true gradient is 0 (kernel rows of constant input
pixels feeding BatchNorm) get rounding-noise gradients that Adam divides by their own RMS, so they
drift apart and test losses can differ in the 4th digit. A sequential run is as sensitive to any
other change of compilation (jax version, device count).

Non-finite guard: the replay of `train.replay_if_nonfinite`, per seed. The vmapped epoch runs unguarded
from a kept copy of the state; if a seed that is still training flagged a `nonfinite` step, the
vmapped guarded epoch is run from the copy and each flagged seed takes its result, every other
seed keeps its unguarded one (a select over the seed axis). Each seed therefore gets what its own
`run_epoch` would give.

What the group does not do (see `loop.fit_seeds`): checkpoints and resume, per-layer statistics,
host-streamed input, several processes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ml_practical import augment as augment_lib
from ml_practical import data as data_lib
from ml_practical import train as train_lib
from ml_practical.config import Config
from ml_practical.experiment import Experiment, build_experiment

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
    # On a CPU the matmuls already fill the cores, so vmapping seeds buys no measurable speed
    # (benchmarks/seeds.py, figures in benchmarks/README.md), and sequential runs checkpoint.
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"


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


def take(tree: Any, i: int) -> Any:
    """Seed i's slice of a stacked pytree (leading seed axis)."""
    return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per seed (leading axis): `new` where mask, else `old`."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, new, old)


def make_evaluate_seeds(model, batch_size: int, mesh=None, task=None,
                        unroll: bool = False) -> Callable:
    """Returns `evaluate(params, batch_stats, split) -> {"loss": (S,), "accuracy": (S,)}`.

    `train.make_evaluate` vmapped over the seed axis of `params` / `batch_stats`: the same
    `train.eval_step` sums over the batches of a padded split (`train.put_split`), divided on the
    host in float64, as `make_evaluate` does. `unroll`: `train.make_split_sums`'s.
    """
    one_seed = train_lib.make_split_sums(model, batch_size, mesh, task, unroll=unroll)
    _evaluate = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None, None, None)))

    def evaluate(params, batch_stats, split):
        sums = jax.device_get(_evaluate(params, batch_stats, *split))
        count = np.asarray(sums["count"], np.float64)
        out = {"loss": np.asarray(sums["loss_sum"], np.float64) / count}
        if "correct" in sums:
            out["accuracy"] = np.asarray(sums["correct"], np.float64) / count
        return out

    return evaluate


@dataclasses.dataclass
class SeedGroup:
    """S seeds of one `experiment.Experiment`, trained as one program (see the module docstring).

    Attributes:
      exp: the shared experiment (data on device, model, optimizer); its `cfg.seed` is not used.
      seeds: the seeds, in the order of the state's leading axis.
      train_epoch: vmapped unguarded epoch `(states, images, labels, batch_idx[S]) -> ...`.
      train_epoch_guarded: the vmapped guarded replay (None: `train.skip_nonfinite` is off).
      evaluate: `make_evaluate_seeds`.
    """

    exp: Experiment
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
        if self.exp.cfg.train.batching == "full":
            one = np.asarray(self.exp.batch_indices(epoch))
            return jnp.asarray(np.stack([one] * len(self.seeds)), jnp.int32)
        n, bs = len(self.exp.dataset.train_y), self.exp.cfg.train.batch_size
        return jnp.asarray(np.stack([data_lib.batch_indices(s, epoch, n, bs, drop_remainder=True)
                                     for s in self.seeds]), jnp.int32)

    def run_epoch(self, states: train_lib.TrainState, epoch: int,
                  active: np.ndarray | None = None) -> tuple[train_lib.TrainState,
                                                             dict[str, np.ndarray]]:
        """One epoch of every seed, with `train.replay_if_nonfinite`'s replay guard per seed.

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
            new = select(jnp.asarray(flagged), guarded, new)
            g_metrics = jax.device_get(g_metrics)
            metrics = {k: np.where(flagged[:, None], g_metrics[k], v) for k, v in metrics.items()}
        return new, metrics


def build_seed_group(cfg: Config, seeds: Sequence[int], *, dataset: data_lib.Dataset | None = None,
                     mesh=None, step_metrics: train_lib.StepMetrics | None = None) -> SeedGroup:
    """`experiment.build_experiment(cfg)` plus the vmapped epoch and evaluation for `seeds`.

    The epoch functions are `train.make_train_epoch` with the options `build_experiment` uses
    (task, augmentation, mesh, guard), built without donation and vmapped with
    `in_axes=(0, None, None, 0)`: the state and the batch indices carry the seed axis, the
    device-resident training set is shared. The outer jit donates the states when no replay is
    configured, and keeps them for the replay otherwise. With `train.unroll` each compiled call
    is `data.chunk_steps` unrolled steps of every seed (`train.in_chunks`), and the evaluation
    scans are unrolled.
    """
    seeds = check_seeds(seeds)
    if jax.process_count() > 1:
        raise ValueError(f"seed_mode: 'vmap' runs in one process, not {jax.process_count()}; "
                         "expected seed_mode 'sequential' for a multi-process run")
    exp = build_experiment(cfg, dataset=dataset, mesh=mesh, step_metrics=step_metrics)
    placement = exp.placement
    if placement.placement != "device":
        # The vmapped epoch gathers every seed's batches from one device-resident copy; streaming
        # S different batch orders from the host is not implemented.
        raise ValueError(f"data.placement: {placement.placement!r}; the vmapped seed mode needs "
                         "the training set on the device, expected 'device' (or seed_mode "
                         "'sequential')")
    unroll = cfg.train.unroll
    make = functools.partial(train_lib.make_train_epoch, exp.model, exp.tx, task=exp.task,
                             augment_fn=augment_lib.get(cfg.train.augment, exp.dataset.norm_stats,
                                                    magnitude=cfg.train.augment_magnitude,
                                                    num_ops=cfg.train.augment_num_ops),
                             mesh=exp.mesh, donate=False, step_metrics=step_metrics,
                             unroll=unroll, grad_accum_steps=cfg.train.grad_accum_steps,
                             sam=train_lib.SAM.from_config(cfg.optim),
                                   mix_fn=augment_lib.mixer_from_config(cfg))

    def vmapped(skip_nonfinite: bool, donate: bool) -> Callable:
        epoch = jax.vmap(make(skip_nonfinite=skip_nonfinite), in_axes=(0, None, None, 0))
        epoch = jax.jit(epoch, donate_argnums=(0,) if donate else ())
        return train_lib.in_chunks(epoch, placement.chunk_steps) if unroll else epoch

    replay = cfg.train.skip_nonfinite and cfg.train.guard == "replay"
    inline = cfg.train.skip_nonfinite and cfg.train.guard == "inline"
    return SeedGroup(
        exp=exp, seeds=seeds,
        train_epoch=vmapped(inline, donate=not replay),
        train_epoch_guarded=vmapped(True, donate=False) if replay else None,
        evaluate=make_evaluate_seeds(exp.model, cfg.train.eval_batch_size, exp.mesh, exp.task,
                                     unroll=unroll))
