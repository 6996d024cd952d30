"""Metrics evaluated under many sample-weight vectors at once.

Every function takes ``weights`` of shape (B, n) -- one row per bootstrap resample, entry = how many times image
``i`` was drawn -- and returns an array of shape (B,). A row of ones gives the ordinary (unweighted) metric, so the
point estimate and the resamples share one code path. Rows whose metric is undefined (no positives, no negatives,
zero total weight) give NaN rather than raising, because a resample of a small group can legitimately be
degenerate.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    return out


def batched_auroc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC for every row of ``weights`` in one pass.

    AUROC = P(score_pos > score_neg) + 0.5 P(tie) with each pair weighted by w_pos * w_neg (Hanley & McNeil 1982).
    Scores are sorted once; tied scores are merged into blocks; then, per resample, the weighted positive mass of a
    block times the negative mass strictly below it (plus half the negative mass inside it) summed over blocks is
    the numerator. Cost O(n log n + B n), no per-resample sort. Equals ``roc_auc_score(..., sample_weight=w)``.
    """
    y = np.asarray(y_true, dtype=bool)
    order = np.argsort(y_score, kind="stable")
    s = np.asarray(y_score)[order]
    pos = y[order]
    w = weights[:, order]
    w_pos = w * pos
    w_neg = w - w_pos
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    if len(starts) < len(s):  # ties present: merge each run of equal scores into one block
        w_pos = np.add.reduceat(w_pos, starts, axis=1)
        w_neg = np.add.reduceat(w_neg, starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    num = np.einsum("bu,bu->b", w_pos, neg_below + 0.5 * w_neg)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    return _safe_ratio(num, den)


def batched_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of ``values`` per row of ``weights``."""
    return _safe_ratio(weights @ np.asarray(values, dtype=float), weights.sum(axis=1))


def batched_accuracy(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted fraction of exact label matches per row of ``weights``."""
    return batched_mean(np.asarray(y_true) == np.asarray(y_pred), weights)


def batched_sensitivity(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted true-positive rate (recall of class 1) per row of ``weights``."""
    pos = np.asarray(y_true, dtype=bool)
    hit = pos & np.asarray(y_pred, dtype=bool)
    return _safe_ratio(weights @ hit.astype(float), weights @ pos.astype(float))


def batched_specificity(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted true-negative rate (recall of class 0) per row of ``weights``."""
    neg = ~np.asarray(y_true, dtype=bool)
    hit = neg & ~np.asarray(y_pred, dtype=bool)
    return _safe_ratio(weights @ hit.astype(float), weights @ neg.astype(float))
