"""Metrics evaluated under many sample-weight vectors at once.

Every function takes ``weights`` of shape (B, n) -- one row per bootstrap resample, entry = how many times image
``i`` was drawn -- and returns an array of shape (B,). A row of ones gives the ordinary (unweighted) metric, so the
point estimate and the resamples share one code path. Rows whose metric is undefined (no positives, no negatives,
zero total weight) give NaN rather than raising, because a resample of a small group can legitimately be
degenerate.
"""

from __future__ import annotations

import numpy as np

from medvision.auroc import batched_auroc

__all__ = ["batched_auroc"]  # re-exported: the bootstrap registry names every batched metric here


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    return out


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
