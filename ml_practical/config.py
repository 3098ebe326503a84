"""The run configuration: typed, frozen sections, parsed and checked once, before anything runs.

A config file (`experiments/configs/*.py`) returns an `ml_collections.ConfigDict`; `parse` turns it
into a frozen `Config` whose sections are dataclasses:

  seed            int >= 0
  data            `DataConfig`       where the examples come from, the split, the placement
  model           the model itself: a registered family's linen module (`ml_practical.models`),
                  whose fields are the section's fields (`model.name` picks the family)
  optim           `OptimConfig`      the optax chain (`ml_practical.optim`)
  train           `TrainConfig`      the loop: epochs, batches, loss, guard, logging
  early_stopping  `early_stopping.EarlyStopping`, the patience rule (or `enabled=False`)
  checkpoint      `CheckpointConfig` orbax retention
  study           a study's own fields (a `Section` subclass defined in `experiments/<study>/`)

Every field is declared once, with its default and its check (`fields.field(...)`: type from the
annotation, plus `choices` / bounds), so defaults live in one place and every check gives the same
kind of message: the dotted field, the value, and what is allowed. An unknown field anywhere (a
misspelt `train.lable_smoothing` in a config file, which a locked ConfigDict does not catch, or on
the command line) is an error that suggests the close match. Library functions take these typed
sections, never ConfigDicts.

`to_dict(cfg)` is the resolved config (what `config.json` holds); `override(cfg, {"a.b": v})`
returns a new, re-checked `Config` with dotted fields replaced (a study's rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from ml_practical.fields import (ConfigError, Section, build, check_fields,  # noqa: F401
                                 config_fields, field, section_dict, suggest, unknown_field)
from ml_practical.fields import as_mapping, coerce  # noqa: F401
from ml_practical.fields import hints as fields_hints

# Allowed values, shared with the modules that act on them.
DATA_SOURCES = ("arrays", "cifar10", "cifar100", "digits", "idx", "tfds")
NORMALIZATIONS = ("global", "none", "per_channel", "per_pixel")
PLACEMENTS = ("auto", "device", "host")
OPTIMIZERS = ("adam", "adamw", "momentum", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "step", "one_cycle")
MIXES = ("none", "mixup", "cutmix", "mixup_cutmix")
CLIPS = ("adaptive", "global_norm", "none", "value")
L1_MODES = ("proximal", "subgradient")
DECAY_MASKS = ("all", "kernels")
TASKS = ("binary", "classification", "regression")
BATCHINGS = ("full", "shuffle")
GUARDS = ("inline", "replay")
PROGRESS_MODES = ("always", "auto", "never")
# Top-level fields of a training config, besides a study's own.
SECTIONS = ("seed", "data", "model", "optim", "train", "early_stopping", "checkpoint")


# --------------------------------------------------------------------------- the sections


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Where the examples come from (`ml_practical.data.load_dataset`) and where they live.

    Attributes:
      source: "idx" (an MNIST-format directory), "cifar10" / "cifar100" (the binary version's
        files in data_dir, `ml_practical.cifar`), "digits" (sklearn's bundled 8x8 digits, offline),
        "tfds" (TensorFlow Datasets, an optional extra) or "arrays" (a `data.Dataset` the caller
        passes to `loop.fit(dataset=...)`; a study's synthetic data).
      data_dir: idx / cifar: the directory (cifar: or the official .tar.gz; None or "":
        $ML_PRACTICAL_DATA_DIR); tfds: its data_dir.
      cifar_labels: cifar100: "fine" (100 classes) or "coarse" (20 superclasses).
      cifar_strict: cifar: require the official record counts (False: any whole subset).
      tfds_name: tfds: the dataset name.
      download: tfds: allow download_and_prepare (network); otherwise unprepared data fails fast.
      val_size: validation examples carved from train: a count >= 1 or a fraction in (0, 1).
      split_seed: seed of the train/validation permutation.
      normalize: "global" (one mean/std), "per_channel" (one per channel, over N, H, W: the
        usual CIFAR normalization), "per_pixel", or "none"; statistics from train only.
      limit_train: keep a seeded subset of at most this many training examples (0 = all).
      num_classes: 0 = from the source.
      placement: "device" (the training set on every device, one scan per epoch), "host"
        (streamed in prefetched chunks) or "auto" (device when it fits `device_budget_mb`).
      device_budget_mb: MiB per device the training set may take under "auto".
      chunk_steps: host placement: steps gathered and transferred per chunk; with train.unroll
        (either placement): the steps of each compiled unrolled chunk.
    """

    section: ClassVar[str] = "data"
    source: str = field("idx", choices=DATA_SOURCES)
    data_dir: str | None = None
    cifar_labels: str = field("fine", choices=("coarse", "fine"))
    cifar_strict: bool = True
    tfds_name: str = "mnist"
    download: bool = False
    val_size: int | float = field(5000, gt=0)
    split_seed: int = field(0, ge=0)
    normalize: str = field("global", choices=NORMALIZATIONS)
    limit_train: int = field(0, ge=0)
    num_classes: int = field(0, ge=0)
    placement: str = field("auto", choices=PLACEMENTS)
    device_budget_mb: float = field(1024.0, ge=0)
    chunk_steps: int = field(32, ge=1)

    def check(self):
        if isinstance(self.val_size, float) and not 0.0 < self.val_size < 1.0:
            raise ConfigError(f"data.val_size: {self.val_size} as a fraction must lie in (0, 1)")
        if self.cifar_labels == "coarse" and self.source != "cifar100":
            raise ConfigError(f"data.cifar_labels: 'coarse' exists for source 'cifar100' only, "
                              f"not {self.source!r}")


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """The optax chain of `ml_practical.optim.make_optimizer` (its docstring gives the order).

    Attributes:
      name: "sgd", "momentum" (torch-style heavy ball, dampening 0), "adam", or "adamw" (Adam plus
        `weight_decay`; "adam" with weight_decay > 0 is the same chain). Required.
      learning_rate: peak learning rate. Required.
      momentum: for "momentum".
      b1, b2, eps: for "adam" / "adamw".
      schedule: "constant", "warmup_cosine", "step" (multiply by step_factor at each of
        step_boundaries) or "one_cycle" (Smith & Topin 2019); `optim.make_schedule` gives the
        equations. The first three warm up linearly from 0 over warmup_steps; one_cycle has its
        own rise (onecycle_pct_start) and refuses warmup_steps.
      warmup_steps: linear warmup length in optimizer steps.
      end_lr_factor: warmup_cosine ends at learning_rate * end_lr_factor.
      step_boundaries: "step": the fractions of the run's optimizer steps at which the rate is
        multiplied by step_factor (the ResNet recipe: (0.5, 0.75) with 0.1).
      step_factor: "step": the factor at each boundary, in (0, 1].
      onecycle_pct_start: "one_cycle": the fraction of steps spent rising to learning_rate.
      onecycle_div_factor: "one_cycle": it starts at learning_rate / onecycle_div_factor.
      onecycle_final_div_factor: "one_cycle": it ends at the start value / this.
      clip: "none", "value" (each entry to [-clip_value, clip_value]), "global_norm", or
        "adaptive" (AGC, Brock et al. 2021: each unit's gradient to at most clip_value times its
        weight norm; clip_value ~ 0.01-0.16).
      clip_value: the clipping threshold tau (AGC: the ratio lambda).
      l2: coupled L2 coefficient (gradient l2 * w, before the optimizer).
      weight_decay: decoupled decay (step -lr_t * weight_decay * w, after the optimizer).
      l1: L1 coefficient of sum |w|.
      l1_mode: "subgradient" (g += l1 sign(w)) or "proximal" (soft-threshold: exact zeros).
      decay_mask: "kernels" (leaves named "kernel") or "all" leaves.
      sam_rho: SAM's neighbourhood radius rho (Foret et al. 2021, eq. 2): each step takes the
        gradient at w + eps, eps = rho g / ||g||_2 over the whole gradient pytree, and gives
        that to the chain above (clipping and decay act on it as on a plain gradient). Two
        forward/backward passes per step; BatchNorm's running statistics come from the first
        (`train.train_step`). 0 = off.
      sam_adaptive: ASAM (Kwon et al. 2021, Algorithm 1): eps = rho T^2 g / ||T g||_2 with the
        elementwise T_w = |w| + sam_eta (a scale-invariant neighbourhood; rho is then usually
        10x SAM's). Needs sam_rho > 0. T scales every leaf, biases too (Kwon et al.'s code
        leaves biases unscaled).
      sam_eta: ASAM's eta, which keeps T_w > 0 for zero weights (zero-initialised biases).
      wd_mults: parameter-group rules "REGEX=MULT" on leaf paths ("conv_0/kernel"): the first
        rule that matches a path scales `l2` and `weight_decay` on that leaf by MULT; a leaf no
        rule matches keeps `decay_mask`'s choice (`ml_practical.param_groups`).
      lr_mults: rules "REGEX=MULT": the first match scales the leaf's update (its learning rate)
        by MULT; unmatched leaves 1.
      freeze: regexes of leaves that do not train (zero gradient, zero update, left out of
        clipping's norm). Every rule of the three must match some parameter.
      ema_decay: an exponential moving average of the weights, kept in the optimizer state
        (`ml_practical.averaging.param_ema`); 0 = off, else in (0, 1), e.g. 0.999.
      swa_start_frac: stochastic weight averaging (`averaging.swa`) from this fraction of the
        run's optimizer steps on; 0 = off, else in (0, 1), e.g. 0.75 (Izmailov et al. 2018).
      swa_every_steps: SWA averages the weights every this many steps (e.g. an epoch's).
      plateau_factor: reduce-on-plateau (torch's ReduceLROnPlateau): after each validation, when
        `plateau_monitor` has not improved by more than plateau_min_delta for more than
        plateau_patience epochs, the learning rate's multiplier is multiplied by this factor
        (down to plateau_min_scale). 0 = off, else in (0, 1). The multiplier and the rule's
        counters live in the optimizer state, so checkpoints keep them and resume is exact; it
        multiplies whatever `schedule` gives.
      plateau_patience, plateau_monitor, plateau_mode ("min" / "max"), plateau_min_delta,
        plateau_min_scale: the rule's settings.
    """

    section: ClassVar[str] = "optim"
    name: str = field(choices=OPTIMIZERS)
    learning_rate: float = field(gt=0)
    momentum: float = field(0.9, ge=0, lt=1)
    b1: float = field(0.9, ge=0, lt=1)
    b2: float = field(0.999, ge=0, lt=1)
    eps: float = field(1e-8, gt=0)
    schedule: str = field("constant", choices=SCHEDULES)
    warmup_steps: int = field(0, ge=0)
    end_lr_factor: float = field(0.0, ge=0, le=1)
    step_boundaries: tuple[float, ...] = field((0.5, 0.75), gt=0, lt=1)
    step_factor: float = field(0.1, gt=0, le=1)
    onecycle_pct_start: float = field(0.3, gt=0, lt=1)
    onecycle_div_factor: float = field(25.0, ge=1)
    onecycle_final_div_factor: float = field(1e4, ge=1)
    clip: str = field("none", choices=CLIPS)
    clip_value: float = field(1.0, gt=0)
    l2: float = field(0.0, ge=0)
    weight_decay: float = field(0.0, ge=0)
    l1: float = field(0.0, ge=0)
    l1_mode: str = field("subgradient", choices=L1_MODES)
    decay_mask: str = field("kernels", choices=DECAY_MASKS)
    sam_rho: float = field(0.0, ge=0)
    sam_adaptive: bool = False
    sam_eta: float = field(0.01, ge=0)
    wd_mults: tuple[str, ...] = ()
    lr_mults: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    ema_decay: float = field(0.0, ge=0, lt=1)
    swa_start_frac: float = field(0.0, ge=0, lt=1)
    swa_every_steps: int = field(1, ge=1)
    plateau_factor: float = field(0.0, ge=0, lt=1)
    plateau_patience: int = field(2, ge=0)
    plateau_monitor: str = "val/loss"
    plateau_mode: str = field("min", choices=("min", "max"))
    plateau_min_delta: float = field(0.0, ge=0)
    plateau_min_scale: float = field(0.0, ge=0, le=1)

    def check(self):
        if self.sam_adaptive and not self.sam_rho:
            raise ConfigError("optim.sam_adaptive: True needs optim.sam_rho > 0 (0 turns SAM "
                              "off); expected a radius, e.g. optim.sam_rho=0.5 for ASAM")
        from ml_practical import param_groups  # imports this module: checked lazily

        if list(self.step_boundaries) != sorted(set(self.step_boundaries)):
            raise ConfigError(f"optim.step_boundaries: {tuple(self.step_boundaries)!r}; expected "
                              "strictly increasing fractions of the run, e.g. (0.5, 0.75)")
        if self.schedule == "one_cycle" and self.warmup_steps:
            raise ConfigError(f"optim.warmup_steps: {self.warmup_steps} with schedule "
                              "'one_cycle', which rises over onecycle_pct_start of the run; "
                              "expected 0")
        param_groups.parse_rules(self.wd_mults, "optim.wd_mults")
        param_groups.parse_rules(self.lr_mults, "optim.lr_mults")
        param_groups.parse_freeze(self.freeze)
        if self.plateau_factor > 0 and self.l1 > 0 and self.l1_mode == "proximal":
            raise ConfigError("optim.plateau_factor: reduce-on-plateau with optim.l1_mode="
                              "'proximal' (whose threshold is the schedule's lr * l1); expected "
                              "plateau_factor 0, or l1_mode='subgradient'")
        if self.lr_mults and self.l1 > 0 and self.l1_mode == "proximal":
            raise ConfigError("optim.lr_mults: per-leaf learning rates with optim.l1_mode="
                              "'proximal' (whose threshold is lr * l1 for every leaf); expected "
                              "no lr_mults, or l1_mode='subgradient'")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """The epoch loop (`ml_practical.loop`).

    Attributes:
      num_epochs: the epoch budget.
      batch_size: global batch (split over the devices; a multiple of their number): the
        examples behind one optimizer step (the gradient batch).
      grad_accum_steps: gradient accumulation: each step's batch runs as this many micro-batches
        of batch_size / grad_accum_steps rows, one after the other, and the optimizer gets their
        mean gradient (`train.train_step`). The micro-batch is what a device holds at once and
        what BatchNorm normalizes over (unless `model.ghost_batch_size` cuts it finer); the
        learning-rate schedule and `step` count optimizer steps. 1 = off.
      eval_batch_size: batch of the evaluation scans (likewise).
      task: "classification" (softmax cross entropy, integer labels), "regression" (1/2 squared
        error, real targets) or "binary" (sigmoid cross entropy, 0/1 labels); `ml_practical.tasks`.
      label_smoothing: classification only: a in [0, 1), targets (1 - a) onehot + a / K.
      augment: an `ml_practical.augment.get` name ("none", "shift_rotate", "trivial_augment",
        "rand_augment", ...).
      augment_magnitude, augment_num_ops: "rand_augment"'s magnitude M in [0, 1] and its number
        of ops per image N (`ml_practical.augment_policy`).
      mix: label-mixing augmentation in the step (classification only; `augment.label_mixer`):
        "none", "mixup" (Zhang et al. 2018), "cutmix" (Yun et al. 2019) or "mixup_cutmix" (one
        of the two per batch, CutMix with probability mix_switch_prob, as timm's Mixup). The
        step's targets become soft, lam ~ Beta(alpha, alpha); label_smoothing is then applied
        once, to the mixed targets.
      mixup_alpha, cutmix_alpha: the Beta concentrations (> 0).
      mix_switch_prob: "mixup_cutmix": the probability that a batch gets CutMix.
      mix_per_sample: mixup with one lam per example instead of one per batch (CutMix keeps one
        box per batch, as in the paper's code).
      eval_weights: the weights validation, early stopping and the test evaluate: "last" (the
        trained weights), "ema" or "swa" (the average kept in the optimizer state, `optim.
        ema_decay` / `optim.swa_start_frac`; before SWA's first snapshot, the trained weights).
        Averaged weights get BatchNorm statistics recomputed first (`recalibrate_batches`).
      recalibrate_batches: training batches (the first ones of the stored training set, of
        batch_size rows, without augmentation) over which BatchNorm statistics are recomputed
        for averaged weights (`averaging.recalibrate_batch_stats`); 0 keeps the running ones.
      batching: "shuffle" (a seeded permutation per epoch, n // batch_size steps) or "full" (every
        step the whole training set in its stored order, `steps_per_epoch` steps: full-batch
        gradient descent).
      steps_per_epoch: steps of an epoch with batching "full" (>= 1 there; 0 otherwise).
      skip_nonfinite: skip (and count) steps whose loss or gradient is not finite.
      guard: how the skip is made: "replay" (each epoch runs unguarded and is replayed guarded
        only if a step was non-finite: free when nothing goes wrong) or "inline" (a `lax.cond` in
        every step: for runs where non-finite steps are common, which replay would run twice).
      max_consecutive_skips: stop with "non_finite" after this many skipped steps in a row
        (0 = never stop for skipped steps).
      num_devices: devices of the data-parallel mesh (0 = all).
      stats_every: per-layer activation / gradient statistics every K epochs (0 = off).
      progress: "auto" (a bar when stderr is a terminal), "always" or "never".
      restart: if the workdir holds a run of another config, delete it and start over.
      unroll: unroll the training and evaluation scans (no while loop in the compiled program).
        For convolutional models on CPU: XLA:CPU runs a convolution inside a while-loop body
        about 25x slower than outside one (jax-ml/jax#12868; measured here on a CNN step: 12
        against 300 images/s). Each compiled chunk is data.chunk_steps unrolled steps (keep it
        small, e.g. 8, or compilation grows): a host chunk, or a slice of the epoch's batches
        with data.placement "device" (`train.in_chunks`; the vmapped seeds too); each evaluation
        scan is compiled unrolled. The same steps; the fusion may differ, so results can differ
        from the scanned program's in float32 rounding.
    """

    section: ClassVar[str] = "train"
    num_epochs: int = field(20, ge=1)
    batch_size: int = field(128, ge=1)
    grad_accum_steps: int = field(1, ge=1)
    eval_batch_size: int = field(1000, ge=1)
    task: str = field("classification", choices=TASKS)
    label_smoothing: float = field(0.0, ge=0, lt=1)
    augment: str = "none"
    augment_magnitude: float = field(0.5, ge=0, le=1)
    augment_num_ops: int = field(2, ge=1)
    mix: str = field("none", choices=MIXES)
    mixup_alpha: float = field(0.2, gt=0)
    cutmix_alpha: float = field(1.0, gt=0)
    mix_switch_prob: float = field(0.5, ge=0, le=1)
    mix_per_sample: bool = False
    eval_weights: str = field("last", choices=("last", "ema", "swa"))
    recalibrate_batches: int = field(16, ge=0)
    batching: str = field("shuffle", choices=BATCHINGS)
    steps_per_epoch: int = field(0, ge=0)
    skip_nonfinite: bool = True
    guard: str = field("replay", choices=GUARDS)
    max_consecutive_skips: int = field(20, ge=0)
    num_devices: int = field(0, ge=0)
    stats_every: int = field(0, ge=0)
    progress: str = field("auto", choices=PROGRESS_MODES)
    restart: bool = False
    unroll: bool = False

    def check(self):
        from ml_practical import augment  # jax; config stays importable without it until here
        if self.augment not in augment.NAMES:
            raise ConfigError(f"train.augment: unknown {self.augment!r}; expected one of "
                              f"{list(augment.NAMES)}")
        if self.batching == "full" and self.steps_per_epoch < 1:
            raise ConfigError(f"train.steps_per_epoch: {self.steps_per_epoch}; batching 'full' "
                              "needs the number of steps of an epoch, expected an integer >= 1")
        if self.batching == "shuffle" and self.steps_per_epoch:
            raise ConfigError(f"train.steps_per_epoch: {self.steps_per_epoch}; with batching "
                              "'shuffle' an epoch is one pass over the data, expected 0")
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(f"train.grad_accum_steps: {self.grad_accum_steps} does not divide "
                              f"train.batch_size {self.batch_size}; expected a divisor of it")
        if self.label_smoothing and self.task != "classification":
            raise ConfigError(f"train.label_smoothing: {self.label_smoothing}; only the "
                              f"'classification' task smooths labels, not {self.task!r}")
        if self.mix != "none" and self.task != "classification":
            raise ConfigError(f"train.mix: {self.mix!r} mixes class labels; the task is "
                              f"{self.task!r}, expected 'classification' or mix 'none'")
        if self.mix_per_sample and self.mix != "mixup":
            raise ConfigError(f"train.mix_per_sample: True with mix {self.mix!r}; one lam per "
                              "example is mixup's (CutMix keeps one box per batch); expected "
                              "mix 'mixup'")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """Orbax checkpoints (`ml_practical.checkpointing`, `loop.fit`).

    Attributes:
      keep_latest: steps kept for resuming (the newest N).
      keep_best: steps kept for restoring the best (the K most recent early-stopping bests).
      every: save every N epochs; 1 saves every epoch, 0 only the run's last epoch. The last
        epoch is always saved. Between saves the loop keeps the best state on the device and
        writes it (as its own step) at the next save if it is not on disk yet. A run killed
        between saves resumes from the last one and trains the epochs after it again,
        bit-identically (batch order and random keys are functions of the seed and the step).
      asynchronous: write each save in the background while the next epoch trains (orbax's async
        checkpointing); the run waits for the last write before it restores and reports. A run
        killed during a write resumes from the step before it, as with `every` > 1.
    """

    section: ClassVar[str] = "checkpoint"
    keep_latest: int = field(2, ge=1)
    keep_best: int = field(1, ge=1)
    every: int = field(1, ge=0)
    asynchronous: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    """A parsed training config. Build it with `parse`; replace fields with `override`.

    `model` is the model module itself (its fields are the section's), `model_name` its family.
    `study` holds a study's own fields (None for a plain run).
    """

    seed: int
    data: DataConfig
    model: Any
    model_name: str
    optim: OptimConfig
    train: TrainConfig
    early_stopping: Any
    checkpoint: CheckpointConfig
    study: Any = None


