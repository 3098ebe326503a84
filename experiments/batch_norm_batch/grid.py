"""The study's cells as data: which norm, and which BN batch, gradient batch and device batch.

Three batches, varied independently (`model.ghost_batch_size`, `train.grad_accum_steps`):

  gradient batch  `train.batch_size`: the examples behind one optimizer step (the LR rule uses it)
  device batch    batch_size / grad_accum_steps: what one forward pass holds
  BN batch        the rows BatchNorm takes its statistics over: ghost_batch_size when it is set
                  (and smaller than the device batch), else the device batch

Three parts (a cell shared by two parts is trained once, under the grid's name):

  grid   every norm of NORMS x every batch of the study's `batches`: BN, gradient and device
         batch all equal (what the chapter means by "batch size").
  ghost  BatchNorm only. (a) the gradient batch fixed at `ghost_grad_batch` (128), BN batch =
         ghost size in `ghost_sizes` (2 ... 32; 128 is the grid's cell): the BN batch alone.
         (b) the BN batch fixed at `fixed_bn_batch` (8, ghost batches), the gradient batch
         varied over `batches` >= 8: the gradient batch alone.
  accum  BatchNorm only: gradient batch `accum_batches`, micro-batches (device batch) of
         `fixed_bn_batch` rows by gradient accumulation: against the ghost cell with the same BN
         and gradient batch, the device batch (and the running statistics' update cadence:
         once per micro-batch) alone.

Names: "<norm>/b<gradient batch>" for a grid cell, "batch/b<B>/ghost<g>" and "batch/b<B>/accum<k>"
(k micro-batches) for the others (`cell_name`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

# The norms of the grid: name -> model overrides. GroupNorm at two group counts; with the
# study's widths (8, 16, 32) G = 2 puts 4 / 8 / 16 channels in a group, G = 4 puts 2 / 4 / 8.
# LayerNorm over (C, H, W) is GroupNorm with G = 1 and InstanceNorm is G = C: the two ends.
NORMS: dict[str, dict[str, Any]] = {
    "batch": {"model.norm": "batch"},
    "group2": {"model.norm": "group", "model.num_groups": 2},
    "group4": {"model.norm": "group", "model.num_groups": 4},
    "layer": {"model.norm": "layer", "model.layer_norm_axes": "all"},
    "instance": {"model.norm": "instance"},
    "none": {"model.norm": "none"},
}
PARTS = ("grid", "ghost", "accum")
LR_RULES = ("sqrt", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of the study (trained at every seed).

    Attributes:
      name: `cell_name` of the fields below.
      part: "grid", "ghost" or "accum".
      norm: a NORMS key.
      batch: the gradient batch (train.batch_size).
      ghost: model.ghost_batch_size (0: none).
      accum: train.grad_accum_steps.
    """

    name: str
    part: str
    norm: str
    batch: int
    ghost: int = 0
    accum: int = 1

    @property
    def device_batch(self) -> int:
        return self.batch // self.accum

    @property
    def bn_batch(self) -> int:
        """The rows BatchNorm normalizes over in training (for the other norms, the rows it
        would normalize over: the device batch)."""
        return self.ghost if 0 < self.ghost < self.device_batch else self.device_batch

    @property
    def run_path(self) -> str:
        """<workdir>/runs/<run_path>/seed_<s>: "batch/b128/ghost8" -> "batch/b128_ghost8"."""
        head, _, rest = self.name.partition("/")
        return f"{head}/{rest.replace('/', '_')}"

    def overrides(self, base_lr: float, reference_batch: int, rule: str) -> dict[str, Any]:
        """The dotted overrides of this cell on the study config."""
        return {**NORMS[self.norm], "train.batch_size": self.batch,
                "model.ghost_batch_size": self.ghost, "train.grad_accum_steps": self.accum,
                "optim.learning_rate": scaled_lr(base_lr, self.batch, reference_batch, rule)}


def scaled_lr(base_lr: float, batch: int, reference_batch: int, rule: str) -> float:
    """The learning rate at gradient batch `batch`: base_lr at `reference_batch`, times
    (batch / reference)^(1/2) ("sqrt": the square-root rule for Adam, Malladi et al. 2022, "On
    the SDEs and scaling rules for adaptive gradient algorithms"; the ledger's lr ∝ √batch),
    times batch / reference ("linear": Goyal et al. 2017's rule for SGD), or unscaled."""
    if rule not in LR_RULES:
        raise ValueError(f"lr_rule: unknown {rule!r}; expected one of {list(LR_RULES)}")
    ratio = batch / reference_batch
    return float(base_lr * {"sqrt": math.sqrt(ratio), "linear": ratio, "constant": 1.0}[rule])


def cell_name(norm: str, batch: int, ghost: int = 0, accum: int = 1) -> str:
    """The canonical name: a ghost batch no smaller than the device batch is plain BatchNorm and
    one micro-batch is no accumulation, so such a cell is the grid's."""
    device = batch // accum
    if accum > 1:
        return f"{norm}/b{batch}/accum{accum}"
    if 0 < ghost < device:
        return f"{norm}/b{batch}/ghost{ghost}"
    return f"{norm}/b{batch}"


def build_cells(*, parts: Sequence[str], norms: Sequence[str], batches: Sequence[int],
                ghost_grad_batch: int, ghost_sizes: Sequence[int], fixed_bn_batch: int,
                accum_batches: Sequence[int]) -> dict[str, Cell]:
    """Every cell of the selected parts, each once, in report order (module docstring).

    Raises:
      ValueError: a ghost size that does not divide its gradient batch, or an accumulation
        batch that is not a multiple of `fixed_bn_batch` (naming the study field).
    """
    cells: dict[str, Cell] = {}

    def add(part: str, norm: str, batch: int, ghost: int = 0, accum: int = 1) -> None:
        name = cell_name(norm, batch, ghost, accum)
        if name == f"{norm}/b{batch}":
            part, ghost, accum = "grid", 0, 1
        cells.setdefault(name, Cell(name, part, norm, batch, ghost, accum))

    if "grid" in parts:
        for norm in norms:
            for b in batches:
                add("grid", norm, b)
    if "ghost" in parts:
        for g in ghost_sizes:
            if g < ghost_grad_batch and ghost_grad_batch % g:
                raise ValueError(f"ghost_sizes: {g} does not divide ghost_grad_batch "
                                 f"{ghost_grad_batch}")
            add("ghost", "batch", ghost_grad_batch, ghost=g)
        for b in batches:
            if b >= fixed_bn_batch:
                if b % fixed_bn_batch:
                    raise ValueError(f"fixed_bn_batch: {fixed_bn_batch} does not divide the "
                                     f"batch {b} of `batches`")
                add("ghost", "batch", b, ghost=fixed_bn_batch)
    if "accum" in parts:
        for b in accum_batches:
            if b % fixed_bn_batch:
                raise ValueError(f"accum_batches: {b} is not a multiple of fixed_bn_batch "
                                 f"{fixed_bn_batch}")
            add("accum", "batch", b, accum=b // fixed_bn_batch)
    return cells
