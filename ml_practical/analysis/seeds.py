"""Seed statistics for comparing experiments: mean, sample std, paired differences, a reading rule."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

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


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """Difference of means of one metric between two experiments, with its seed statistics.

    Seed s fixes the batch order and the init key in both experiments, so the runs of a common
    seed are paired: the error bar is the sample std (ddof=1) of the per-seed differences
    a[s] - b[s], the spread of a one-seed difference (not the standard error of the mean
    difference, which is smaller by sqrt(n)). With fewer than two common seeds it falls back to
    the independent-runs estimate sqrt(std_a^2 + std_b^2).

    Args:
      a, b: {seed: value} of each experiment.

    Returns:
      {"mean": mean(a) - mean(b), "std": the error bar, "std_paired" (None below two common seeds),
       "std_independent", "paired_differences" (in seed order), "significant": `is_significant`}.
    """
    common = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in common]
    _, std_a = summarize_seeds(list(a.values()))
    _, std_b = summarize_seeds(list(b.values()))
    std_paired = float(np.std(diffs, ddof=1)) if len(diffs) >= 2 else None
    std_indep = math.sqrt(std_a ** 2 + std_b ** 2)
    return {
        "mean": float(np.mean(list(a.values())) - np.mean(list(b.values()))),
        "std": std_paired if std_paired is not None else std_indep,
        "std_paired": std_paired,
        "std_independent": std_indep,
        "paired_differences": diffs,
        "significant": is_significant(list(a.values()), list(b.values())),
    }