def _parse_seed(value: Any) -> int:
    return coerce(value, int, "seed", {"ge": 0})


def parse(raw: Any, *, study: type | None = None) -> Config:
    """Checks a whole training config once and returns its typed, frozen form.

    Args:
      raw: an `ml_collections.ConfigDict` (from a config file and the command line) or a mapping
        with the sections of the module docstring; omitted sections and fields take their
        defaults (the model family's own, for `model`).
      study: the dataclass of a study's top-level fields (e.g. `seeds`, `only`), or None; every
        top-level field that is neither a section nor one of these is an error.

    Returns:
      A `Config`.

    Raises:
      ConfigError: one line naming the dotted field, its value and what is allowed, or the
        unknown field and its close match.
    """
    from ml_practical import models  # flax: imported when a config is parsed, not before
    from ml_practical.early_stopping import EarlyStopping

    values = as_mapping(raw, "")
    study_names = [f.name for f in config_fields(study)] if study is not None else []
    known = list(SECTIONS) + study_names
    for key in values:
        if key not in known:
            raise unknown_field("", key, known)
    model_raw = as_mapping(values.get("model", {}), "model")
    family = model_raw.pop("name", "mlp")
    model = models.build_model(family, model_raw)
    study_values = {k: values[k] for k in study_names if k in values}
    return Config(
        seed=_parse_seed(values.get("seed", 0)),
        data=build(DataConfig, values.get("data", {})),
        model=model, model_name=family,
        optim=build(OptimConfig, values.get("optim", {})),
        train=build(TrainConfig, values.get("train", {})),
        early_stopping=build(EarlyStopping, values.get("early_stopping", {}), "early_stopping"),
        checkpoint=build(CheckpointConfig, values.get("checkpoint", {})),
        study=build(study, study_values, "") if study is not None else None)


