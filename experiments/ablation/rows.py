"""The ablation's rows as data: each names its parent and the dotted config overrides it adds.

The experiments are rows of `EXPERIMENTS`: each names its `parent` and the dotted config overrides
it adds to the parent's, so a row's resolved overrides are the chain from row 1 down to it, and its
*contribution* is its test accuracy minus its parent's (the chapter's "row k minus row k-1").

  #   name             parent           adds                                  chapter expects
  1   small_init       -                N(0, 0.01^2) hidden+output, no BN,    ~96.5%
                                        dropout 0, L2 0, no smoothing
  2   xavier           small_init       Xavier normal hidden+output           ~97.2%
  3   he               xavier           He normal hidden (output stays Xavier) ~97.5%
  4   he_bn            he               BatchNorm before ReLU                 ~98.2%
  5   dropout          he_bn            dropout 0.2                           ~98.3%
  6   l2               dropout          coupled L2 1e-4                       ~98.5%
  7   label_smoothing  l2               label smoothing 0.1                   ~98.6%
  8   augment          label_smoothing  random rotation <= 10 deg + shift <= 2 px    (goal >= 99.0%)
                                        per 28 px of side (MNIST 2 px, digits 0.57 px)
  7a  adamw            label_smoothing  decoupled weight decay 1e-2 for L2
  7b  clip             label_smoothing  global-norm clipping 1.0
  7c  layernorm        label_smoothing  LayerNorm for BatchNorm
  7d  bn_after         label_smoothing  BatchNorm after the ReLU (chapter option B)
  7e  cosine           label_smoothing  1 epoch linear warmup, then cosine to 0

The toolkit's variants (`TOOLKIT`), each one change to row 7, not rows of the chapter's table:
  7f mixup (alpha 0.2)   7g cutmix (alpha 1)   8b trivial_augment   8c rand_augment (2 ops, 0.5)
  7h ema (decay 0.99, evaluated on the EMA)    7i swa (from 50 % of the steps, every 1/4 epoch)
  7j sam (rho 0.05)      7k one_cycle          7l step_decay (x0.1 at 50 %, 75 %)
  7m decay_all (L2 on BN gamma / beta and biases too: the recipe "no decay on norm and bias"
     is row 7 itself, the library's default kernel-only mask)

The default selection is rows 1-8; the 7a-7m and 8b-8c variants run when named in `cfg.only` ("all" runs
every row). Everything the rows do not override comes from the study config, which is the chapter's
setup (experiments/configs/ablation.py).

Decisions:
- adamw: AdamW's decay is multiplied by the learning rate (step -lr * wd * w, as in optax and
  torch), so copying the coupled 1e-4 would shrink weights by 1e-7 per step, i.e. not at all. We
  use wd = 1e-2 (torch.optim.AdamW's default): a weight that gets no gradient shrinks by
  lr * wd = 1e-5 per step, ~10% over 10^4 steps (23 MNIST epochs). There is no exact equivalent of
  coupled L2 inside Adam, whose penalty gradient is divided by each weight's gradient RMS
  (Loshchilov & Hutter 2019); the variant asks "does decoupling help?", not "same strength?".
- cosine: the warmup is one epoch (`Epochs(1)`, resolved to the dataset's steps per epoch) and the
  cosine spans train.num_epochs; early stopping usually ends the run before the cosine reaches 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

from ml_practical.config import Section, field
from ml_practical.multiseed import SEED_MODES


@dataclasses.dataclass(frozen=True)
class AblationStudy(Section):
    """The study's own top-level config fields; every other field is the base training config.

    Attributes:
      seeds: runs every experiment with seeds 0 .. seeds - 1.
      only: comma-separated experiment names; "" = rows 1-8; "all" = every row.
      seed_mode: "sequential" (one `loop.fit` per seed: checkpoints, resume), "vmap" (a row's
        unfinished seeds as one vmapped program, `loop.fit_seeds`), "auto" (vmap on GPU/TPU).
      max_seeds: the adaptive mode's cap (0 or <= seeds: off). After the first `seeds`, every
        comparison still "undecided" (`analysis.inference.decide` at the per-look level, see
        `main.adaptive_alpha`) gets `seed_step` more seeds for both of its rows, and so on, until
        every comparison is decided or its rows reach `max_seeds`.
      seed_step: seeds added per look in the adaptive mode.
      margin_pp: the adaptive mode's equivalence margin in percentage points of test accuracy: a
        comparison whose 95 % CI lies inside +-margin_pp is decided "equivalent" (0: never).
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    only: str
    seed_mode: str = field(choices=SEED_MODES)
    max_seeds: int = field(ge=0, default=0)
    seed_step: int = field(ge=1, default=2)
    margin_pp: float = field(ge=0.0, default=0.0)


