"""Diagnostics for training runs: a bias-variance verdict from loss curves, and seed-to-seed statistics.

Sections (each self-contained; add new diagnostics as new sections):
  1. Bias-variance diagnosis from loss curves (chapter section 12.8, the Andrew Ng flowchart).
  2. Seed statistics for comparing experiments (mean, sample std, "is this difference real?").
  3. Activation and gradient statistics per layer, captured through flax's "intermediates"
     (sections 12.1 and 15.4's "track gradient norms per layer"), cheap enough to log every K epochs.
  4. Symmetry between hidden units (section 12.1.2): how far apart the units of a layer are.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ml_practical import losses


# ==================================================================================================
# 1. Bias-variance diagnosis from loss curves (section 12.8)
# ==================================================================================================

KINDS = ("diverged", "underfitting", "overfitting", "good_fit")
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
      kind: one of KINDS.
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


# ==================================================================================================
# 2. Seed statistics for comparing experiments
# ==================================================================================================

def summarize_seeds(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of one metric over seeds.

    Args:
      values: one number per seed (e.g. final test accuracy), at least one.

    Returns:
      (mean, std) as floats; std is the unbiased-variance estimate sqrt(sum (x - mean)^2 / (n - 1)),
      and 0.0 for a single seed (no spread can be estimated from one run).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("values: empty; expected one number per seed (at least one)")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return float(np.mean(x)), std


def is_significant(values_a: Sequence[float], values_b: Sequence[float]) -> bool:
    """Whether two experiments differ by more than their seed-to-seed spread.

    Rule: |mean_a - mean_b| > std_a + std_b (sample stds, ddof=1), i.e. the mean +- 1 std error bars
    drawn on the ablation plots do not overlap. For equal stds s and n = 3 seeds each this is a Welch
    t statistic > 2 s / sqrt(2 s^2 / 3) = 2.45 with 4 degrees of freedom (two-sided p ~ 0.07): a
    reading rule for a handful of seeds, not a formal test. With fewer than two seeds on either side
    there is no spread estimate, so nothing is called significant (returns False).

    Args:
      values_a, values_b: one number per seed for each experiment.

    Returns:
      True when the difference of means exceeds the sum of the two sample stds.
    """
    if len(values_a) == 0 or len(values_b) == 0:
        raise ValueError("values_a/values_b: empty; expected one number per seed for each experiment")
    if len(values_a) < 2 or len(values_b) < 2:
        return False
    mean_a, std_a = summarize_seeds(values_a)
    mean_b, std_b = summarize_seeds(values_b)
    return abs(mean_a - mean_b) > std_a + std_b


# ==================================================================================================
# 3. Activation and gradient statistics (sections 12.1.3-12.1.5, 13.1, and 15.4's "track gradient
#    norms per layer")
# ==================================================================================================

# The library's models sow the output of hidden layer i's Dense as `preact_{i}` and the output of its
# activation (after a norm placed "after") as `act_{i}`, both in Dense `dense_{i}`'s module. The
# statistics are keyed `dense_{i}` (prefixed by the path of a nested module), so they join with
# `grad_norms`' per-module keys in a metrics record.
PREACT_PREFIX = "preact_"
ACT_PREFIX = "act_"
LAYER_PREFIX = "dense_"
# The fixed batch of the per-epoch statistics: enough samples that "zero for every sample" is a
# meaningful dead-unit test and the variance of 512 x width entries is stable to ~1e-3.
STATS_BATCH_SIZE = 512


def _natural_key(name: str) -> tuple:
    """Sort "dense_2" before "dense_10"."""
    parts = []
    for part in name.split("/"):
        stem, _, index = part.rpartition("_")
        parts.append((stem, int(index)) if index.isdigit() else (part, -1))
    return tuple(parts)


def _sown_by_layer(intermediates: Mapping[str, Any]) -> dict[str, dict[str, jax.Array]]:
    """{layer: {"preact": x, "act": x}} from an "intermediates" collection (any nesting)."""
    out: dict[str, dict[str, jax.Array]] = {}

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for name, value in tree.items():
            if isinstance(value, Mapping):
                walk(value, (*path, name))
                continue
            for prefix, kind in ((PREACT_PREFIX, "preact"), (ACT_PREFIX, "act")):
                if name.startswith(prefix):
                    layer = "/".join((*path, LAYER_PREFIX + name[len(prefix):]))
                    # `sow` appends one entry per call; a module called twice reports its last call.
                    out.setdefault(layer, {})[kind] = value[-1]

    walk(intermediates, ())
    return {k: out[k] for k in sorted(out, key=_natural_key)}


def _apply_with_intermediates(model: nn.Module, variables: Mapping[str, Any], x: jax.Array,
                              rng: jax.Array | None, train: bool) -> tuple[jax.Array, Any]:
    mutable = ["intermediates"]
    if train and variables.get("batch_stats"):
        # BatchNorm in training mode updates its running statistics; they are discarded here.
        mutable.append("batch_stats")
    rngs = {} if rng is None else {"dropout": rng}
    logits, state = model.apply(dict(variables), x, train=train, rngs=rngs, mutable=mutable)
    return logits, state.get("intermediates", {})


def _histogram(x: jax.Array, bins: int, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """numpy.histogram over the (masked) values, range = their min and max, inside jit."""
    x = x.reshape(-1).astype(jnp.float32)
    if mask is None:
        return jnp.histogram(x, bins=bins, range=(jnp.min(x), jnp.max(x)))
    mask = mask.reshape(-1)
    any_kept = jnp.any(mask)
    lo = jnp.where(any_kept, jnp.min(jnp.where(mask, x, jnp.inf)), 0.0)
    hi = jnp.where(any_kept, jnp.max(jnp.where(mask, x, -jnp.inf)), 0.0)
    return jnp.histogram(x, bins=bins, range=(lo, hi), weights=mask.astype(jnp.float32))


def _layer_stats(sown: Mapping[str, jax.Array], bins: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, x in sown.items():
        x32 = x.astype(jnp.float32)
        s: dict[str, Any] = {"mean": jnp.mean(x32), "var": jnp.var(x32)}
        if kind == "act":
            zero = x == 0
            s["zero_fraction"] = jnp.mean(zero.astype(jnp.float32))
            # A unit is the last axis (a Dense feature, a conv channel); dead = zero for every
            # sample (and every position) of the batch, the chapter's "dead ReLU".
            s["dead_fraction"] = jnp.mean(
                jnp.all(zero, axis=tuple(range(x.ndim - 1))).astype(jnp.float32))
        if bins:
            # Activations: histogram of the non-zero values. A ReLU layer puts about half its mass
            # at exactly 0, a spike that would flatten every other bar; zero_fraction counts it.
            s["hist"] = _histogram(x32, bins, mask=~zero if kind == "act" else None)
        out[kind] = s
    return out


def module_norms(tree: Mapping[str, Any]) -> dict[str, jax.Array]:
    """L2 norm of each top-level entry of a params-like tree (jittable; see `grad_norms`)."""
    def norm(sub):
        leaves = jax.tree.leaves(sub)
        if not leaves:
            return jnp.zeros((), jnp.float32)
        return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
    return {name: norm(sub) for name, sub in tree.items()}


@functools.partial(jax.jit, static_argnames=("model", "train", "bins"))
def _activation_stats_jit(model, variables, x, rng, *, train, bins):
    _, intermediates = _apply_with_intermediates(model, variables, x, rng, train)
    return {layer: _layer_stats(sown, bins) for layer, sown in _sown_by_layer(intermediates).items()}


def _to_host(stats: Mapping[str, Any]) -> dict[str, Any]:
    stats = jax.device_get(stats)
    out: dict[str, Any] = {}
    # jax returns dicts with sorted keys ("dense_10" before "dense_2"): restore depth order.
    for layer in sorted(stats, key=_natural_key):
        kinds = stats[layer]
        out[layer] = {}
        for kind, s in kinds.items():
            d = {k: float(v) for k, v in s.items() if k != "hist"}
            if "hist" in s:
                counts, edges = s["hist"]
                d["hist"] = (np.rint(np.asarray(counts)).astype(np.int64),
                             np.asarray(edges, np.float64))
            out[layer][kind] = d
    return out


def activation_stats(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, *,
                     train: bool = False, bins: int = 50,
                     rng: jax.Array | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-layer pre-activation and activation statistics on one batch, from flax's intermediates.

    One jitted forward pass with `mutable=["intermediates"]` (compiled once per model, shapes, `train`
    and `bins`). Works for any model that sows `preact_{i}` / `act_{i}`, as the library's models do.
    The statistics are the chapter's signal-propagation quantities (section 12.1, 13.1): the mean and
    variance of a layer's values over the whole batch (all samples and units, numpy's `var`, ddof=0),
    which He / Xavier initialization aim to keep constant across depth.

    Args:
      model: a linen module called as `model.apply(variables, x, train=...)`.
      variables: its variables ({"params": ..., "batch_stats": ...}).
      x: one batch of inputs.
      train: the mode of the forward pass (False: dropout off, BatchNorm on running statistics).
      bins: histogram bins; 0 skips the histograms.
      rng: the "dropout" key, needed only for train=True with dropout.

    Returns:
      {layer: {"preact": {"mean", "var", "hist"}, "act": {"mean", "var", "zero_fraction",
      "dead_fraction", "hist"}}} with Python floats and `hist = (counts, edges)` as numpy.histogram
      returns them. Layers are keyed `dense_{i}` (see LAYER_PREFIX), in depth order.
      zero_fraction: share of activation entries that are exactly 0.
      dead_fraction: share of units (last axis) that are 0 for every sample in the batch.
      The activation histogram covers the non-zero values only (zeros are in zero_fraction).

    Raises:
      ValueError: bins < 0, or a model that sows no `preact_*` / `act_*` intermediates.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 0:
        raise ValueError(f"bins: {bins!r}; expected an integer >= 0 (0 = no histograms)")
    stats = _activation_stats_jit(model, variables, x, rng, train=train, bins=bins)
    if not stats:
        raise ValueError(f"model: {type(model).__name__} sows no '{PREACT_PREFIX}*' / "
                         f"'{ACT_PREFIX}*' intermediates; see ml_practical.models.MLP")
    return _to_host(stats)


def grad_norms(grads: Mapping[str, Any]) -> dict[str, float]:
    """Per-layer gradient L2 norms: one per top-level module of a params tree.

    The chapter's monitoring advice (section 15.4, "track gradient norms per layer"): a layer whose
    norm is orders of magnitude below the others is not learning (vanishing gradient); a spike is
    what clipping (section 12.7) is for. The squares of the per-layer norms sum to the square of the
    global norm that `optax.clip_by_global_norm` uses.

    Args:
      grads: a gradient tree shaped like the "params" collection, e.g. {"dense_0": {"kernel",
        "bias"}, ..., "head": {...}}.

    Returns:
      {module name: sqrt(sum of squares of all its leaves)} as Python floats.
    """
    norms = jax.device_get(module_norms(grads))
    return {k: float(norms[k]) for k in sorted(norms, key=_natural_key)}


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _epoch_stats_jit(model, variables, images, labels, rng, *, train):
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p):
        logits, intermediates = _apply_with_intermediates(model, {"params": p, **rest}, images,
                                                          rng, train)
        return losses.cross_entropy(logits, labels), intermediates

    (_, intermediates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    layers = {layer: _layer_stats(sown, 0) for layer, sown in _sown_by_layer(intermediates).items()}
    return layers, module_norms(grads)


def epoch_stats(model: nn.Module, variables: Mapping[str, Any], images: jax.Array,
                labels: jax.Array, *, train: bool = False,
                rng: jax.Array | None = None) -> dict[str, float]:
    """Flat per-layer statistics for a metrics record: one jitted forward + backward on one batch.

    The forward pass gives the activation statistics of `activation_stats` (without histograms); the
    backward pass of the plain cross entropy (no label smoothing, no penalties: the data gradient
    that clipping sees) gives the per-layer gradient norms of `grad_norms`.

    Args:
      model, variables, train, rng: as in `activation_stats`.
      images, labels: the batch (a fixed one, so epochs are comparable).

    Returns:
      {"stats/{layer}/preact_mean", ".../preact_var", ".../act_mean", ".../act_var",
      ".../zero_fraction", ".../dead_fraction", "stats/{module}/grad_norm"} as Python floats.
    """
    layers, norms = jax.device_get(
        _epoch_stats_jit(model, variables, images, labels, rng, train=train))
    out: dict[str, float] = {}
    for layer in sorted(layers, key=_natural_key):
        for kind, s in layers[layer].items():
            for name, value in s.items():
                key = name if name.endswith("_fraction") else f"{kind}_{name}"
                out[f"stats/{layer}/{key}"] = float(value)
    for module in sorted(norms, key=_natural_key):
        out[f"stats/{module}/grad_norm"] = float(norms[module])
    return out


def make_stats_logger(model: nn.Module, images: jax.Array, labels: jax.Array, *, every: int,
                      batch_size: int = STATS_BATCH_SIZE,
                      train: bool = False) -> Callable[[int, Any, Any], dict[str, float]]:
    """`log(epoch, params, batch_stats) -> record entries` every `every` epochs (`train.stats_every`).

    The batch is fixed: the first `batch_size` training examples, so the numbers of different epochs
    describe the same inputs. On other epochs, and always when every == 0, `log` returns {} and
    costs nothing. The returned entries include "stats/time_s", the seconds the statistics took
    (device work and the transfer to the host; the first call includes compilation).

    Args:
      model: the trained model.
      images, labels: the training set (device arrays or numpy).
      every: log on epochs that are multiples of `every`; 0 = never.
      batch_size: size of the fixed batch (capped at the training-set size).
      train: the forward mode of the statistics (default False: deterministic, BatchNorm on running
        statistics, so dropout does not add noise to the numbers).

    Raises:
      ValueError: `every` not an integer >= 0.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"train.stats_every: {every!r}; expected an integer >= 0 (0 = off)")
    if every == 0:
        return lambda epoch, params, batch_stats: {}
    n = min(int(batch_size), int(images.shape[0]))
    x, y = images[:n], labels[:n]

    def log(epoch: int, params: Any, batch_stats: Any) -> dict[str, float]:
        if epoch % every:
            return {}
        t0 = time.perf_counter()
        out = epoch_stats(model, {"params": params, "batch_stats": batch_stats}, x, y, train=train)
        out["stats/time_s"] = time.perf_counter() - t0
        return out

    return log


