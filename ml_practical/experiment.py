"""What a run is made of: data, model, optimizer and compiled functions, built from a `Config`.

`build_experiment(cfg)` loads (or takes) the dataset, checks it against the model and the batch
sizes, builds the optax chain and the compiled epoch and evaluation functions, and puts the data
where `data.placement` says. Nothing is compiled until first use (jit is lazy). The loop
(`ml_practical.loop`) drives an `Experiment`; `multiseed` vmaps one over seeds.

Shared by the runs of a study (one process):
* the program: runs whose configs differ only in what the compiled functions do not depend on
  (the seed above all; `program_key` lists what they do depend on) get the same jitted epoch and
  evaluation functions, so a study compiles each distinct program once (the last
  `PROGRAM_CACHE_SIZE` programs are kept);
* the device copies of a `Dataset` object: every run of the same dataset, mesh and placement uses
  the same device-resident training set and evaluation splits (kept while the dataset lives).
Both are pure memoization: the arithmetic of a run is that of a fresh build, bit for bit.
`clear_caches()` empties them.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import weakref
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ml_practical import augment as augment_lib
from ml_practical import data as data_lib
from ml_practical import distributed, input_pipeline, models, optim
from ml_practical import tasks as tasks_lib
from ml_practical import train as train_lib
from ml_practical.config import Config


@dataclasses.dataclass
class Experiment:
    """What the loop needs of a run: data, model, optimizer and compiled functions.

    `placement` says where the training set lives (`input_pipeline`): "device" (then
    `train_arrays` are device arrays and `epoch_fn` one compiled scan) or "host" (then
    `train_arrays` are the dataset's numpy arrays, never put on a device, and `epoch_fn` streams
    prefetched chunks). Both epoch functions take (state, *train_arrays, batch_idx), so the loop
    does not depend on the choice. Validation and test are device-resident.
    """

    cfg: Config
    dataset: data_lib.Dataset
    model: nn.Module
    task: tasks_lib.Task
    tx: optax.GradientTransformation
    schedule: Callable[[int], float]
    mesh: Mesh
    epoch_fn: Callable                 # unguarded (or inline-guarded); keeps its input for replay
    epoch_fn_guarded: Callable | None  # the replay with the non-finite guard (None: no replay)
    evaluate: Callable
    steps_per_epoch: int
    train_arrays: tuple[jax.Array | np.ndarray, jax.Array | np.ndarray]  # numpy when "host"
    val_split: tuple[jax.Array, ...]
    test_split: tuple[jax.Array, ...]
    placement: input_pipeline.InputPlacement

    def init_state(self) -> train_lib.TrainState:
        """The fresh state of seed `cfg.seed`, replicated over the mesh."""
        state = train_lib.create_train_state(self.model, self.tx, jax.random.PRNGKey(self.cfg.seed),
                                             self.dataset.train_x.shape[1:])
        # Every process initialises the same state from the seed and fills its own devices;
        # device_put would instead all-gather the state across processes to check it is equal.
        return self.replicate(state)

    def replicate(self, tree: Any) -> Any:
        """A host pytree as global arrays replicated over the mesh."""
        replicated = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: distributed.put_global(np.asarray(a), replicated), tree)

    def run_epoch(self, state: train_lib.TrainState,
                  epoch: int) -> tuple[train_lib.TrainState, dict[str, np.ndarray]]:
        """Trains one epoch (`train.replay_if_nonfinite`); per-step metrics come back on the host."""
        return train_lib.replay_if_nonfinite(self.epoch_fn, self.epoch_fn_guarded, state,
                                             *self.train_arrays, self.batch_indices(epoch))

    def batch_indices(self, epoch: int) -> jax.Array:
        """The epoch's (num_batches, batch_size) example indices, replicated on every device.

        "shuffle": `data.batch_indices(seed, epoch, ...)`; every process computes the same indices
        and, with the device-resident training set (replicated too), each device gathers only its
        own rows of each global batch inside the compiled epoch. "full": every row is the whole
        training set in stored order.
        """
        n = len(self.dataset.train_y)
        if self.cfg.train.batching == "full":
            idx = np.tile(np.arange(n, dtype=np.int32), (self.steps_per_epoch, 1))
        else:
            idx = data_lib.batch_indices(self.cfg.seed, epoch, n, self.cfg.train.batch_size,
                                         drop_remainder=True)
        return distributed.put_global(idx.astype(np.int32), NamedSharding(self.mesh, P()))

    def summary(self, test: Mapping[str, float], history: list[dict[str, Any]], *,
                best_epoch: int | None, best_metric: dict[str, Any], stop_reason: str,
                num_params: int, seed: int, epochs_run: int,
                tested_epoch: int | None) -> dict[str, Any]:
        """A run's summary.json (`loop.fit`, and each seed of `loop.fit_seeds`).

        `test` holds the test metrics of the state of epoch `tested_epoch` (the best epoch's,
        unless its checkpoint was damaged or nothing was ever finite), `history` the run's
        records, `epochs_run` the last epoch trained (history may have lost lines).
        """
        return {
            **{f"test/{name}": float(value) for name, value in test.items()},
            "best_epoch": best_epoch,
            "best_metric": best_metric,
            "epochs_run": epochs_run,
            "tested_epoch": tested_epoch,
            "stop_reason": stop_reason,
            "wall_time_s": history[-1]["wall_time_s"] if history else 0.0,
            "num_params": num_params,
            "seed": seed,
            "model": models.describe(self.model, self.dataset.train_x.shape[1:], num_params),
            "dataset": self.dataset.info(),
            "input": self.placement.info(),  # where the training set lived ("device" | "host")
            "devices": [str(d) for d in self.mesh.devices.flat],
        }


def steps_per_epoch(cfg: Config, num_train: int) -> int:
    """Optimizer steps of one epoch: n // batch_size ("shuffle") or `train.steps_per_epoch`."""
    if cfg.train.batching == "full":
        return cfg.train.steps_per_epoch
    steps = num_train // cfg.train.batch_size
    if steps == 0:
        raise ValueError(f"train.batch_size: {cfg.train.batch_size} exceeds the {num_train} "
                         "training examples")
    return steps


