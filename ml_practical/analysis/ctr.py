"""Click-through-rate metrics: AUC, log loss, normalized entropy, calibration.

The chapter's CTR case studies report AUC-ROC (InMobi, section 16: "AUC is the business metric")
and normalized entropy (Meta, section 17: "0.1% NE improvement"). NE is He et al. 2014
("Practical Lessons from Predicting Clicks on Ads at Facebook", section 2, "Normalized
Entropy"): the average log loss per impression divided by the entropy of the background CTR p,

    NE = ( -1/N sum_i [ y_i log p_i + (1 - y_i) log(1 - p_i) ] ) / ( -[ p log p + (1-p) log(1-p) ] )

(the paper writes labels in {-1, +1}; here y_i in {0, 1}). NE = 1 for the constant predictor
p_i = p, < 1 when the model beats it. Calibration (same section) is the ratio of the average
predicted CTR to the empirical one (1 = calibrated).

These are host-side evaluation metrics: numpy, float64, exact.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _labels(labels, n: int | None = None) -> np.ndarray:
    y = np.asarray(labels, np.float64).reshape(-1)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"labels: {y.shape[0]} labels for {n} predictions")
    if y.size == 0:
        raise ValueError("labels: empty; expected at least one example")
    if not np.all((y == 0) | (y == 1)):
        i = int(np.flatnonzero((y != 0) & (y != 1))[0])
        raise ValueError(f"labels[{i}]: {y[i]!r}; expected 0 or 1 (click / no click)")
    return y


def binary_entropy(p: float) -> float:
    """-(p log p + (1-p) log(1-p)) in nats (0 log 0 = 0)."""
    p = float(p)
    return float(-sum(q * np.log(q) for q in (p, 1.0 - p) if q > 0))


def log_loss(probs, labels, eps: float = 1e-15) -> float:
    """Mean negative log likelihood -1/N sum [y log p + (1-y) log(1-p)], in nats.

    Args:
      probs: [N] predicted click probabilities; clipped to [eps, 1 - eps] so that a confident
        wrong prediction costs -log(eps) instead of infinity (sklearn's `log_loss` clips too).
      labels: [N] 0/1.
    """
    p = np.asarray(probs, np.float64).reshape(-1)
    y = _labels(labels, p.shape[0])
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def log_loss_from_logits(logits, labels) -> float:
    """`log_loss` of sigmoid(logits), computed stably as mean(softplus(z) - y z) (no clipping)."""
    z = np.asarray(logits, np.float64).reshape(-1)
    y = _labels(labels, z.shape[0])
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def normalized_entropy(probs, labels, base_rate: float | None = None) -> float:
    """He et al. 2014's NE: `log_loss(probs, labels)` / H(p), H the binary entropy (above).

    Args:
      probs: [N] predicted click probabilities.
      labels: [N] 0/1.
      base_rate: the background CTR p; default the mean of `labels`. He et al. take the average
        empirical CTR of the training data: pass the train split's CTR to follow them exactly.

    Raises:
      ValueError: p is 0 or 1 (a single class: the entropy, the denominator, is 0).
    """
    y = _labels(labels)
    return _ne(log_loss(probs, y), y, base_rate)


def _ne(loss: float, y: np.ndarray, base_rate: float | None) -> float:
    p = float(np.mean(y)) if base_rate is None else float(base_rate)
    if not 0.0 < p < 1.0:
        raise ValueError(f"base_rate: {p!r}; NE needs a background CTR strictly between 0 and 1 "
                         "(its entropy is the denominator)")
    return float(loss / binary_entropy(p))


def auc(scores, labels) -> float:
    """Area under the ROC curve, ties counted 1/2 (sklearn's `roc_auc_score`).

    The Mann-Whitney form with average ranks: AUC = (R_pos - n_pos (n_pos + 1) / 2) /
    (n_pos n_neg), R_pos the sum of the positives' ranks among all scores (tied scores share
    their mean rank, which is the 1/2 per tied pair). `analysis.calibration.auroc` is the same
    statistic, jittable in float32; this one ranks in float64 so that scores closer than float32
    resolution (e.g. the true probabilities of `clicks`) are not merged into ties.

    Raises:
      ValueError: a single class among the labels (AUC undefined), as sklearn.
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    y = _labels(labels, s.shape[0]).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels: {n_pos} positives and {n_neg} negatives; AUC needs both")
    ranks = rankdata(s)  # average ranks for ties, 1-based
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ctr_metrics(logits, labels, base_rate: float | None = None) -> dict[str, float]:
    """{"auc", "log_loss", "ne", "calibration", "ctr"} of click logits against 0/1 labels.

    Args:
      logits: [N] the model's logits (p = sigmoid(logit)); the log loss is computed from them
        stably (no clipping).
      labels: [N] 0/1.
      base_rate: NE's background CTR (default the labels' mean; see `normalized_entropy`).

    Returns:
      auc; log_loss (nats); ne; calibration = mean predicted CTR / empirical CTR; ctr = mean label.
    """
    z = np.asarray(logits, np.float64).reshape(-1)
    y = _labels(labels, z.shape[0])
    loss = log_loss_from_logits(z, y)
    probs = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    return {"auc": auc(z, y), "log_loss": loss, "ne": _ne(loss, y, base_rate),
            "calibration": float(np.mean(probs) / np.mean(y)), "ctr": float(np.mean(y))}
