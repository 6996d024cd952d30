"""AUROC, the one definition medvision both selects checkpoints by and reports.

* two classes: the AUROC of class 1 (the positive class of a binary task);
* more classes, or multi-label: the unweighted mean of the one-vs-rest AUROCs of the classes that have both positive
  and negative cases in the set; a class absent from the set is left out (its AUROC is undefined), never counted
  as 0.5 or NaN-poisoning the mean;
* weighted by a matrix of bootstrap weights in one pass (:func:`batched_auroc`), so point estimate and resamples
  share one code path.
"""

from __future__ import annotations

from typing import overload

import numpy as np

__all__ = ["batched_auroc", "macro_auroc", "present_classes"]


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


def present_classes(labels: np.ndarray, num_classes: int, multilabel: bool = False) -> list[int]:
    """Classes with both positive and negative cases among ``labels``: the ones a macro AUROC averages over."""
    onehot = np.asarray(labels).astype(bool) if multilabel else np.asarray(labels)[:, None] == np.arange(num_classes)
    counts = onehot.sum(axis=0)
    return [k for k in range(num_classes) if 0 < counts[k] < len(onehot)]


@overload
def macro_auroc(labels: np.ndarray, scores: np.ndarray, weights: None = None, multilabel: bool = False) -> float: ...
@overload
def macro_auroc(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, multilabel: bool = False
) -> np.ndarray: ...


def macro_auroc(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None, multilabel: bool = False
) -> np.ndarray | float:
    """Binary AUROC for two classes, else the macro one-vs-rest AUROC over the present classes (module docstring).

    Args:
        labels: ``(N,)`` class indices in ``[0, K)``, or ``(N, K)`` 0/1 for multi-label.
        scores: ``(N, K)`` class probabilities or scores.
        weights: ``(B, N)`` bootstrap weights; ``None`` for the plain metric.
        multilabel: ``labels`` is an indicator matrix.

    Returns:
        ``(B,)`` values for ``weights``, else a float; NaN where no class has both outcomes.
    """
    y = np.asarray(labels)
    p = np.asarray(scores)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights)
    k = p.shape[1]
    if len(y) == 0:
        out = np.full(len(w), np.nan)
    elif not multilabel and k == 2:
        out = batched_auroc(y == 1, p[:, 1], w)
    else:
        onehot = y.astype(bool) if multilabel else y[:, None] == np.arange(k)
        per_class = [batched_auroc(onehot[:, c], p[:, c], w) for c in present_classes(y, k, multilabel)]
        out = _mean_of_defined(np.stack(per_class)) if per_class else np.full(len(w), np.nan)
    return float(out[0]) if weights is None else out


def _mean_of_defined(values: np.ndarray) -> np.ndarray:
    """The column means over the classes whose AUROC is defined; NaN where none is (a bootstrap resample that
    holds one outcome only). ``np.nanmean`` gives the same numbers but warns on every such resample."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=0)
    total = np.where(defined, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