# ==================================================================================================
# 4. Symmetry between hidden units (section 12.1.2, "the symmetry catastrophe")
# ==================================================================================================


def unit_spread(kernel: Any, bias: Any | None = None) -> float:
    """The largest difference between two units' incoming weights: max_{i,j} ||w_i - w_j||_inf.

    Unit i's incoming weights are w_i = (kernel[..., i], bias[i]). The chapter's section 12.1.2 says
    that units started equal receive equal gradients, so after any amount of training this stays
    exactly 0. Computed as max over input coordinates of (max over units - min over units), which
    equals the maximum over all pairs.

    Args:
      kernel: (..., num_units), e.g. a Dense kernel (fan_in, num_units).
      bias: (num_units,) or None.

    Returns:
      The spread as a Python float (0.0 exactly when all units are identical).
    """
    w = np.asarray(kernel, np.float64)
    w = w.reshape(-1, w.shape[-1])
    if bias is not None:
        w = np.concatenate([w, np.asarray(bias, np.float64).reshape(1, -1)])
    return float(np.max(w.max(axis=1) - w.min(axis=1)))


def unit_symmetry(params: Mapping[str, Any]) -> dict[str, dict[str, float | int]]:
    """`unit_spread` and related counts for every top-level module with a kernel (>= 2-D).

    Args:
      params: the "params" collection, e.g. {"dense_0": {"kernel", "bias"}, ..., "head": {...}}.

    Returns:
      {module: {"spread": unit_spread(kernel, bias), "scale": max |entry| over kernel and bias (to
      read the spread against), "distinct_units": number of different incoming weight vectors
      (1 = the whole layer acts as one unit), "num_units": layer width}}.
    """
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted(params, key=_natural_key):
        module = params[name]
        if not isinstance(module, Mapping) or "kernel" not in module:
            continue
        kernel = np.asarray(module["kernel"], np.float64)
        if kernel.ndim < 2:
            continue
        bias = module.get("bias")
        w = kernel.reshape(-1, kernel.shape[-1])
        if bias is not None:
            w = np.concatenate([w, np.asarray(bias, np.float64).reshape(1, -1)])
        out[name] = {
            "spread": unit_spread(kernel, bias),
            "scale": float(np.abs(w).max()),
            "distinct_units": int(np.unique(w.T, axis=0).shape[0]),
            "num_units": int(w.shape[1]),
        }
    return out
