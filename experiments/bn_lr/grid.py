"""The BN x learning-rate study's grid and its definitions, as data and pure functions.

The grid: every architecture of `ARCHS` x every norm of `NORMS` x every learning rate of a log
grid x every seed. The learning rates are exact powers of ten in `per_decade` steps per decade:

    lr_k = 10 ** (k / per_decade),  k = k_min, ..., k_max      (per_decade = 2: x sqrt(10) steps)

so the ledger's grid "x sqrt(10) steps from 1e-3 to 10" is k = -6 .. 2 at per_decade = 2 (nine
rates). Each run trains the same fixed budget with plain SGD and its last state is tested.

Definitions (one run = one (arch, norm, lr, seed); losses are the training loss in training mode):

* initial loss: the loss of the first step, i.e. of the initial parameters on the first batch
  (recorded by `main.InitialLoss` as "train/initial_loss").
* final train loss / accuracy: the means over the steps of the last epoch trained that the
  non-finite guard applied (the epoch record's "train/loss", "train/accuracy").
* diverged: the guard stopped the run (`train.max_consecutive_skips` non-finite steps in a row:
  stop_reason "non_finite"), or the final train loss is not finite.
* collapsed: the final train accuracy is at most the majority-class share of the training labels
  plus `COLLAPSE_MARGIN`: the network predicts (nearly) one class, as one whose ReLUs all died
  after a too-large step does; its loss then sits near ln K, often below the initial loss.
* stable: not diverged, not collapsed, and the final train loss is below both the initial loss
  and the label entropy H = -sum_k p_k ln p_k of the training labels (the loss of the best
  constant prediction, ~ln 10): the network predicts better than the class frequencies. (The
  initial loss alone is a weak bar: at initialization it is 2.4-2.7 for these networks, above
  ln 10, so a network left at chance by a too-large step can end below it. A network that has
  not yet moved off chance at the smallest rates also counts as not stable; the largest stable
  rate is unaffected unless no rate of the grid is stable.)
* largest stable lr L_stable(arch, norm, seed): the largest grid rate whose run is stable; None
  when no rate is.
* largest lr reaching X, L_X(arch, norm, seed): the largest grid rate whose run's test accuracy is
  >= X (`threshold`); None when no rate reaches X. Neither definition asks the rates below to
  qualify too.
* ratio(arch, seed) = L(batch) / L(none), for L_X and for L_stable, defined when both exist; on
  the grid it is 10 ** (j / per_decade) for an integer j, so "ratio >= 10" means BN's largest rate
  lies at least `per_decade` grid steps above the unnormalized network's.
* censoring: a largest rate equal to the grid's top rate is only a lower bound (the next rate up
  was not tried). A seed's outcome (`seed_outcome`) is ">= factor" when the ratio is at least the
  factor and the unnormalized network is not censored (BN's censoring only makes the true ratio
  larger); "< factor" when it is below the factor and BN's rate is not censored; "undetermined"
  otherwise (a missing L, or a censored one that could change the answer).
* the claim's verdict per architecture (`claim_verdict`): "confirmed" when every seed's outcome
  is ">= factor", "refuted" when every seed's is "< factor", "inconclusive" otherwise (seeds
  disagree or some are undetermined: more seeds, a finer grid or a wider one would settle it).
  Over architectures (`overall_verdict`): confirmed / refuted when all agree, "partly" when some
  confirm and the others refute, else inconclusive.
* best accuracy over the grid (per arch, norm, seed): the test accuracy at the rate with the
  highest final validation accuracy (the first such rate on a tie), so the rate is chosen
  without looking at the test set; the oracle maximum of the test accuracy is reported next to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ARCHS = ("cnn", "resnet")
NORMS = ("batch", "none")
LABELS = {"cnn": "plain CNN", "resnet": "ResNet", "batch": "BatchNorm", "none": "no norm"}
# The ResNet arm takes these fields from the study config's (CNN) model section; the rest are
# the ResNet family's defaults or the study's resnet_* fields.
SHARED_MODEL_FIELDS = ("activation", "hidden_init", "output_init", "bias_init", "bn_momentum",
                       "norm_epsilon", "bn_backward", "conv_backward", "num_classes")
COLLAPSE_MARGIN = 0.01
# Thresholds of the robustness table: the threshold-based ratio counts at other X.
ROBUSTNESS_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)
_TOL = 1e-9


def exponents(lr_min: float, lr_max: float, per_decade: int) -> list[int]:
    """The grid's k values: lr_k = 10 ** (k / per_decade) from lr_min to lr_max inclusive.

    Raises:
      ValueError: lr_min or lr_max is not a grid rate (10 ** (k / per_decade) to 1e-6
        relative), or lr_min > lr_max.
    """
    ks = []
    for name, lr in (("lr_min", lr_min), ("lr_max", lr_max)):
        k = round(per_decade * math.log10(lr))
        if not math.isclose(10 ** (k / per_decade), lr, rel_tol=1e-6):
            raise ValueError(f"{name}: {lr!r} is not on the grid 10 ** (k / {per_decade}); "
                             f"the closest is {10 ** (k / per_decade):.6g}")
        ks.append(k)
    if ks[0] > ks[1]:
        raise ValueError(f"lr_min: {lr_min!r} > lr_max: {lr_max!r}")
    return list(range(ks[0], ks[1] + 1))


def learning_rates(lr_min: float, lr_max: float, per_decade: int) -> list[float]:
    """The grid's rates, smallest first (`exponents`)."""
    return [10 ** (k / per_decade) for k in exponents(lr_min, lr_max, per_decade)]


