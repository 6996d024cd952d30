"""Discrimination metrics and validation-chosen operating points.

Every metric takes fairlearn's vocabulary (``y_true``, ``y_pred`` / ``y_score``, optional ``sample_weight``) and
returns a float (or, for the per-label AUROC, a Series indexed by label), so the same callables serve the report,
the subgroup frame and the tests against scikit-learn. AUROC is the weighted Mann-Whitney statistic shared with the
bootstrap (one implementation, so bootstrap replicates and point estimates cannot drift apart).

Operating points are chosen on validation and applied unchanged to test (see the method spec §10): choosing them on
test would make sensitivity/specificity optimistically biased.

Example:
    >>> import numpy as np
    >>> from medvision.evaluation.metrics import auroc, choose_operating_point
    >>> y_val = np.array([0, 0, 1, 1]); s_val = np.array([0.1, 0.4, 0.35, 0.8])
    >>> auroc(y_val, s_val)
    0.75
    >>> op = choose_operating_point(y_val, s_val, rule="youden")
    >>> op.threshold  # J ties at 0.8 and 0.35; the higher threshold wins
    0.8
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from medvision.auroc import macro_auroc
from medvision.evaluation._checks import as_1d, as_2d, binary_labels, same_length, sample_weights
from medvision.evaluation._weighted import batched_auroc

__all__ = [
    "auroc",
    "macro_ovr_auroc",
    "per_label_auroc",
    "accuracy",
    "top_k_accuracy",
    "sensitivity",
    "specificity",
    "OperatingPoint",
    "choose_operating_point",
]


def auroc(y_true: object, y_score: object, sample_weight: object | None = None) -> float:
    """Binary AUROC: probability a random positive outscores a random negative (ties count one half).

    Args:
        y_true: 0/1 labels, shape (n,).
        y_score: higher = more likely positive, shape (n,).
        sample_weight: optional non-negative weights, shape (n,).

    Returns:
        The AUROC, or NaN when only one class is present (undefined rather than an error, so subgroups with a single
        class show up as missing instead of crashing a report).
    """
    y = binary_labels(y_true)
    s = as_1d(y_score, "y_score", float)
    n = same_length(y_true=y, y_score=s)
    w = sample_weights(sample_weight, n)
    return float(batched_auroc(y, s, w[None, :])[0])


def macro_ovr_auroc(
    y_true: object, y_prob: object, labels: list | None = None, sample_weight: object | None = None
) -> float:
    """Multi-class AUROC, one-vs-rest, unweighted mean over classes (scikit-learn ``multi_class="ovr"``, macro).

    Args:
        y_true: class index (or label listed in ``labels``) per sample, shape (n,).
        y_prob: class scores, shape (n, K); column k belongs to ``labels[k]`` (default ``0..K-1``).
        labels: the class labels in column order.
        sample_weight: optional weights, shape (n,).

    Returns:
        Mean of the binary AUROCs (class k vs the rest) of the classes present in ``y_true`` with both outcomes
        (:mod:`medvision.auroc`: the same rule that selects checkpoints); equal to scikit-learn when every class is
        present; NaN when none is.
    """
    y = as_1d(y_true, "y_true")
    p = as_2d(y_prob, "y_prob")
    n = same_length(y_true=y, y_prob=p)
    w = sample_weights(sample_weight, n)
    labels = list(range(p.shape[1])) if labels is None else list(labels)
    if len(labels) != p.shape[1]:
        raise ValueError(f"`labels` has {len(labels)} entries but `y_prob` has {p.shape[1]} columns.")
    unknown = set(np.unique(y).tolist()) - set(labels)
    if unknown:
        raise ValueError(f"`y_true` holds labels {sorted(unknown)} that are not columns of `y_prob` ({labels}).")
    index = np.array([labels.index(v) for v in y.tolist()]) if labels != list(range(p.shape[1])) else y
    onehot = index[:, None] == np.arange(p.shape[1])
    return float(macro_auroc(onehot, p, w[None, :], multilabel=True)[0])


def per_label_auroc(
    y_true: object, y_score: object, label_names: list[str] | None = None, sample_weight: object | None = None
) -> pd.Series:
    """Multi-label AUROC: one binary AUROC per label column (NaN for a column with a single class).

    Args:
        y_true: 0/1 indicator matrix, shape (n, L).
        y_score: scores, shape (n, L).
        label_names: names of the L labels (default ``label_0..``).
        sample_weight: optional weights, shape (n,).

    Returns:
        Series indexed by label name.
    """
    y = as_2d(y_true, "y_true", dtype=None)
    s = as_2d(y_score, "y_score")
    n = same_length(y_true=y, y_score=s)
    if y.shape != s.shape:
        raise ValueError(f"`y_true` {y.shape} and `y_score` {s.shape} must have the same shape (n, n_labels).")
    names = [f"label_{j}" for j in range(y.shape[1])] if label_names is None else list(label_names)
    if len(names) != y.shape[1]:
        raise ValueError(f"`label_names` has {len(names)} entries but there are {y.shape[1]} label columns.")
    w = sample_weights(sample_weight, n)[None, :]
    values = [batched_auroc(binary_labels(y[:, j], f"y_true[:, {j}]"), s[:, j], w)[0] for j in range(y.shape[1])]
    return pd.Series(values, index=pd.Index(names, name="label"), name="auroc", dtype=float)


def accuracy(y_true: object, y_pred: object, sample_weight: object | None = None) -> float:
    """(Weighted) fraction of samples whose predicted label equals the true label."""
    y = as_1d(y_true, "y_true")
    yp = as_1d(y_pred, "y_pred")
    n = same_length(y_true=y, y_pred=yp)
    w = sample_weights(sample_weight, n)
    return float(np.dot(w, y == yp) / w.sum())


def top_k_accuracy(y_true: object, y_prob: object, k: int = 3, sample_weight: object | None = None) -> float:
    """Fraction of samples whose true class is among the ``k`` highest-scoring classes.

    A class tied with the true class's score does not push it out (the true class counts as ranked first among
    equals); with continuous scores ties do not occur.

    Args:
        y_true: class index per sample in ``0..K-1``, shape (n,).
        y_prob: class scores, shape (n, K).
        k: how many top classes count as a hit (``k >= K`` gives 1.0).
    """
    y = as_1d(y_true, "y_true")
    p = as_2d(y_prob, "y_prob")
    n = same_length(y_true=y, y_prob=p)
    if k < 1:
        raise ValueError(f"`k` must be >= 1; got {k}.")
    if not np.isin(y, np.arange(p.shape[1])).all():
        raise ValueError(f"`y_true` must hold class indices 0..{p.shape[1] - 1} (columns of `y_prob`).")
    w = sample_weights(sample_weight, n)
    true_score = p[np.arange(n), y.astype(int)]
    rank = (p > true_score[:, None]).sum(axis=1)
    return float(np.dot(w, rank < k) / w.sum())


def sensitivity(y_true: object, y_pred: object, sample_weight: object | None = None) -> float:
    """True-positive rate: share of positives predicted positive (NaN without positives)."""
    y = binary_labels(y_true)
    yp = binary_labels(y_pred, "y_pred")
    w = sample_weights(sample_weight, same_length(y_true=y, y_pred=yp))
    den = w[y].sum()
    return float(w[y & yp].sum() / den) if den > 0 else float("nan")


def specificity(y_true: object, y_pred: object, sample_weight: object | None = None) -> float:
    """True-negative rate: share of negatives predicted negative (NaN without negatives)."""
    y = binary_labels(y_true)
    yp = binary_labels(y_pred, "y_pred")
    w = sample_weights(sample_weight, same_length(y_true=y, y_pred=yp))
    den = w[~y].sum()
    return float(w[~y & ~yp].sum() / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold fixed on validation: predict positive when ``score >= threshold``.

    Attributes:
        threshold: the cut-off on the score.
        rule: how it was chosen (``youden`` or ``sensitivity``).
        val_sensitivity: sensitivity on the validation set it was chosen on.
        val_specificity: specificity on that validation set.
    """

    threshold: float
    rule: str
    val_sensitivity: float
    val_specificity: float

    def predict(self, y_score: object) -> np.ndarray:
        """Binary decisions for new scores (e.g. test) at the fixed threshold."""
        return as_1d(y_score, "y_score", float) >= self.threshold

    def evaluate(self, y_true: object, y_score: object, sample_weight: object | None = None) -> pd.Series:
        """Sensitivity and specificity of this (validation-chosen) threshold on new data."""
        pred = self.predict(y_score)
        return pd.Series(
            {
                "threshold": self.threshold,
                "sensitivity": sensitivity(y_true, pred, sample_weight),
                "specificity": specificity(y_true, pred, sample_weight),
            },
            name=self.rule,
        )