def parse_study(raw: Any, study: type) -> Any:
    """A config that is only a study's fields (no training sections): its typed, frozen form."""
    return build(study, raw, "")


def defaults(family: str = "mlp", study: type | None = None):
    """A ConfigDict with every field of every section at its default: what config files start from.

    A config file states only what its run changes (`cfg = config.defaults(); cfg.model.norm =
    "batch"; ...`), so each default is written once, here in the section classes, and every field
    exists in the (locked) ConfigDict, so any of them can be overridden on the command line.
    Required fields without a default (optim.name, optim.learning_rate, early_stopping.mode,
    early_stopping.monitor, early_stopping.patience) are typed placeholders the file must set;
    fields whose default is None are typed placeholders too.

    Args:
      family: the model family (`ml_practical.models.FAMILIES`) whose fields the model section has.
      study: a study's dataclass; its fields are added at the top level at their defaults.
    """
    from ml_practical import models
    from ml_practical.early_stopping import EarlyStopping

    cfg = study_defaults(study) if study is not None else _new_configdict()
    cfg.seed = 0
    cfg.data = study_defaults(DataConfig)
    cfg.model = study_defaults(models.FAMILIES[family])
    cfg.model.name = family
    cfg.optim = study_defaults(OptimConfig)
    cfg.train = study_defaults(TrainConfig)
    cfg.early_stopping = study_defaults(EarlyStopping)
    cfg.checkpoint = study_defaults(CheckpointConfig)
    return cfg