def lr_name(lr: float) -> str:
    """A rate as run directories and tables write it: 0.00316, 0.1, 3.16, 10."""
    return f"{lr:.3g}"


def is_diverged(run: Mapping[str, Any]) -> bool:
    loss = run.get("final_train_loss")
    return run["stop_reason"] == "non_finite" or loss is None or not math.isfinite(float(loss))


def is_collapsed(run: Mapping[str, Any], majority: float) -> bool:
    acc = run.get("final_train_accuracy")
    return acc is None or not math.isfinite(float(acc)) or float(acc) <= majority + COLLAPSE_MARGIN


def label_entropy(labels) -> float:
    """H = -sum_k p_k ln p_k of integer labels: the cross entropy of predicting their frequencies."""
    counts = np.bincount(np.asarray(labels))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def is_stable(run: Mapping[str, Any], majority: float, entropy: float) -> bool:
    """Not diverged, not collapsed, final train loss below the initial loss and below the label
    entropy `entropy` (module docstring)."""
    if is_diverged(run) or is_collapsed(run, majority):
        return False
    init, final = run.get("initial_loss"), float(run["final_train_loss"])
    return init is not None and math.isfinite(float(init)) and final < float(init) \
        and final < entropy


def largest_lr(runs: Sequence[Mapping[str, Any]], predicate) -> float | None:
    """The largest "lr" among `runs` (one seed's runs over the grid) whose run satisfies
    `predicate`; None when none does."""
    ok = [r["lr"] for r in runs if predicate(r)]
    return max(ok) if ok else None


def largest_stable_lr(runs) -> float | None:
    return largest_lr(runs, lambda r: bool(r["stable"]))


def largest_lr_reaching(runs, threshold: float) -> float | None:
    return largest_lr(runs, lambda r: r["test_accuracy"] is not None
                      and float(r["test_accuracy"]) >= threshold)


def ratio(bn: float | None, none: float | None) -> float | None:
    return None if bn is None or none is None else bn / none


def seed_outcome(bn: float | None, none: float | None, lr_max: float,
                 factor: float = 10.0) -> str:
    """">= factor", "< factor" or "undetermined" for one seed (module docstring: censoring)."""
    if bn is None or none is None:
        return "undetermined"
    r = bn / none
    top_bn = math.isclose(bn, lr_max, rel_tol=1e-6)
    top_none = math.isclose(none, lr_max, rel_tol=1e-6)
    if r >= factor * (1 - _TOL) and not top_none:
        return f">= {factor:g}"
    if r < factor * (1 - _TOL) and not top_bn:
        return f"< {factor:g}"
    return "undetermined"


def claim_verdict(outcomes: Sequence[str], factor: float = 10.0) -> str:
    """Per architecture: every seed ">= factor" -> confirmed; every seed "< factor" -> refuted;
    else inconclusive (also for no seeds)."""
    if outcomes and all(o == f">= {factor:g}" for o in outcomes):
        return "confirmed"
    if outcomes and all(o == f"< {factor:g}" for o in outcomes):
        return "refuted"
    return "inconclusive"


def overall_verdict(verdicts: Sequence[str]) -> str:
    """Over architectures: all confirmed / all refuted; "partly" when each is one of the two and
    both occur; otherwise inconclusive."""
    v = set(verdicts)
    if v == {"confirmed"}:
        return "confirmed"
    if v == {"refuted"}:
        return "refuted"
    if v == {"confirmed", "refuted"}:
        return "partly"
    return "inconclusive"


def best_by_val(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The run of one seed's grid with the highest final validation accuracy (the smallest rate
    on a tie; runs whose validation accuracy is not finite are skipped)."""
    ok = [r for r in sorted(runs, key=lambda r: r["lr"])
          if r.get("val_accuracy") is not None and math.isfinite(float(r["val_accuracy"]))]
    return max(ok, key=lambda r: float(r["val_accuracy"])) if ok else None
