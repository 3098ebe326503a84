"""What the study measures on a run's per-step training curve (numpy only).

A run's per-step training loss (or accuracy) is the loop's per-step metric: the loss of the
mini-batch the step trained on, computed with the weights before the step (`train.train_step`).
It is noisy from batch to batch, so a run "reaches" a target when the trailing running mean over
`window` steps does:

    m_t = mean(x_{t - window + 1}, ..., x_t)        for t = window, window + 1, ..., T
    steps to target = the first t with m_t <= target (loss) or m_t >= target (accuracy)

Non-finite steps (a step the non-finite guard skipped) are left out of the mean; a window with no
finite step never reaches the target. A run that never reaches it within its T steps is censored:
it counts as T steps (a lower bound on its true steps), flagged `censored`, and is never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The trailing mean m_t over `window` steps, for t = window .. T (length T - window + 1;
    empty when T < window). Non-finite values are left out; an all-non-finite window is NaN."""
    if window < 1:
        raise ValueError(f"window: {window}; expected an integer >= 1")
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size < window:
        return np.zeros(0)
    ok = np.isfinite(x)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    s = sums[window:] - sums[:-window]
    c = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def steps_to(values: Sequence[float], target: float, window: int, *,
             direction: str = "below") -> dict[str, object]:
    """Steps until the running mean reaches `target` (see the module docstring).

    Args:
      values: the per-step metric, oldest first (T steps).
      target: the level to reach.
      window: the running mean's length in steps.
      direction: "below" (m_t <= target: a loss) or "above" (m_t >= target: an accuracy).

    Returns:
      {"steps": the first t reaching it, or T when none does; "censored": whether none does;
       "budget": T}.
    """
    if direction not in ("below", "above"):
        raise ValueError(f"direction: {direction!r}; expected 'below' or 'above'")
    m = running_mean(values, window)
    budget = int(np.asarray(values).size)
    with np.errstate(invalid="ignore"):
        hit = (m <= target) if direction == "below" else (m >= target)
    if hit.any():
        return {"steps": int(np.argmax(hit)) + window, "censored": False, "budget": budget}
    return {"steps": budget, "censored": True, "budget": budget}


def log_spread(steps: Mapping[str, float] | Sequence[float]) -> float:
    """log(max / min) of the steps of a cell's inits at one seed: 0 when every init takes the
    same number of steps, log 2 when the slowest takes twice the fastest's."""
    values = np.asarray(list(steps.values()) if isinstance(steps, Mapping) else steps, np.float64)
    if values.size < 2 or np.any(values <= 0):
        raise ValueError(f"steps: {values.tolist()}; expected at least two positive counts")
    return float(math.log(values.max()) - math.log(values.min()))


def curve(values: Sequence[float], window: int, points: int) -> dict[str, list]:
    """The running mean thinned to about `points` values, for a figure: {"steps": t, "values":
    m_t} at every k-th t."""
    m = running_mean(values, window)
    every = max(1, m.size // max(1, points))
    idx = np.arange(0, m.size, every)
    return {"steps": (idx + window).tolist(), "values": m[idx].tolist()}
