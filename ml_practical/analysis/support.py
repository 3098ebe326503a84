"""Support recovery: which features a weight vector selects, against the truth or a reference fit.

The test of the chapter's "L1 drives weights to exactly zero" (12.2.3): count exact zeros, compare
the selected set with the informative features, and compare two solutions coefficient by
coefficient (ours and scikit-learn's).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def support_metrics(w: np.ndarray, true_support: np.ndarray, threshold: float = 0.0) -> dict[str, Any]:
    """Feature selection quality of a weight vector: which |w_j| > threshold, against the truth.

    precision = |S ∩ T| / |S|, recall = |S ∩ T| / |T|, F1 = 2PR / (P + R), with S the selected set
    and T the true support; precision is 0 when nothing is selected and F1 is 0 when P + R = 0.
    threshold = 0 counts every weight that is not exactly zero as selected, which is the point of
    the comparison: only the proximal step produces exact zeros.

    Args:
      w: [d] weights.
      true_support: int indices of the informative features.
      threshold: selection threshold on |w_j|, >= 0.

    Returns:
      {"exact_zeros", "n_selected", "selected" (sorted list), "true_positives", "precision",
       "recall", "f1", "max_abs_off_support" (largest |w_j| outside the true support: how far
       from 0 the irrelevant weights stay)} as Python numbers and lists.
    """
    if threshold < 0:
        raise ValueError(f"threshold: {threshold}; expected >= 0")
    w = np.asarray(w).reshape(-1)
    selected = np.flatnonzero(np.abs(w) > threshold)
    truth = set(int(i) for i in np.asarray(true_support).reshape(-1))
    tp = len(truth.intersection(int(i) for i in selected))
    off = np.ones(w.shape, bool)
    off[sorted(truth)] = False
    precision = tp / len(selected) if len(selected) else 0.0
    recall = tp / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "exact_zeros": int(np.sum(w == 0)),
        "n_selected": int(len(selected)),
        "selected": [int(i) for i in selected],
        "true_positives": int(tp),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "max_abs_off_support": float(np.max(np.abs(w[off]))) if off.any() else 0.0,
    }


def coefficient_agreement(w: np.ndarray, w_ref: np.ndarray, threshold: float = 0.0) -> dict[str, Any]:
    """How closely two weight vectors agree: max |w - w_ref| and whether they select the same set.

    Args:
      w, w_ref: [d] weights (ours and the reference's).
      threshold: selection threshold on |w_j| for both, as in `support_metrics`.

    Returns:
      {"max_abs_diff", "same_support", "jaccard", "only_ours", "only_reference"}; jaccard is
      |S ∩ S_ref| / |S ∪ S_ref| (1.0 when both are empty).
    """
    w = np.asarray(w, np.float64).reshape(-1)
    w_ref = np.asarray(w_ref, np.float64).reshape(-1)
    if w.shape != w_ref.shape:
        raise ValueError(f"w, w_ref: shapes {w.shape} and {w_ref.shape} differ")
    s = set(np.flatnonzero(np.abs(w) > threshold).tolist())
    s_ref = set(np.flatnonzero(np.abs(w_ref) > threshold).tolist())
    union = s | s_ref
    return {
        "max_abs_diff": float(np.max(np.abs(w - w_ref))) if w.size else 0.0,
        "same_support": s == s_ref,
        "jaccard": len(s & s_ref) / len(union) if union else 1.0,
        "only_ours": sorted(s - s_ref),
        "only_reference": sorted(s_ref - s),
    }