PROGRAM_CACHE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class _Program:
    """The compiled-function side of an experiment: what runs of one program share."""

    tx: optax.GradientTransformation
    schedule: Callable[[int], float]
    task: tasks_lib.Task
    epoch_fn: Callable
    epoch_fn_guarded: Callable | None
    evaluate: Callable


_PROGRAMS: collections.OrderedDict[tuple, _Program] = collections.OrderedDict()
_DEVICE_DATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_caches() -> None:
    """Forgets the shared programs and device copies (the next build compiles and transfers)."""
    _PROGRAMS.clear()
    _DEVICE_DATA.clear()


def program_key(cfg: Config, dataset: data_lib.Dataset, mesh: Mesh, total_steps: int,
                placement: input_pipeline.InputPlacement, step_metrics, record_clip: bool) -> tuple:
    """Everything the compiled epoch and evaluation of a run depend on, and nothing else.

    `cfg.optim` is in it whole, so the SAM fields (`optim.sam_*`) are too.
    Not in it: the seed (the init key and the batch order are inputs of the program), the data's
    values, the checkpoint and early-stopping settings, the data source fields.
    """
    t = cfg.train
    shapes = tuple((a.shape, str(a.dtype)) for a in (dataset.train_x, dataset.train_y,
                                                      dataset.val_x, dataset.val_y,
                                                      dataset.test_x, dataset.test_y))
    # An augmentation that pads with the raw zero bakes the normalization into the program.
    fill = (augment_lib.raw_zero(dataset.norm_stats).tobytes()
            if t.augment in augment_lib.USES_NORM_STATS else None)
    return (cfg.model, cfg.optim, total_steps, t.task, t.label_smoothing, t.augment, fill,
            t.augment_magnitude, t.augment_num_ops,
            t.skip_nonfinite, t.guard, t.eval_batch_size, t.unroll, t.grad_accum_steps,
            t.mix, t.mixup_alpha, t.cutmix_alpha, t.mix_switch_prob, t.mix_per_sample,
            placement.placement,
            placement.chunk_steps, mesh, step_metrics, record_clip, shapes)


