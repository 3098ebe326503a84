"""Support recovery: selected sets, precision / recall against the truth, agreement of two fits."""

import numpy as np
import pytest

from ml_practical.analysis import support


def test_support_metrics_hand_example():
    w = np.array([0.0, 0.5, -0.001, 2.0, 0.0, 0.02])
    m = support.support_metrics(w, np.array([1, 3, 4]))
    # selected {1, 2, 3, 5}: tp = {1, 3}
    assert m["exact_zeros"] == 2 and m["selected"] == [1, 2, 3, 5]
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["max_abs_off_support"] == 0.02
    m = support.support_metrics(w, np.array([1, 3, 4]), threshold=0.01)
    assert m["selected"] == [1, 3, 5] and m["precision"] == pytest.approx(2 / 3)



def test_coefficient_agreement_hand_example():
    a = support.coefficient_agreement(np.array([0.0, 1.0, 0.5, 0.0]), np.array([0.0, 1.1, 0.0, 0.2]))
    assert a["max_abs_diff"] == pytest.approx(0.5)
    assert not a["same_support"]
    assert a["jaccard"] == pytest.approx(1 / 3)          # {1} of {1, 2, 3}
    assert a["only_ours"] == [2] and a["only_reference"] == [3]
    both_empty = support.coefficient_agreement(np.zeros(3), np.zeros(3))
    assert both_empty["same_support"] and both_empty["jaccard"] == 1.0
    with pytest.raises(ValueError, match="shapes"):
        support.coefficient_agreement(np.zeros(3), np.zeros(4))
