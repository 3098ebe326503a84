"""What the study-statistics tests share: Holm as a procedure (independent of
`inference.holm`'s adjusted p-values) and a p-value check against scipy's paired t-test."""

import warnings

import numpy as np
import pytest
from scipy import stats


def holm_step_down(p, alpha=0.05):
    """Holm (1979) as a procedure: walk the sorted p-values, reject while p_(k) <= alpha / (m - k)."""
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(len(p), bool)
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected[i] = True
    return rejected


def check_p(p, a, b):
    """`p` is ttest_rel's p-value for a vs b. Differences without spread: a nonzero constant
    gives 0 (ttest_rel: ~0, up to the rounding of their mean), all zeros `inference.paired_t`'s
    documented 1 (ttest_rel: NaN)."""
    d = np.subtract(a, b)
    if np.ptp(d) == 0 and d[0] == 0:
        assert p == 1.0
    elif np.ptp(d) == 0:
        with warnings.catch_warnings():  # scipy warns that the values are "nearly identical"
            warnings.simplefilter("ignore", RuntimeWarning)
            assert p < 1e-12 and stats.ttest_rel(a, b).pvalue < 1e-12
    else:
        assert p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)


def check_paired_comparison(c, a, b):
    """A stored comparison `c` (its "differences" and `inference.compare_family` entry) is the
    paired t of a vs b: the per-seed differences, ttest_rel's p, and its 95 % interval."""
    np.testing.assert_allclose(c["differences"], np.subtract(a, b), rtol=0, atol=1e-15)
    check_p(c["inference"]["t"]["p"], a, b)
    if np.ptp(np.subtract(a, b)) > 0:
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (c["inference"]["t"]["low"], c["inference"]["t"]["high"]) == pytest.approx(
            (ci.low, ci.high), rel=1e-9)


def check_holm(comps):
    """Each comparison's stored Holm p is the largest (m - k) p_(k) over the p-values at most its
    own, capped at 1, and its decision "differs" is exactly the step-down procedure's rejection."""
    p = np.array([c["inference"]["t"]["p"] for c in comps])
    m = len(p)
    for i, c in enumerate(comps):
        smaller = np.sort(p)[: int(np.sum(p <= p[i]))]
        adjusted = min(1.0, max((m - k) * q for k, q in enumerate(smaller)))
        assert c["inference"]["p_holm"] == pytest.approx(adjusted, rel=1e-12)
    assert [c["inference"]["decision"] == "differs" for c in comps] == holm_step_down(p).tolist()
