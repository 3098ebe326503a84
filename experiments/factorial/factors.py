"""The study's six factors and its cells as data: each factor's two levels come from the ablation's rows.

  #  name       off (level 0)                        on (level 1)                  ablation row
  A  init       N(0, 0.01^2) hidden and output        He hidden, Xavier output      3 he
  B  bn         no normalization                      BatchNorm before the ReLU     4 he_bn
  C  dropout    drop rate 0                           0.2                           5 dropout
  D  l2         coupled L2 0                          1e-4                          6 l2
  E  smoothing  label smoothing 0                     0.1                           7 label_smoothing
  F  augment    none                                  "shift_rotate"                8 augment

The on level of a factor is what its ablation row (`experiments/ablation/rows.py`) resolves its
fields to, the off level what row 1 (small_init) does (augmentation, which row 1 does not set, is
"none"). So the all-off cell is the ablation's row 1 and the cell with the first r factors on is
its row r + 2 (row 2, Xavier, is no cell: the init factor goes from row 1's to row 3's init).
A cell is a `rows.Row` with parent None whose overrides set every factor's fields, so the
ablation's runner trains it (`ablation.main.train_rows(..., table=...)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from experiments.ablation.rows import EXPERIMENTS, Row, resolved_overrides


@dataclasses.dataclass(frozen=True)
class Factor:
    """One two-level factor.

    Attributes:
      name: identifier (in `factors`, cell names and tables).
      label: what switching it on does, in words.
      row: the ablation row that switches it on.
      off, on: dotted config field -> value at level 0 / 1.
    """

    name: str
    label: str
    row: str
    off: Mapping[str, Any]
    on: Mapping[str, Any]


def _factor(name: str, label: str, row: str, keys: Sequence[str],
            off_default: Mapping[str, Any] | None = None) -> Factor:
    on_all, off_all = resolved_overrides(row), resolved_overrides("small_init")
    off = {k: off_all[k] for k in keys if k in off_all}
    off.update({k: v for k, v in (off_default or {}).items() if k not in off})
    return Factor(name, label, row, off, {k: on_all[k] for k in keys})


# The ablation's order: factor i is switched on by ablation row ABLATION_ROW_IDS[i].
FACTORS: tuple[Factor, ...] = (
    _factor("init", "He init (Xavier output)", "he", ("model.hidden_init", "model.output_init")),
    # norm_position only matters with a norm: the off level leaves it at the base config's.
    _factor("bn", "BatchNorm", "he_bn", ("model.norm", "model.norm_position")),
    _factor("dropout", "dropout 0.2", "dropout", ("model.drop_rate",)),
    _factor("l2", "L2 1e-4", "l2", ("optim.l2",)),
    _factor("smoothing", "label smoothing 0.1", "label_smoothing", ("train.label_smoothing",)),
    _factor("augment", "augmentation", "augment", ("train.augment",),
            off_default={"train.augment": "none"}),
)
BY_NAME: dict[str, Factor] = {f.name: f for f in FACTORS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
FIRST_ROW = "small_init"


def select_factors(factors: str) -> list[str]:
    """Parses `factors`: "" -> all six; else comma-separated names, returned in FACTORS order.

    Raises:
      ValueError: an unknown or repeated name, or fewer than two factors.
    """
    names = [s.strip() for s in factors.split(",") if s.strip()]
    if not names:
        return list(NAMES)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"factors: unknown {unknown}; expected comma-separated names from "
                         f"{list(NAMES)} ('' = all)")
    if len(set(names)) != len(names):
        raise ValueError(f"factors: {names} names a factor twice; expected distinct names")
    if len(names) < 2:
        raise ValueError(f"factors: {names}; expected at least two factors (an interaction)")
    return [n for n in NAMES if n in names]


def cell_name(on: Sequence[str]) -> str:
    """"init+bn" for a cell with those factors on (FACTORS order), "none" for the all-off cell."""
    return "+".join(n for n in NAMES if n in set(on)) or "none"


def ablation_row(levels: Mapping[str, int]) -> str | None:
    """The ablation row whose setup this cell is (all six factors' levels given), or None."""
    bits = [int(levels[n]) for n in NAMES]
    r = sum(bits)
    if bits != [1] * r + [0] * (len(NAMES) - r):
        return None
    return FIRST_ROW if r == 0 else FACTORS[r - 1].row


def cell_table(levels: np.ndarray, active: Sequence[str]) -> dict[str, Row]:
    """The design's cells as ablation rows: {cell name: Row}, in design order.

    Args:
      levels: (n_cells, len(active)) 0 / 1 levels of the active factors.
      active: the factors the design varies; the others are held at their off level.
    """
    table: dict[str, Row] = {}
    for i, cell in enumerate(np.asarray(levels)):
        level = {n: 0 for n in NAMES} | {n: int(v) for n, v in zip(active, cell)}
        overrides: dict[str, Any] = {}
        for f in FACTORS:
            overrides.update(f.on if level[f.name] else f.off)
        on = [n for n in NAMES if level[n]]
        row = ablation_row(level)
        name = cell_name(on)
        label = ", ".join(BY_NAME[n].label for n in on) or "every factor off"
        if row is not None:
            label += f" (= ablation row {EXPERIMENTS[row].row_id}, {row})"
        table[name] = Row(name, f"c{i:02d}", label, "", overrides, parent=None)
    return table