def _build_program(cfg: Config, mesh: Mesh, total_steps: int,
                   placement: input_pipeline.InputPlacement, step_metrics,
                   record_clip: bool, norm_stats=None) -> _Program:
    model = cfg.model
    task = tasks_lib.make_task(cfg.train.task, cfg.train.label_smoothing)
    tx = optim.make_optimizer(cfg.optim, total_steps=total_steps, record_clip=record_clip)
    schedule = optim.make_schedule(cfg.optim, total_steps=total_steps)
    make_epoch = functools.partial(train_lib.make_train_epoch, model, tx, task=task,
                                   augment_fn=augment_lib.get(cfg.train.augment, norm_stats,
                                                    magnitude=cfg.train.augment_magnitude,
                                                    num_ops=cfg.train.augment_num_ops),
                                   mesh=mesh, step_metrics=step_metrics,
                                   unroll=cfg.train.unroll,
                                   grad_accum_steps=cfg.train.grad_accum_steps,
                                   sam=train_lib.SAM.from_config(cfg.optim),
                                   mix_fn=augment_lib.mixer_from_config(cfg))
    if placement.placement == "device" and cfg.train.unroll:
        # An unrolled epoch-long scan would compile every step: run it in chunks.
        build = lambda **kw: train_lib.in_chunks(make_epoch(**kw), placement.chunk_steps)
    elif placement.placement == "device":
        build = make_epoch
    else:
        stream = functools.partial(input_pipeline.make_streamed_epoch, mesh=mesh,
                                   chunk_steps=placement.chunk_steps)
        build = lambda **kw: stream(make_epoch(gather=False, **kw))
    if not cfg.train.skip_nonfinite:
        epoch_fn, epoch_fn_guarded = build(skip_nonfinite=False, donate=True), None
    elif cfg.train.guard == "inline":
        epoch_fn, epoch_fn_guarded = build(skip_nonfinite=True, donate=True), None
    else:  # "replay": unguarded, keeping the start state, replayed guarded if it must
        epoch_fn = build(skip_nonfinite=False, donate=False)
        epoch_fn_guarded = build(skip_nonfinite=True)
    return _Program(tx=tx, schedule=schedule, task=task, epoch_fn=epoch_fn,
                    epoch_fn_guarded=epoch_fn_guarded,
                    evaluate=train_lib.make_evaluate(model, cfg.train.eval_batch_size, mesh, task,
                                                     unroll=cfg.train.unroll))


def _device_data(dataset: data_lib.Dataset, mesh: Mesh, eval_batch_size: int,
                 placement: str) -> tuple[tuple, tuple, tuple]:
    """(train arrays, val split, test split) of a dataset on the mesh, transferred once."""
    per_dataset = _DEVICE_DATA.setdefault(dataset, {})
    key = (mesh, eval_batch_size, placement)
    if key not in per_dataset:
        replicated = NamedSharding(mesh, P())
        if placement == "device":
            # The training set is replicated: each device gathers its batches locally, then the
            # batch is constrained to be split over "data".
            train_arrays = (distributed.put_global(dataset.train_x, replicated),
                            distributed.put_global(dataset.train_y, replicated))
        else:
            # Host-resident: no device_put of the training set (that is the memory saving).
            train_arrays = (dataset.train_x, dataset.train_y)
        per_dataset[key] = (
            train_arrays,
            train_lib.put_split(dataset.val_x, dataset.val_y, eval_batch_size, replicated),
            train_lib.put_split(dataset.test_x, dataset.test_y, eval_batch_size, replicated))
    return per_dataset[key]


