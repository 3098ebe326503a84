"""The SAM x dropout study's rows, comparisons and verdict rules, as data (chapter ★R2).

Foret et al. (2021), "Sharpness-Aware Minimization for Efficiently Improving Generalization"
(ICLR): SAM minimizes max_{||eps|| <= rho} L(w + eps), taking each step's gradient at
w + rho g / ||g||. The chapter's ★R2 asks whether SAM, by finding flatter minima, "reduces the
need for dropout". Four rows cross {SGD, SAM} with {no dropout, dropout p}; every row is SGD with
momentum and the same coupled L2 (`optim.l2`, the gradient gets l2 * w before the optimizer, as
in Foret et al.'s SGD baselines); SAM's radius and the dropout rate are the study's fields:

  row           optim.sam_rho   model.drop_rate
  sgd           0               0
  sgd_dropout   0               p
  sam           rho             0
  sam_dropout   rho             p

Seed s gives every row the same init key (dropout has no parameters, so the same initial
weights) and the same batch order: every comparison is a per-seed paired difference.

Comparisons (`COMPARISONS`), each a per-seed difference of one metric:
  (a) SAM - SGD on lambda_max (power iteration, the ledger's measure), without and with dropout;
  (b) SAM - SGD on test accuracy, without and with dropout;
  (c) the dropout effect under SGD, D_sgd = acc(sgd_dropout) - acc(sgd); under SAM,
      D_sam = acc(sam_dropout) - acc(sam); the interaction D_sam - D_sgd (a difference in
      differences, per seed);
  (d) SAM without dropout against SGD with dropout, acc(sam) - acc(sgd_dropout).
Holm's adjustment is within a family: "sharpness" (a) and "accuracy" (b)-(d).

Verdict rules, fixed before the run (paired-t 95 % CIs over seeds; margin `MARGIN` = 0.5 pp):

EXP-07a, "SAM finds flatter minima" (the ledger's pass): confirmed when the CI of SAM - SGD on
  lambda_max lies below 0 both without and with dropout; refuted when either CI lies above 0;
  partly when one is below 0 and the other straddles 0; inconclusive otherwise.

EXP-07b, "SAM reduces the need for dropout": the question only exists when dropout helps under
  SGD, so
  - confirmed: D_sgd's CI lies above 0, and either the interaction's CI lies below 0 (dropout
    helps less under SAM) or SAM alone is non-inferior to SGD + dropout (the CI of
    acc(sam) - acc(sgd_dropout) lies above -MARGIN);
  - refuted: D_sgd's CI lies above 0, SAM alone is worse than SGD + dropout by more than the
    margin (that CI lies below -MARGIN), and the interaction's CI does not lie below 0;
  - inconclusive otherwise; in particular when D_sgd's CI does not lie above 0 (dropout does not
    measurably help under SGD here, so there is no need for SAM to reduce).
  Decision (2026-12-02): a setup where dropout *hurts* under SGD stays "inconclusive", not
  "refuted". The claim is conditional ("the need for dropout"), and a setup without that need
  cannot speak to it either way; such a setup is answered by running one where dropout helps
  (experiments/configs/sam_dropout_mlp.py), not by reading its sign.

Across setups (`combined_verdict`, the audit's EXP-07 over the CNN and the MLP studies): every
setup confirmed -> confirmed; every setup refuted -> refuted; otherwise partly when any setup
confirms or partly confirms, refuted when some refute and the others are inconclusive, and
inconclusive when every setup is.
"""

from __future__ import annotations

import math

ROWS = {
    "sgd": {"sam": False, "dropout": False},
    "sgd_dropout": {"sam": False, "dropout": True},
    "sam": {"sam": True, "dropout": False},
    "sam_dropout": {"sam": True, "dropout": True},
}

LABELS = {"sgd": "SGD + L2", "sgd_dropout": "SGD + L2 + dropout", "sam": "SAM + L2",
          "sam_dropout": "SAM + L2 + dropout"}

MARGIN = 0.005      # accuracy fraction: 0.5 pp, the non-inferiority margin of EXP-07b

