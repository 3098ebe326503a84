"""Inference over seeds: confidence intervals, tests, multiplicity, power and the seeds a design needs.

A study's comparison is a set of per-seed differences d_1..d_n (row minus its parent, on the same
seed: paired, because seed s fixes the init key and the batch order in both runs). This module
gives, for such a comparison:

  * `paired_t`: the mean difference, its 95 % confidence interval
    mean +- t_{1-a/2, n-1} s / sqrt(n) and the two-sided p-value of H0: E[d] = 0 (Student's
    paired t; `scipy.stats.ttest_rel`'s statistic);
  * `bootstrap_ci`: the percentile bootstrap interval of the mean difference over seeds (Efron &
    Tibshirani 1993, ch. 13), resampling the n seeds with replacement; with n <= 8 it enumerates
    every one of the n^n resamples, so the interval is exact (the bootstrap distribution itself,
    with no Monte Carlo error);
  * `holm`: Holm's step-down adjustment of a table's p-values (Holm 1979), which controls the
    family-wise error rate without assuming independence;
  * `minimum_detectable_effect` / `power` / `seeds_needed`: the paired t-test's power from the
    noncentral t distribution (noncentrality delta sqrt(n) / sd), the smallest true difference a
    design of n seeds detects with probability `power` at level `alpha`, and the fewest seeds a
    difference of `delta` needs.

Everything is float64 numpy and scipy; nothing here draws from an unseeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

# Up to this many seeds the bootstrap enumerates all n^n resamples (7^7 = 823,543, about 50 MB of
# indices); beyond it, Monte Carlo.
EXACT_BOOTSTRAP_MAX_N = 7


def _diffs(values: Sequence[float]) -> np.ndarray:
    d = np.asarray(values, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("differences: empty; expected one number per seed")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"differences: {d.tolist()} holds a non-finite value")
    return d


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level}; expected a confidence level in (0, 1), e.g. 0.95")


def paired_t(differences: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Student's paired t on per-seed differences.

    Args:
      differences: d_s = a_s - b_s for each common seed s (at least 2 for an interval).
      level: confidence level of the interval.

    Returns:
      {"n", "mean", "sd" (ddof=1), "se", "t", "df", "p" (two-sided), "low", "high",
      "half_width"}. With n = 1 the interval is infinite and p is 1; with sd = 0 the interval is
      the point itself and p is 0 for a nonzero mean (1 for a zero mean).
    """
    _check_level(level)
    d = _diffs(differences)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "se": math.inf, "t": math.nan, "df": 0,
                "p": 1.0, "low": -math.inf, "high": math.inf, "half_width": math.inf}
    # Identical differences have sd 0 exactly; numpy's two-pass std can leave ~1e-17 of rounding,
    # which would turn p = 0 into 1e-31 and the power calculations into overflow.
    sd = 0.0 if np.ptp(d) == 0 else float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se == 0.0:
        t, p = (math.inf if mean else math.nan), (0.0 if mean else 1.0)
        half = 0.0
    else:
        t = mean / se
        p = float(2.0 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(0.5 + level / 2.0, df) * se)
    return {"n": n, "mean": mean, "sd": sd, "se": se, "t": t, "df": df, "p": p,
            "low": mean - half, "high": mean + half, "half_width": half}


def bootstrap_ci(differences: Sequence[float], level: float = 0.95, *,
                 n_resamples: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap interval of the mean of per-seed differences.

    The seeds are resampled with replacement, n of n; the interval is the (1-level)/2 and
    (1+level)/2 quantiles of the resampled means (numpy's default linear interpolation between
    order statistics). With n <= EXACT_BOOTSTRAP_MAX_N every one of the n^n ordered resamples is
    enumerated (each has probability n^-n), so the result is the exact bootstrap interval;
    otherwise `n_resamples` resamples are drawn from `np.random.default_rng(seed)`.

    A percentile interval over 3-5 seeds is narrow (it cannot reach beyond the observed
    differences): report it next to the t interval, not instead of it.

    Returns:
      {"n", "mean", "low", "high", "resamples", "exact"}.
    """
    _check_level(level)
    d = _diffs(differences)
    n = d.size
    if n <= EXACT_BOOTSTRAP_MAX_N:
        # Every ordered index tuple once (a multiset then counts with its multinomial weight,
        # as in the bootstrap distribution), so the quantile definition stays the plain one.
        idx = np.indices((n,) * n, dtype=np.int8).reshape(n, -1).T
        means = d[idx].mean(axis=1)
        exact, count = True, n ** n
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_resamples, n))
        means = d[idx].mean(axis=1)
        exact, count = False, n_resamples
    low, high = np.quantile(means, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return {"n": n, "mean": float(d.mean()), "low": float(low), "high": float(high),
            "resamples": count, "exact": exact}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Reject H_(i) at family-wise level alpha iff adjusted_(i) <= alpha. NaN p-values (comparisons
    that could not be tested) are not counted in m and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p_values: {p.tolist()}; expected probabilities in [0, 1]")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level `alpha` for a true mean difference `delta`.

    P(|T| > t_{1-alpha/2, n-1}) with T ~ noncentral t(df = n - 1, nc = delta sqrt(n) / sd).
    """
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if delta else alpha
    df = n - 1
    crit = stats.t.ppf(1.0 - alpha / 2.0, df)
    nc = abs(delta) * math.sqrt(n) / sd
    power_ = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    # scipy's noncentral t returns NaN far in the tail (nc in the thousands): power is 1 there.
    return 1.0 if math.isnan(power_) and nc > crit else power_


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05,
                              target_power: float = 0.8) -> float:
    """The smallest |delta| that a paired t-test over n seeds detects with `target_power`.

    Solves power(delta, sd, n, alpha) = target_power for delta >= 0 (bisection on a monotone
    function). `sd` is the seed-to-seed sd of the differences (e.g. measured in a pilot); n >= 2.
    Returns inf for n < 2 and 0 for sd = 0.
    """
    if n < 2:
        return math.inf
    if sd <= 0:
        return 0.0
    lo, hi = 0.0, sd
    while power(hi, sd, n, alpha) < target_power:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if power(mid, sd, n, alpha) < target_power:
            lo = mid
        else:
            hi = mid
    return hi