def with_study(cfg, study: type):
    """Adds a study's fields, at their defaults, to a training ConfigDict (e.g. one from
    `defaults` or another config file), and returns it."""
    extra = study_defaults(study)
    with cfg.unlocked():
        for name in extra:
            cfg[name] = extra[name]
    return cfg


def _new_configdict():
    import ml_collections
    return ml_collections.ConfigDict()


def study_defaults(cls: type):
    """A ConfigDict of a section class's fields at their defaults (nested sections included).

    What a study's config file starts from (a study whose config has no training sections, or a
    section of `defaults`); required fields and None defaults become typed placeholders. A study's
    own fields have no defaults (its config file is where their values live): the file sets each.
    """
    from ml_collections import config_dict

    declared = fields_hints(cls)
    out = _new_configdict()
    for f in config_fields(cls):
        kind = declared[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            value = study_defaults(kind)  # a nested section, with its own defaults
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.default is not dataclasses.MISSING and f.default is not None:
            value = f.default
        else:  # required, or None by default: a placeholder of the declared type
            value = config_dict.placeholder(_placeholder_type(declared[f.name]))
        out[f.name] = value
    return out


def _placeholder_type(hint: Any) -> type:
    """The Python type of a ConfigDict placeholder for a field annotation (int | None -> int)."""
    import typing as t
    args = [a for a in t.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    return base if isinstance(base, type) else object


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as nested plain values (`config.json`; compared on resume)."""
    out = {"seed": cfg.seed, "data": section_dict(cfg.data),
           "model": {"name": cfg.model_name, **section_dict(cfg.model)},
           "optim": section_dict(cfg.optim), "train": section_dict(cfg.train),
           "early_stopping": section_dict(cfg.early_stopping),
           "checkpoint": section_dict(cfg.checkpoint)}
    if cfg.study is not None:
        out.update(section_dict(cfg.study))
    return out


def override(cfg: Config, overrides: Mapping[str, Any], *, study: type | None = None,
             what: str = "override") -> Config:
    """A new `Config` with dotted fields replaced and everything checked again.

    Args:
      cfg: the base config.
      overrides: {"model.norm": "batch", "seed": 3, ...}; a field that does not exist is an error.
      study: the study class to keep `cfg.study` under (None drops the study fields).
      what: names the source of the overrides in messages (e.g. "row 'he_bn'").

    Raises:
      ConfigError: an unknown dotted field (with the close match) or a bad value.
    """
    tree = to_dict(cfg)
    if study is None:
        tree = {k: v for k, v in tree.items() if k in SECTIONS}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for depth, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{what}: {key}: {'.'.join(parents[:depth + 1])} is not a "
                                  "section")
            node = node[part]
        if leaf not in node and not (parents == ["model"] and leaf == "name"):
            prefix = ".".join(parents)
            raise ConfigError(f"{what}: {unknown_field(prefix, leaf, list(node))}")
        node[leaf] = value
    try:
        return parse(tree, study=study)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