# name -> (family, metric, [(+1 or -1, row), ...], what it asks); a difference is the signed sum
# of the rows' per-seed values.
COMPARISONS = {
    "lambda: sam - sgd": ("sharpness", "lambda_power", [(1, "sam"), (-1, "sgd")],
                          "(a) SAM - SGD on lambda_max, no dropout"),
    "lambda: sam_dropout - sgd_dropout": ("sharpness", "lambda_power",
                                          [(1, "sam_dropout"), (-1, "sgd_dropout")],
                                          "(a) SAM - SGD on lambda_max, with dropout"),
    "acc: sam - sgd": ("accuracy", "test_accuracy", [(1, "sam"), (-1, "sgd")],
                       "(b) SAM - SGD on test accuracy, no dropout"),
    "acc: sam_dropout - sgd_dropout": ("accuracy", "test_accuracy",
                                       [(1, "sam_dropout"), (-1, "sgd_dropout")],
                                       "(b) SAM - SGD on test accuracy, with dropout"),
    "acc: dropout under sgd": ("accuracy", "test_accuracy", [(1, "sgd_dropout"), (-1, "sgd")],
                               "(c) the dropout effect under SGD, D_sgd"),
    "acc: dropout under sam": ("accuracy", "test_accuracy", [(1, "sam_dropout"), (-1, "sam")],
                               "(c) the dropout effect under SAM, D_sam"),
    "acc: interaction": ("accuracy", "test_accuracy",
                         [(1, "sam_dropout"), (-1, "sam"), (-1, "sgd_dropout"), (1, "sgd")],
                         "(c) interaction D_sam - D_sgd (< 0: dropout helps less under SAM)"),
    "acc: sam - sgd_dropout": ("accuracy", "test_accuracy", [(1, "sam"), (-1, "sgd_dropout")],
                               "(d) SAM alone against SGD + dropout"),
}

CLAIMS = {
    "EXP-07a": {"quote": "SAM finds flatter minima", "section": "★R2",
                "criterion": "the top Hessian eigenvalue (power iteration) is lower with SAM, "
                             "with and without dropout"},
    "EXP-07b": {"quote": "SAM ... may reduce the need for dropout", "section": "★R2",
                "criterion": "dropout helps under SGD, and helps less under SAM (interaction "
                             f"< 0) or SAM alone is within {100 * MARGIN:g} pp of SGD + dropout"},
}


def overrides(row: str, rho: float, drop_rate: float) -> dict:
    """A row's dotted overrides of the study's training config."""
    if row not in ROWS:
        raise ValueError(f"row: {row!r}; expected one of {list(ROWS)}")
    r = ROWS[row]
    return {"optim.sam_rho": float(rho) if r["sam"] else 0.0,
            "model.drop_rate": float(drop_rate) if r["dropout"] else 0.0}


def difference(values: dict[str, dict[int, float]], terms) -> tuple[list[int], list[float]]:
    """(seeds, per-seed signed sums) of `terms` over the seeds every row has."""
    seeds = sorted(set.intersection(*(set(values[row]) for _, row in terms)))
    return seeds, [float(sum(sign * values[row][s] for sign, row in terms)) for s in seeds]


def _below(ci, x=0.0) -> bool:
    return math.isfinite(ci[1]) and ci[1] < x


def _above(ci, x=0.0) -> bool:
    return math.isfinite(ci[0]) and ci[0] > x


def flatter_verdict(no_dropout: tuple[float, float], dropout: tuple[float, float]) -> str:
    """EXP-07a from the CIs (low, high) of SAM - SGD on lambda_max without and with dropout."""
    if _above(no_dropout) or _above(dropout):
        return "refuted"
    below = [_below(no_dropout), _below(dropout)]
    if all(below):
        return "confirmed"
    return "partly" if any(below) else "inconclusive"


def need_verdict(d_sgd: tuple[float, float], interaction: tuple[float, float],
                 sam_vs_sgd_dropout: tuple[float, float], margin: float = MARGIN) -> str:
    """EXP-07b from the CIs (low, high) of D_sgd, the interaction and acc(sam) -
    acc(sgd_dropout) (the rule in the module docstring)."""
    if not _above(d_sgd):
        return "inconclusive"
    if _below(interaction) or _above(sam_vs_sgd_dropout, -margin):
        return "confirmed"
    if _below(sam_vs_sgd_dropout, -margin):
        return "refuted"
    return "inconclusive"


def combined_verdict(verdicts) -> str:
    """One verdict from several setups' verdicts of the same claim (the rule in the docstring)."""
    v = list(verdicts)
    if not v:
        return "inconclusive"
    if all(x == v[0] for x in v) and v[0] in ("confirmed", "refuted", "inconclusive", "partly"):
        return v[0]
    if any(x in ("confirmed", "partly") for x in v):
        return "partly"
    if any(x == "refuted" for x in v):
        return "refuted"
    return "inconclusive"
