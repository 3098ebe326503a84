"""The lab on a CNN as data: the two families, the expectations tested, the study's own fields.

The rows themselves are the ablation's (`experiments.ablation.rows.EXPERIMENTS`: the chapter's 7
rows and row 8, augmentation); this module only says on which networks they run:

  cnn  the config's own model section (a `models.CNN` in every lab_cnn config);
  mlp  `models.MLP` with hidden widths `mlp_widths` and the CNN's values of every field the two
       families share (`SHARED_MODEL_FIELDS`: the rows' init, norm, norm position and dropout, and
       the norm's momentum / epsilon / backward), on the same data, optimizer, epochs, batch,
       stopping rule and seeds. Only `MLP_TRAINING` differs: the unrolled, host-streamed epochs that
       XLA:CPU convolutions need are switched off for the MLP (the same steps on the same batches,
       compiled as one scan).

A step is a row against its parent (row k vs k-1, and 8 vs 7). `EXPECTATIONS` are the
hypotheses about how a step's effect differs between the families that the study tests: the
CNN's step minus the MLP's step, seed by seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from experiments.ablation.rows import EXPERIMENTS, Row
from ml_practical.config import ConfigError, Section, field
from ml_practical.multiseed import SEED_MODES

FAMILIES = ("cnn", "mlp")
# Model fields the MLP takes from the CNN (both families have them, with the same meaning).
# layer_norm_axes is left out: its default differs by family ("all" for a conv map, "features").
SHARED_MODEL_FIELDS = ("num_classes", "activation", "norm", "norm_position", "drop_rate",
                       "dropout_sampler", "hidden_init", "output_init", "bias_init", "use_bias",
                       "num_groups", "bn_momentum", "norm_epsilon", "bn_backward",
                       "ghost_batch_size", "bias_before_bn")
# What the MLP family changes besides its model: no unrolled chunks, and the training set on the
# device when it fits (the CPU configs stream it from the host for the CNN).
MLP_TRAINING = {"train.unroll": False, "data.placement": "auto"}
# Sources whose accuracies the chapter's numbers (MNIST) do not describe.
NOT_MNIST = ("cifar10", "cifar100")


@dataclasses.dataclass(frozen=True)
class Expectation:
    """A hypothesis about one step on the two families.

    Attributes:
      row: the step's row (compared with its parent).
      sign: "+" if the step should help the CNN more than the MLP (CNN step - MLP step > 0),
        "-" if less.
      text: the hypothesis in words.
      why: the reason it is expected.
    """

    row: str
    sign: str
    text: str
    why: str


EXPECTATIONS = (
    Expectation("he_bn", "+", "BatchNorm helps the CNN more than the MLP",
                "a conv net without normalization has many layers of small fan-in whose scale "
                "drifts; BatchNorm over N, H, W also averages over the feature map"),
    Expectation("augment", "+", "augmentation helps the CNN more than the MLP",
                "shifts and rotations are the variation a conv net's weight sharing can absorb; "
                "an MLP has to learn each shifted copy from its pixels"),
    Expectation("dropout", "-", "dropout helps the CNN less than the MLP",
                "the CNN has few parameters (one Dense head after the average pool, where its "
                "dropout acts) and is far from memorizing the training set"),
)


@dataclasses.dataclass(frozen=True)
class LabCnnStudy(Section):
    """The study's own top-level config fields; every other field is the CNN's training config.

    Attributes:
      seeds: every row of every family runs with seeds 0 .. seeds - 1 (seed s: the same init key,
        dropout / augmentation keys and batch order in every row of a family).
      only: comma-separated row names of `experiments.ablation.rows` ("" = rows 1-8).
      families: comma-separated families of `FAMILIES` to run, in this order.
      seed_mode: "sequential", "vmap" or "auto" (as in the ablation: `loop.fit_seeds`).
      mlp_widths: the MLP family's hidden widths.
      augment: row 8's augmentation (an `ml_practical.augment` name); "" keeps the ablation
        row's own ("shift_rotate", for 28 x 28 digits).
      margin_pp: the equivalence margin (percentage points of test accuracy) of the step
        decisions: a step whose 95 % interval lies inside +-margin_pp is "equivalent"
        (`analysis.inference.decide`); 0: never.
    """

    section: ClassVar[str] = ""
    seeds: int = field(ge=1)
    only: str
    families: str
    seed_mode: str = field(choices=SEED_MODES)
    mlp_widths: tuple[int, ...] = field(ge=1)
    augment: str
    margin_pp: float = field(ge=0.0)

    def check(self):
        from ml_practical import augment  # jax; the config stays importable without it

        chosen = self.family_names()
        unknown = [f for f in chosen if f not in FAMILIES]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            raise ConfigError(f"families: {self.families!r}; expected distinct comma-separated "
                              f"names from {list(FAMILIES)}")
        if self.augment and self.augment not in augment.NAMES:
            raise ConfigError(f"augment: unknown {self.augment!r}; expected '' (row 8's own) or "
                              f"one of {list(augment.NAMES)}")
        if not self.mlp_widths:
            raise ConfigError("mlp_widths: (); expected at least one hidden width")

    def family_names(self) -> list[str]:
        return [s.strip() for s in self.families.split(",") if s.strip()]


def row_table(augment: str = "", *, source: str = "idx") -> dict[str, Row]:
    """The ablation's rows as this study runs them.

    Args:
      augment: row 8's augmentation ("" keeps the ablation's).
      source: the data source; on CIFAR the rows carry no chapter accuracy (those are MNIST's).

    Returns:
      {name: Row}: `EXPERIMENTS` itself when nothing changes, else a copy with the changed rows.
    """
    table: dict[str, Row] = dict(EXPERIMENTS)
    if augment and augment != EXPERIMENTS["augment"].overrides["train.augment"]:
        table["augment"] = dataclasses.replace(
            EXPERIMENTS["augment"], label=f"row 7 + augmentation {augment!r}",
            overrides={"train.augment": augment})
    if source in NOT_MNIST:
        table = {k: dataclasses.replace(r, expected_accuracy=None, goal_accuracy=None)
                 for k, r in table.items()}
    return table


def chapter_steps(table: Mapping[str, Row] = EXPERIMENTS) -> dict[str, float]:
    """{row: the chapter's step (its accuracy minus its parent's, MNIST)} for the rows that have
    both numbers (rows 2-7)."""
    out = {}
    for name, row in EXPERIMENTS.items():
        parent = EXPERIMENTS.get(row.parent) if row.parent else None
        if name in table and parent is not None and row.expected_accuracy is not None \
                and parent.expected_accuracy is not None:
            out[name] = row.expected_accuracy - parent.expected_accuracy
    return out