def choose_operating_point(
    y_true_val: object,
    score_val: object,
    rule: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
) -> OperatingPoint:
    """Choose a threshold on *validation* data.

    Rules:
        ``youden``: maximise Youden's J = sensitivity + specificity - 1 (Youden 1950); among equal J the highest
        threshold wins (fewer positives called).
        ``sensitivity``: the highest threshold whose validation sensitivity is at least ``target_sensitivity``
        (*default* 0.9), i.e. the most specific threshold that meets the sensitivity target.

    Candidate thresholds are the distinct validation scores (predict positive when ``score >= threshold``).

    Raises:
        ValueError: for an unknown rule, a target outside (0, 1], or validation data lacking one of the classes.
    """
    y = binary_labels(y_true_val, "y_true_val")
    s = as_1d(score_val, "score_val", float)
    same_length(y_true_val=y, score_val=s)
    if y.all() or not y.any():
        raise ValueError("`y_true_val` must contain both classes to choose an operating point.")
    thresholds = np.unique(s)[::-1]  # descending: index i calls positive every score >= thresholds[i]
    order = np.argsort(-s, kind="stable")
    ends = np.searchsorted(-s[order], -thresholds, side="right")
    tp = np.cumsum(y[order])[ends - 1]
    fp = ends - tp
    sens = tp / y.sum()
    spec = 1.0 - fp / (~y).sum()
    if rule == "youden":
        i = int(np.argmax(sens + spec - 1.0))
    elif rule == "sensitivity":
        if not 0 < target_sensitivity <= 1:
            raise ValueError(f"`target_sensitivity` must lie in (0, 1]; got {target_sensitivity}.")
        i = int(np.argmax(sens >= target_sensitivity - 1e-12))
    else:
        raise ValueError(f"unknown operating-point rule {rule!r}; use 'youden' or 'sensitivity'.")
    return OperatingPoint(float(thresholds[i]), rule, float(sens[i]), float(spec[i]))
