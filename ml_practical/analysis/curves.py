"""Bias-variance diagnosis from loss curves (chapter section 12.8, the Andrew Ng flowchart).

`diagnose(history)` reads a run's per-epoch train / validation losses and returns a `Verdict`:
"diverged", "underfitting", "overfitting" or "good_fit", with the numbers and sentences that decided
it and the chapter's prescriptions for it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

VERDICTS = ("diverged", "underfitting", "overfitting", "good_fit")
REQUIRED_KEYS = ("train/loss", "val/loss")
OPTIONAL_KEYS = ("epoch", "train/accuracy", "val/accuracy")

# Section 12.8.3, "The Andrew Ng Diagnostic Flowchart", in the chapter's order. "diverged" is not in
# the flowchart: it is the precondition the flowchart assumes (the optimizer decreases its own
# objective); its fixes are the chapter's sections 12.7 (clipping) and 12.1 (initialization).
PRESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "diverged": (
        "Lower the learning rate.",
        "Clip gradients by global norm (section 12.7.2; tau = 1.0 is the chapter's default).",
        "Check the initialization (He for ReLU, Xavier for tanh/sigmoid; section 12.1) and add "
        "normalization (BatchNorm/LayerNorm) so activations stay bounded.",
    ),
    "underfitting": (
        "Get a bigger model (more layers, more neurons).",
        "Train longer / reduce the learning rate.",
        "Try a different architecture.",
        "Reduce regularization (weaker L2, lower dropout rate, less label smoothing).",
    ),
    "overfitting": (
        "Get more training data.",
        "Add regularization (L2, dropout).",
        "Use data augmentation.",
        "Use early stopping (restore the best-validation checkpoint).",
        "Reduce model complexity.",
    ),
    "good_fit": (
        "Ship it: both train and validation loss are at acceptable levels (section 12.8.3, step 3).",
    ),
}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of `diagnose`: a kind, the evidence in sentences, the chapter's fixes, the numbers.

    Epoch numbers are the history's "epoch" values when every entry has one, else 1-based positions.
    Losses are those of the history (no smoothing). A "gap" is val loss - train loss at one epoch.
    If the losses become non-finite, the numbers describe the finite epochs before that.

    Attributes:
      kind: one of VERDICTS.
      reasons: human sentences, each citing the numbers that triggered (or cleared) a rule.
      prescriptions: the section 12.8.3 fixes for `kind`.
      num_epochs: number of history entries.
      best_epoch: epoch of the minimum val loss (first one on ties); None if no epoch is finite.
      train_loss_first, train_loss_final, train_loss_min: train loss at the first and last epoch,
        and its minimum.
      val_loss_final, val_loss_min: val loss at the last epoch and its minimum (= at best_epoch).
      gap_at_best, gap_final: val - train at best_epoch and at the last epoch.
      val_rise: (val_loss_final - val_loss_min) / val_loss_min, the relative rise after the minimum.
      train_drop: (train_loss_first - train_loss_min) / train_loss_first, how much train loss fell.
      train_drop_after_best: relative fall of train loss from best_epoch to the end (> 0: kept falling).
      underfit_threshold: the absolute train-loss level above which training counts as high
        (None when neither underfit_train_loss nor chance_loss/num_classes was given).
    """

    kind: str
    reasons: tuple[str, ...]
    prescriptions: tuple[str, ...]
    num_epochs: int
    best_epoch: int | None
    train_loss_first: float
    train_loss_final: float
    train_loss_min: float
    val_loss_final: float
    val_loss_min: float
    gap_at_best: float
    gap_final: float
    val_rise: float
    train_drop: float
    train_drop_after_best: float
    underfit_threshold: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) for results.json."""
        d = dataclasses.asdict(self)
        d["reasons"] = list(self.reasons)
        d["prescriptions"] = list(self.prescriptions)
        return d

    def __str__(self) -> str:
        lines = [f"verdict: {self.kind}"]
        lines += [f"  - {r}" for r in self.reasons]
        lines.append("prescriptions:")
        lines += [f"  - {p}" for p in self.prescriptions]
        return "\n".join(lines)


def _check_range(name: str, value: float, lo: float, hi: float,
                 lo_open: bool, hi_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: {value!r} out of range; expected a number in {interval}")


def _read_history(history: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Validates the history and returns (train_loss, val_loss, epoch_labels)."""
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise ValueError(
            f"history: expected a list of per-epoch dicts with keys {list(REQUIRED_KEYS)}, "
            f"got {type(history).__name__}")
    if len(history) == 0:
        raise ValueError(
            f"history: empty; expected at least one per-epoch dict with keys {list(REQUIRED_KEYS)}")
    train, val = [], []
    for i, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise ValueError(f"history[{i}]: expected a dict, got {type(entry).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ValueError(
                f"history[{i}]: missing keys {missing}; expected keys {list(REQUIRED_KEYS)} "
                f"(optional: {list(OPTIONAL_KEYS)}), got {sorted(entry)}")
        for key, out in (("train/loss", train), ("val/loss", val)):
            try:
                value = float(entry[key])
            except (TypeError, ValueError):
                raise ValueError(
                    f"history[{i}][{key!r}]: expected a number, got {entry[key]!r}") from None
            # The relative rules below measure losses against a floor of zero (cross-entropy >= 0).
            if value < 0:
                raise ValueError(
                    f"history[{i}][{key!r}]: {value} is negative; expected a non-negative loss "
                    "(cross-entropy)")
            out.append(value)
    if all("epoch" in e for e in history):
        try:
            epochs = [int(e["epoch"]) for e in history]
        except (TypeError, ValueError):
            raise ValueError("history[*]['epoch']: expected integers") from None
    else:
        epochs = list(range(1, len(history) + 1))
    return np.asarray(train, np.float64), np.asarray(val, np.float64), epochs