def build_experiment(cfg: Config, dataset: data_lib.Dataset | None = None,
                     mesh: Mesh | None = None, *,
                     step_metrics: train_lib.StepMetrics | None = None,
                     record_clip: bool = False) -> Experiment:
    """Loads data, builds model and optimizer and compiles nothing yet (jit is lazy).

    Args:
      cfg: the parsed config (`config.parse`).
      dataset: a Dataset to use instead of loading `cfg.data` (tests, studies, your own arrays).
      mesh: the device mesh (default: `train.make_mesh(cfg.train.num_devices)`).
      step_metrics: extra per-step metrics computed inside the compiled step (`train.train_step`).
      record_clip: `optim.make_optimizer(..., record_clip=True)`: the optimizer state records each
        step's clip statistics (read them with `clip_recorder.step_metrics`).

    Raises:
      ValueError: the data disagree with the model (classes) or the batch sizes with the devices.
    """
    num_classes = getattr(cfg.model, "num_classes", None)
    classification = cfg.train.task == "classification"
    dataset = dataset if dataset is not None else data_lib.load_dataset(
        cfg.data, expected_classes=num_classes if classification else None)
    if cfg.train.task == "classification" and num_classes != dataset.num_classes:
        raise ValueError(f"model.num_classes: {num_classes} but the dataset {dataset.name!r} "
                         f"has {dataset.num_classes} classes")
    mesh = mesh if mesh is not None else train_lib.make_mesh(cfg.train.num_devices or None)
    n_dev = mesh.devices.size
    for name in ("batch_size", "eval_batch_size"):
        value = getattr(cfg.train, name)
        if cfg.train.batching == "full" and name == "batch_size":
            value = len(dataset.train_y)
        if value % n_dev:
            raise ValueError(f"train.{name}: {value} does not divide over {n_dev} devices; use "
                             f"a multiple of {n_dev}")
        k = cfg.train.grad_accum_steps
        if name == "batch_size" and k > 1 and (value % k or (value // k) % n_dev):
            raise ValueError(f"train.grad_accum_steps: {k} micro-batches of a batch of {value} "
                             f"rows; expected micro-batches of a whole number of rows that "
                             f"divide over {n_dev} devices")
    kind = cfg.train.eval_weights
    if (kind == "ema" and not cfg.optim.ema_decay) or (kind == "swa"
                                                        and not cfg.optim.swa_start_frac):
        from ml_practical.config import ConfigError
        raise ConfigError(f"train.eval_weights: {kind!r} but the run keeps no such average; "
                          "expected optim." + ("ema_decay > 0" if kind == "ema"
                                               else "swa_start_frac > 0") + " or 'last'")
    groups = optim.param_groups_of(cfg.optim)
    if groups.active:  # every rule must name some parameter (shapes only: nothing is computed)
        shapes = jax.eval_shape(
            lambda x: cfg.model.init(jax.random.PRNGKey(0), x, train=False),
            jax.ShapeDtypeStruct((2, *dataset.train_x.shape[1:]), np.float32))
        groups.check(shapes["params"])
    steps = steps_per_epoch(cfg, len(dataset.train_y))
    total_steps = steps * cfg.train.num_epochs
    placement = input_pipeline.resolve_placement(
        cfg.data, dataset.train_x.nbytes + dataset.train_y.nbytes)
    key = program_key(cfg, dataset, mesh, total_steps, placement, step_metrics, record_clip)
    program = _PROGRAMS.pop(key, None)
    if program is None:
        program = _build_program(cfg, mesh, total_steps, placement, step_metrics, record_clip,
                                 norm_stats=dataset.norm_stats)
    _PROGRAMS[key] = program  # most recently used last
    while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
        _PROGRAMS.popitem(last=False)
    train_arrays, val_split, test_split = _device_data(dataset, mesh, cfg.train.eval_batch_size,
                                                       placement.placement)
    return Experiment(
        cfg=cfg, dataset=dataset, model=cfg.model, task=program.task, tx=program.tx,
        schedule=program.schedule, mesh=mesh, epoch_fn=program.epoch_fn,
        epoch_fn_guarded=program.epoch_fn_guarded, evaluate=program.evaluate,
        steps_per_epoch=steps, train_arrays=train_arrays, val_split=val_split,
        test_split=test_split, placement=placement,
    )