def seeds_needed(delta: float, sd: float, alpha: float = 0.05, target_power: float = 0.8,
                 max_seeds: int = 10_000) -> int:
    """The fewest seeds n >= 2 whose paired t-test detects a true difference `delta` with
    `target_power` at level `alpha`, given the differences' seed sd `sd`.

    Raises ValueError when `delta` is 0 or more than `max_seeds` would be needed.
    """
    if delta == 0:
        raise ValueError("delta: 0; no number of seeds detects a zero difference")
    for n in range(2, max_seeds + 1):
        if power(delta, sd, n, alpha) >= target_power:
            return n
    raise ValueError(f"delta {delta} with sd {sd}: more than {max_seeds} seeds needed")


def seeds_for(delta: float, sd: float, alpha: float = 0.05, target_power: float = 0.8,
              max_seeds: int = 1000) -> int | float | None:
    """`seeds_needed` for a report cell: None when undefined (delta 0, or sd unknown: NaN), inf
    when more than `max_seeds` would be needed."""
    if delta == 0 or not math.isfinite(sd):
        return None
    try:
        return seeds_needed(delta, sd, alpha, target_power, max_seeds=max_seeds)
    except ValueError:
        return math.inf


def compare(differences: Sequence[float], *, level: float = 0.95, alpha: float = 0.05,
            target_power: float = 0.8, max_seeds: int = 1000) -> dict[str, object]:
    """Everything a report states about one paired comparison of per-seed differences.

    Returns:
      {"n", "mean", "t": `paired_t`, "bootstrap": `bootstrap_ci`, "mde": the smallest true
      difference this design (n seeds, the measured sd) detects with `target_power` at level
      `alpha`, "seeds_for_observed": the seeds a true difference equal to the observed mean
      would need (None if the mean is 0 or the sd is unknown, inf if more than `max_seeds`)}.
      Holm's adjustment needs the whole table: `holm` over the comparisons' "t"["p"].
    """
    t = paired_t(differences, level)
    n, mean, sd = t["n"], t["mean"], t["sd"]
    known = n >= 2 and math.isfinite(sd)
    return {"n": n, "mean": mean, "t": t, "bootstrap": bootstrap_ci(differences, level),
            "mde": minimum_detectable_effect(sd, n, alpha, target_power) if known else math.inf,
            "seeds_for_observed": seeds_for(mean, sd, alpha, target_power, max_seeds),
            "level": level, "alpha": alpha, "target_power": target_power}


def compare_family(differences: Mapping[str, Sequence[float]], *, level: float = 0.95,
                   alpha: float = 0.05, target_power: float = 0.8,
                   max_seeds: int = 1000) -> dict[str, dict[str, object]]:
    """`compare` for every comparison of one table, with Holm's adjustment over the table.

    Args:
      differences: comparison name -> its per-seed paired differences (the family: every
        comparison a report states). A comparison with no common seed maps to an empty sequence
        and gets no entry in the result beyond {"n": 0}.

    Returns:
      name -> `compare`'s dict plus "p_holm" (Holm-adjusted over the comparisons that have one)
      and "decision" (`decide` at `alpha`), in the input order.
    """
    out: dict[str, dict[str, object]] = {}
    for name, d in differences.items():
        out[name] = (compare(d, level=level, alpha=alpha, target_power=target_power,
                             max_seeds=max_seeds) if len(d) else {"n": 0})
    named = [k for k, v in out.items() if v["n"]]
    for k, p in zip(named, holm([out[k]["t"]["p"] for k in named])):
        out[k]["p_holm"] = float(p)
        out[k]["decision"] = decide(out[k], alpha=alpha)
    return out


def decide(comparison: Mapping[str, object], *, alpha: float = 0.05,
           margin: float | None = None) -> str:
    """Classify one comparison of `compare_family`: "differs", "equivalent" or "undecided".

    "differs": its Holm-adjusted p-value is at most `alpha` (the unadjusted p when the comparison
    stands alone). "equivalent": `margin` is given and the comparison's paired-t interval (at its
    `level`, 95 % by default) lies inside [-margin, +margin]: Schuirmann's two one-sided tests at
    (1 - level) / 2 each. Otherwise "undecided": more seeds could change the answer.
    """
    t = comparison["t"]
    p = comparison.get("p_holm", t["p"])
    if float(p) <= alpha:
        return "differs"
    if margin is not None and -margin <= float(t["low"]) and float(t["high"]) <= margin:
        return "equivalent"
    return "undecided"