def _rel(num: float, den: float) -> float:
    """num / den for non-negative losses; a zero denominator gives 0 (no change) or inf."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def _f(x: float) -> str:
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "infinitely"


def diagnose(
    history: Sequence[Mapping[str, Any]],
    *,
    num_classes: int | None = None,
    chance_loss: float | None = None,
    underfit_train_loss: float | None = None,
    underfit_fraction: float = 0.5,
    min_train_drop: float = 0.1,
    rise_tol: float = 0.1,
    gap_tolerance: float = 0.5,
    diverge_tol: float = 0.1,
) -> Verdict:
    """Bias-variance verdict from per-epoch train/val losses (section 12.8.2-12.8.3).

    The rules walk the chapter's flowchart in its order, preceded by a sanity check. The first rule
    that fires decides `kind`; the other rules still contribute sentences to `reasons`.

    0. diverged: a loss is NaN/inf, or train loss climbed back up by more than diverge_tol of the
       progress it had made: (final - min) > diverge_tol * (first - min), or it ended above its first
       value without ever falling. The flowchart assumes the optimizer lowers its own objective; when
       it does not, bias and variance cannot be read from the curves. Measuring the climb against the
       progress (not against the minimum) keeps the small relative wobble of a near-zero train loss
       (0.004 -> 0.005 is +25%) from reading as divergence.
    1. underfitting (high bias; step 1 "is training error high?"): either
       a. train loss stays high: min train loss > T, where T = underfit_train_loss if given, else
          underfit_fraction * chance_loss. chance_loss defaults to log(num_classes), the
          cross-entropy of a uniform guess, so the default reads "even at its best the model removed
          less than half of a uniform guess's loss". Without T this check is skipped.
       b. train loss stalled: it fell less than min_train_drop (relative) from the first epoch to its
          minimum (needs >= 2 epochs). The first epoch's train loss is an average over that epoch,
          so it already includes some learning; a model that converges within the first epoch reads
          as stalled: pass min_train_drop=0 to disable.
       Like the flowchart, bias is checked first: a run that is both high-bias and high-variance is
       called underfitting (fix bias first), and the variance evidence is listed in `reasons`.
    2. overfitting (high variance; step 2 "training error low but val error high?"): either
       a. the U-shape (the section 12.8.2 picture): the final val loss is more than (1 + rise_tol)
          times its minimum while train loss kept falling after the val minimum. With early stopping
          the curves extend `patience` epochs past the best epoch; this is exactly the stretch that
          shows the rise, so rise_tol should be below the rise you expect over `patience` epochs.
       b. the gap: (val - train) / val at the last epoch > gap_tolerance. Taking the loss floor
          (Bayes error) as 0, train loss is the bias proxy and the gap the variance proxy (Ng's
          decomposition); the default 0.5 reads "variance exceeds bias".
    3. good_fit (step 3 "both acceptable? ship it"): none of the above.

    Defaults: rise_tol = 0.1 sits above epoch-to-epoch noise of a validation loss on thousands of
    examples (a few %) and below the rises that early stopping with patience 5-20 lets through on an
    overfitting run (tens of %). With label smoothing (section 12.6.3) the train loss cannot fall
    below the smoothed target's entropy, so pass underfit_train_loss above that floor.

    Args:
      history: per-epoch dicts as written to metrics.jsonl, with "train/loss" and "val/loss"
        (non-negative numbers); "epoch" (used for the reported epoch numbers when present in every
        entry), "train/accuracy", "val/accuracy" are optional and ignored by the rules.
      num_classes: K >= 2; sets chance_loss = log(K) when chance_loss is not given.
      chance_loss: the loss of a uniform guess (> 0); must equal log(num_classes) if both are given.
      underfit_train_loss: absolute train-loss level above which training counts as high
        (overrides underfit_fraction * chance_loss).
      underfit_fraction: in (0, 1]; the high-train-loss threshold as a fraction of chance_loss.
      min_train_drop: in [0, 1); the relative fall of train loss below which it has stalled.
      rise_tol: >= 0; the relative rise of the val loss above its minimum that is not noise.
      gap_tolerance: in [0, 1); the largest acceptable share of the final val loss that is gap.
      diverge_tol: >= 0; the share of its progress the train loss may give back before "diverged".

    Returns:
      A Verdict with kind, reasons, prescriptions (PRESCRIPTIONS[kind]) and the key numbers.

    Raises:
      ValueError: on an empty or malformed history (naming the entry and the missing keys) or on
        thresholds outside their ranges.
    """
    train, val, epochs = _read_history(history)

    _check_range("underfit_fraction", underfit_fraction, 0.0, 1.0, True, False)
    _check_range("min_train_drop", min_train_drop, 0.0, 1.0, False, True)
    _check_range("rise_tol", rise_tol, 0.0, math.inf, False, True)
    _check_range("gap_tolerance", gap_tolerance, 0.0, 1.0, False, True)
    _check_range("diverge_tol", diverge_tol, 0.0, math.inf, False, True)
    if num_classes is not None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: {num_classes!r}; expected an integer >= 2")
        if chance_loss is None:
            chance_loss = math.log(num_classes)
        elif not math.isclose(chance_loss, math.log(num_classes), rel_tol=1e-6):
            raise ValueError(
                f"chance_loss: {chance_loss} disagrees with num_classes={num_classes} "
                f"(log K = {math.log(num_classes):.6g}); pass one of them")
    if chance_loss is not None:
        _check_range("chance_loss", chance_loss, 0.0, math.inf, True, True)
    if underfit_train_loss is not None:
        _check_range("underfit_train_loss", underfit_train_loss, 0.0, math.inf, False, True)
        threshold = float(underfit_train_loss)
    elif chance_loss is not None:
        threshold = underfit_fraction * float(chance_loss)
    else:
        threshold = None

    # Numbers come from the finite prefix: after a NaN the curves carry no information.
    finite = np.isfinite(train) & np.isfinite(val)
    n_ok = len(train) if finite.all() else int(np.argmin(finite))
    tr, va = train[:n_ok], val[:n_ok]
    nan = float("nan")
    b = int(np.argmin(va)) if n_ok else 0  # index of the best epoch (first minimum)
    if n_ok == 0:
        numbers = dict(best_epoch=None, train_loss_first=nan, train_loss_final=nan,
                       train_loss_min=nan, val_loss_final=nan, val_loss_min=nan, gap_at_best=nan,
                       gap_final=nan, val_rise=nan, train_drop=nan, train_drop_after_best=nan)
    else:
        numbers = dict(
            best_epoch=epochs[b],
            train_loss_first=float(tr[0]),
            train_loss_final=float(tr[-1]),
            train_loss_min=float(tr.min()),
            val_loss_final=float(va[-1]),
            val_loss_min=float(va[b]),
            gap_at_best=float(va[b] - tr[b]),
            gap_final=float(va[-1] - tr[-1]),
            val_rise=_rel(float(va[-1] - va[b]), float(va[b])),
            train_drop=_rel(float(tr[0] - tr.min()), float(tr[0])),
            train_drop_after_best=_rel(float(tr[b] - tr[-1]), float(tr[b])),
        )

    def verdict(kind: str, reasons: list[str]) -> Verdict:
        return Verdict(kind=kind, reasons=tuple(reasons), prescriptions=PRESCRIPTIONS[kind],
                       num_epochs=len(train), underfit_threshold=threshold, **numbers)

    # --- 0. diverged -------------------------------------------------------------------------------
    if n_ok < len(train):
        bad = " and ".join(f"{k} loss ({arr[n_ok]})" for k, arr in (("train", train), ("val", val))
                           if not np.isfinite(arr[n_ok]))
        return verdict("diverged", [
            f"{bad} became non-finite at epoch {epochs[n_ok]}, after {n_ok} finite epoch(s)"])
    first, last = epochs[0], epochs[-1]
    best = numbers["best_epoch"]
    t_min, t_min_epoch = float(tr.min()), epochs[int(np.argmin(tr))]
    giveback = _rel(float(tr[-1]) - t_min, float(tr[0]) - t_min)
    if giveback > diverge_tol and not math.isfinite(giveback):
        return verdict("diverged", [
            f"train loss never fell below its first value {_f(tr[0])} and ended at {_f(tr[-1])} "
            f"at epoch {last}: the optimizer is not lowering its own objective"])
    if giveback > diverge_tol:
        return verdict("diverged", [
            f"train loss climbed from its minimum {_f(t_min)} at epoch {t_min_epoch} back to "
            f"{_f(tr[-1])} at epoch {last}, giving back {_pct(giveback)} of its fall from "
            f"{_f(tr[0])} (more than diverge_tol={diverge_tol:g}): the optimizer is not lowering "
            "its own objective"])

    # --- evidence for steps 1 and 2 ------------------------------------------------------------------
    train_high = threshold is not None and numbers["train_loss_min"] > threshold
    train_stalled = len(tr) >= 2 and numbers["train_drop"] < min_train_drop
    val_rose = numbers["val_rise"] > rise_tol and numbers["train_drop_after_best"] > 0
    gap_share = _rel(numbers["gap_final"], numbers["val_loss_final"])
    gap_large = gap_share > gap_tolerance

    bias_reasons, var_reasons, ok_reasons = [], [], []
    if threshold is not None:
        src = ("underfit_train_loss" if underfit_train_loss is not None else
               f"{underfit_fraction:g} x chance loss {_f(chance_loss)}")
        sentence = (f"train loss reached at best {_f(numbers['train_loss_min'])}, "
                    f"{'above' if train_high else 'below'} the underfitting threshold "
                    f"{_f(threshold)} ({src})")
        (bias_reasons if train_high else ok_reasons).append(sentence)
    if len(tr) >= 2:
        sentence = (f"train loss fell {_pct(numbers['train_drop'])} from {_f(tr[0])} at epoch {first} "
                    f"to its minimum {_f(numbers['train_loss_min'])}")
        if train_stalled:
            sentence += f" (less than min_train_drop={min_train_drop:g}: training stalled)"
        (bias_reasons if train_stalled else ok_reasons).append(sentence)
    else:
        ok_reasons.append(
            "only one epoch: trends (stalling, a rise after the minimum) cannot be judged")
    if val_rose:
        var_reasons.append(
            f"val loss rose {_pct(numbers['val_rise'])} from its minimum {_f(va[b])} at epoch {best} "
            f"to {_f(va[-1])} at epoch {last} while train loss fell "
            f"{_pct(numbers['train_drop_after_best'])} (from {_f(tr[b])} to {_f(tr[-1])})")
    elif len(tr) >= 2:
        if numbers["val_rise"] > rise_tol:
            ok_reasons.append(
                f"val loss rose {_pct(numbers['val_rise'])} from its minimum {_f(va[b])} at epoch "
                f"{best} to {_f(va[-1])} at epoch {last}, but train loss did not fall after epoch "
                f"{best}, so the curves do not diverge (not the overfitting signature)")
        elif b == len(va) - 1:
            ok_reasons.append(
                f"val loss reached its minimum {_f(va[b])} at the last epoch {last}: it was still "
                "improving, so a longer run (with early stopping) may lower it further")
        else:
            ok_reasons.append(
                f"val loss ended at {_f(va[-1])}, {_pct(numbers['val_rise'])} above its minimum "
                f"{_f(va[b])} at epoch {best} (within rise_tol={rise_tol:g})")
    sentence = (f"generalization gap (val - train) at the end is {_f(numbers['gap_final'])}, "
                f"{_pct(gap_share)} of the final val loss {_f(va[-1])} (gap at the best epoch "
                f"{best}: {_f(numbers['gap_at_best'])})")
    if gap_large:
        var_reasons.append(sentence + f"; more than gap_tolerance={gap_tolerance:g}: variance "
                                      "exceeds the train loss (bias)")
    else:
        ok_reasons.append(sentence)

    # --- 1. bias first, 2. variance, 3. ship it ------------------------------------------------------
    if bias_reasons:
        extra = [r + " (also high variance: re-diagnose once the bias is fixed)" for r in var_reasons]
        return verdict("underfitting", bias_reasons + extra + ok_reasons)
    if var_reasons:
        return verdict("overfitting", var_reasons + ok_reasons)
    return verdict("good_fit", ok_reasons)
