"""Tests for ml_practical.analysis.seeds: mean, sample std, the reading rule, paired differences."""

import math

import numpy as np
import pytest

from ml_practical.analysis.seeds import is_significant, paired_difference, summarize_seeds


def test_summarize_seeds_matches_numpy_sample_std():
    values = [98.1, 98.4, 97.9, 98.6]
    mean, std = summarize_seeds(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert std == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in values) / 3))
    assert summarize_seeds([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="values: empty"):
        summarize_seeds([])


def test_is_significant_is_error_bar_non_overlap():
    a = [1.0, 2.0, 3.0]                                 # mean 2, sample std 1
    assert is_significant(a, [4.1, 5.1, 6.1])           # |2 - 5.1| = 3.1 > 1 + 1
    assert not is_significant(a, [2.9, 3.9, 4.9])       # |2 - 3.9| = 1.9 < 1 + 1
    assert is_significant(a, [3.5, 4.0, 4.5])           # 2.0 > 1 + 0.5
    assert not is_significant(a, [3.0, 4.0, 5.0])       # 2.0 = 1 + 1 is not more than the spread
    assert is_significant([4.1, 5.1, 6.1], a)           # symmetric
    # One seed gives no spread estimate: nothing is called significant.
    assert not is_significant([1.0], [100.0, 101.0])
    with pytest.raises(ValueError, match="empty"):
        is_significant([], [1.0, 2.0])


def test_paired_difference_std_is_the_sample_std_of_the_per_seed_differences():
    # Seeds listed out of order: the differences come back in seed order 0, 1, 2.
    a = {2: 4.0, 0: 1.0, 1: 2.0}
    b = {1: 1.0, 0: 0.5, 2: 2.5}
    d = paired_difference(a, b)
    assert d["paired_differences"] == [0.5, 1.0, 1.5]
    assert d["mean"] == pytest.approx(7 / 3 - 4 / 3)                   # 1.0
    # Differences 0.5, 1.0, 1.5: mean 1.0, sample variance (0.25 + 0 + 0.25) / 2 = 0.25.
    assert d["std_paired"] == pytest.approx(0.5)
    assert d["std_paired"] == pytest.approx(np.std([0.5, 1.0, 1.5], ddof=1))
    assert d["std"] == d["std_paired"]
    # Independent runs: std_a^2 = 42/9 / 2 = 7/3, std_b^2 = 78/36 / 2 = 39/36.
    assert d["std_independent"] == pytest.approx(math.sqrt(7 / 3 + 39 / 36))
    # The rule on the unpaired stds: 1.0 < sqrt(7/3) + sqrt(39)/6 = 2.57.
    assert d["significant"] is False


def test_paired_difference_uses_only_common_seeds_for_the_pairs():
    a = {0: 10.0, 1: 11.0, 2: 12.0, 7: 13.0}
    b = {0: 1.0, 1: 2.0, 2: 3.0}
    d = paired_difference(a, b)
    assert d["paired_differences"] == [9.0, 9.0, 9.0]
    assert d["std_paired"] == 0.0 and d["std"] == 0.0
    assert d["mean"] == pytest.approx(11.5 - 2.0)                      # every seed of each side
    # std_a^2 = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, std_b^2 = 1.
    assert d["std_independent"] == pytest.approx(math.sqrt(5 / 3 + 1))
    assert d["significant"] is True                                    # 9.5 > sqrt(5/3) + 1


def test_paired_difference_falls_back_to_independent_stds_below_two_common_seeds():
    a = {0: 1.0, 1: 3.0}                                               # mean 2, std sqrt(2)
    b = {1: 2.0, 2: 4.0, 3: 6.0}                                       # mean 4, std 2
    d = paired_difference(a, b)
    assert d["paired_differences"] == [1.0]                            # seed 1 only
    assert d["std_paired"] is None
    assert d["std_independent"] == pytest.approx(math.sqrt(2 + 4))
    assert d["std"] == pytest.approx(math.sqrt(6))
    assert d["mean"] == pytest.approx(-2.0)
    assert d["significant"] is False                                   # 2 < sqrt(2) + 2
    # No common seed at all: the same fallback.
    d = paired_difference({0: 1.0, 1: 3.0}, {5: 0.0, 6: 2.0})
    assert d["paired_differences"] == [] and d["std_paired"] is None
    assert d["std"] == pytest.approx(math.sqrt(2 + 2)) and d["mean"] == pytest.approx(1.0)
    # One seed on each side: no spread anywhere.
    d = paired_difference({3: 0.9}, {3: 0.5})
    assert d["paired_differences"] == [pytest.approx(0.4)]
    assert d["std_paired"] is None and d["std"] == 0.0
    assert d["significant"] is False