@dataclasses.dataclass(frozen=True)
class Epochs:
    """An override value in epochs, resolved to optimizer steps (steps per epoch x `epochs`)."""

    epochs: float

    def resolve(self, steps_per_epoch: int) -> int:
        return max(1, int(round(self.epochs * steps_per_epoch)))


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment of the study.

    Attributes:
      name: identifier used by `cfg.only` and as the run directory name.
      row_id: the chapter's row number ("1".."7"), "8" for augmentation, "7a".. for variants.
      label: the whole setup in words, as the chapter's table would describe it.
      change: what this row changes relative to `parent` (the contribution bar's label).
      overrides: dotted config field -> value, applied on top of the parent's overrides.
      parent: the row this one is compared with, or None for the first row.
      expected_accuracy: the chapter's test accuracy (fraction, MNIST), or None.
      goal_accuracy: a target that is not the chapter's (the issue's 99.0% for augmentation).
    """

    name: str
    row_id: str
    label: str
    change: str
    overrides: Mapping[str, Any]
    parent: str | None = None
    expected_accuracy: float | None = None
    goal_accuracy: float | None = None


_ROWS = (
    Row("small_init", "1", "small random N(0, 0.01^2) init, no BN, no dropout, no L2",
        "small random init",
        {"model.hidden_init": "normal",  # initializers.normal: stddev 0.01 by default
         "model.output_init": "normal",
         "model.norm": "none",
         "model.drop_rate": 0.0,
         "optim.l2": 0.0,
         "train.label_smoothing": 0.0},
        expected_accuracy=0.965),
    Row("xavier", "2", "Xavier init", "Xavier init",
        {"model.hidden_init": "xavier_normal", "model.output_init": "xavier_normal"},
        parent="small_init", expected_accuracy=0.972),
    # The chapter's recipe: He for the ReLU layers, Xavier for the (linear, softmax) output layer.
    Row("he", "3", "He init (Xavier output)", "He init", {"model.hidden_init": "he_normal"},
        parent="xavier", expected_accuracy=0.975),
    Row("he_bn", "4", "He + BatchNorm", "BatchNorm",
        {"model.norm": "batch", "model.norm_position": "before"},
        parent="he", expected_accuracy=0.982),
    Row("dropout", "5", "He + BN + dropout 0.2", "dropout 0.2", {"model.drop_rate": 0.2},
        parent="he_bn", expected_accuracy=0.983),
    Row("l2", "6", "He + BN + dropout 0.2 + L2 1e-4", "L2 1e-4", {"optim.l2": 1e-4},
        parent="dropout", expected_accuracy=0.985),
    Row("label_smoothing", "7", "He + BN + dropout 0.2 + L2 1e-4 + label smoothing 0.1",
        "label smoothing 0.1", {"train.label_smoothing": 0.1},
        parent="l2", expected_accuracy=0.986),
    Row("augment", "8", "row 7 + random rotation (<= 10 deg) and shift (<= 2 px per 28 px)",
        "augmentation", {"train.augment": "shift_rotate"},
        parent="label_smoothing", goal_accuracy=0.990),
    Row("adamw", "7a", "row 7 with decoupled weight decay 1e-2 (AdamW) instead of coupled L2",
        "AdamW for L2", {"optim.name": "adamw", "optim.l2": 0.0, "optim.weight_decay": 1e-2},
        parent="label_smoothing"),
    Row("clip", "7b", "row 7 + global-norm gradient clipping 1.0", "clip 1.0",
        {"optim.clip": "global_norm", "optim.clip_value": 1.0}, parent="label_smoothing"),
    Row("layernorm", "7c", "row 7 with LayerNorm instead of BatchNorm", "LayerNorm for BN",
        {"model.norm": "layer"}, parent="label_smoothing"),
    Row("bn_after", "7d", "row 7 with BatchNorm after the ReLU (option B)", "BN after ReLU",
        {"model.norm_position": "after"}, parent="label_smoothing"),
    Row("cosine", "7e", "row 7 + 1-epoch linear warmup, then cosine decay to 0", "warmup+cosine",
        {"optim.schedule": "warmup_cosine", "optim.warmup_steps": Epochs(1),
         "optim.end_lr_factor": 0.0}, parent="label_smoothing"),
    # The toolkit's pieces, each one change to row 7 (TOOLKIT below; not the chapter's table).
    Row("mixup", "7f", "row 7 + mixup (alpha 0.2, one lam per batch)", "mixup 0.2",
        {"train.mix": "mixup", "train.mixup_alpha": 0.2}, parent="label_smoothing"),
    Row("cutmix", "7g", "row 7 + CutMix (alpha 1)", "CutMix 1.0",
        {"train.mix": "cutmix", "train.cutmix_alpha": 1.0}, parent="label_smoothing"),
    Row("trivial_augment", "8b", "row 7 + TrivialAugment (one op per image, random magnitude)",
        "TrivialAugment", {"train.augment": "trivial_augment"}, parent="label_smoothing"),
    Row("rand_augment", "8c", "row 7 + RandAugment (2 ops per image, magnitude 0.5)",
        "RandAugment 2x0.5", {"train.augment": "rand_augment", "train.augment_num_ops": 2,
                              "train.augment_magnitude": 0.5}, parent="label_smoothing"),
    Row("ema", "7h", "row 7, validated and tested on an EMA of the weights (decay 0.99, BN "
        "recalibrated on 20 batches)", "EMA 0.99",
        {"optim.ema_decay": 0.99, "train.eval_weights": "ema", "train.recalibrate_batches": 20},
        parent="label_smoothing"),
    Row("swa", "7i", "row 7, validated and tested on SWA (from half the run, 4 snapshots per "
        "epoch, BN recalibrated on 20 batches)", "SWA",
        {"optim.swa_start_frac": 0.5, "optim.swa_every_steps": Epochs(0.25),
         "train.eval_weights": "swa", "train.recalibrate_batches": 20},
        parent="label_smoothing"),
    Row("sam", "7j", "row 7 + SAM (rho 0.05) around the same optimizer", "SAM 0.05",
        {"optim.sam_rho": 0.05}, parent="label_smoothing"),
    Row("one_cycle", "7k", "row 7 with a one-cycle schedule (peak = row 7's rate)", "one-cycle",
        {"optim.schedule": "one_cycle"}, parent="label_smoothing"),
    Row("step_decay", "7l", "row 7 with step decay (x0.1 at 50 % and 75 % of the steps)",
        "step decay", {"optim.schedule": "step", "optim.step_boundaries": (0.5, 0.75),
                       "optim.step_factor": 0.1}, parent="label_smoothing"),
    Row("decay_all", "7m", "row 7 with L2 on every parameter, BN's gamma / beta and the biases "
        "too", "L2 on norm + bias too", {"optim.decay_mask": "all"}, parent="label_smoothing"),
)

EXPERIMENTS: dict[str, Row] = {r.name: r for r in _ROWS}
# The regularization / optimization toolkit's rows: row 7 (their common parent) and one piece
# each (experiments/configs/toolkit_lab.py runs them on the lab's CNN and MLP).
TOOLKIT = ("label_smoothing", "mixup", "cutmix", "trivial_augment", "rand_augment", "ema", "swa",
           "sam", "one_cycle", "step_decay", "decay_all")
DEFAULT_EXPERIMENTS = ("small_init", "xavier", "he", "he_bn", "dropout", "l2", "label_smoothing",
                       "augment")


def resolved_overrides(name: str, table: Mapping[str, Row] = EXPERIMENTS) -> dict[str, Any]:
    """The overrides of `name` and all its ancestors, the nearest row winning.

    Returns:
      {dotted field: value}, ordered from the first row's fields to this row's.
    """
    if name not in table:
        raise ValueError(f"only: unknown experiment {name!r}; expected names from {list(table)}")
    chain, seen = [], set()
    row: Row | None = table[name]
    while row is not None:
        if row.name in seen:
            raise ValueError(f"experiments: parent cycle through {row.name!r}")
        seen.add(row.name)
        chain.append(row)
        row = table[row.parent] if row.parent is not None else None
    out: dict[str, Any] = {}
    for r in reversed(chain):
        out.update(r.overrides)
    return out


def select_experiments(only: str | Sequence[str], table: Mapping[str, Row] = EXPERIMENTS
                       ) -> list[str]:
    """Parses `cfg.only`: "" -> the default rows 1-8, "all" -> every row, else comma-separated names.

    Returns:
      The selected names in table order (so each parent runs before its children).

    Raises:
      ValueError: an unknown name, listing the known ones.
    """
    names = [s.strip() for s in only.split(",")] if isinstance(only, str) else list(only)
    names = [n for n in names if n]
    if not names:
        names = [n for n in DEFAULT_EXPERIMENTS if n in table]
    elif names == ["all"]:
        names = list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"only: unknown experiment(s) {unknown}; expected comma-separated names "
                         f"from {list(table)} (empty = {list(DEFAULT_EXPERIMENTS)}, 'all' = every one)")
    return [n for n in table if n in set(names)]


