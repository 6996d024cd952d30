"""Out-of-distribution scores, detectors, detection metrics and the deferral (referral) curve.

Direction, everywhere in this module: **a higher score means more out-of-distribution**. Scores that are naturally
"in-distribution-ness" (max softmax, max logit, -energy) are negated so that every score plugs into the same
metrics and the same ``score >= threshold -> defer`` rule (see the method spec §4).

Example:
    >>> import numpy as np
    >>> from medvision.evaluation.ood import msp_score, ood_metrics
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.55, 0.45], [0.5, 0.5]])
    >>> float(ood_metrics(msp_score(probs), is_ood=[0, 0, 1, 1])["ood_auroc"])
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp
from sklearn.metrics import average_precision_score

from medvision.evaluation._checks import as_1d, as_2d, binary_labels, same_length
from medvision.evaluation._weighted import batched_auroc
from medvision.evaluation.settings import DeferralCosts

__all__ = [
    "msp_score",
    "max_logit_score",
    "energy_score",
    "hod_score",
    "ensemble_probabilities",
    "MahalanobisDetector",
    "KNNDetector",
    "ood_metrics",
    "DeferralCosts",
    "deferral_curve",
]


def msp_score(y_prob: object) -> np.ndarray:
    """Maximum-softmax-probability baseline (Hendrycks & Gimpel 2017): ``-max_k p_k``; higher = more OOD."""
    return -as_2d(y_prob, "y_prob").max(axis=1)


def max_logit_score(logits: object) -> np.ndarray:
    """Max-logit score (Hendrycks et al. 2022): ``-max_k z_k``; higher = more OOD."""
    return -as_2d(logits, "logits").max(axis=1)


def energy_score(logits: object, temperature: float = 1.0) -> np.ndarray:
    """Energy score (Liu et al. 2020, eq. 1): ``E(x) = -T logsumexp(z / T)``; higher energy = more OOD."""
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0; got {temperature}.")
    return -temperature * logsumexp(as_2d(logits, "logits") / temperature, axis=1)


def hod_score(y_prob: object, outlier_classes: Sequence[int]) -> np.ndarray:
    """HOD outlier probability ``p_out = sum_{j in OUT} p_j`` over the abstention classes (see the method spec §4).

    Higher = more OOD. ``y_prob`` is the softmax over all K + M logits; ``outlier_classes`` lists the M column
    indices of the training-outlier abstention classes.
    """
    p = as_2d(y_prob, "y_prob")
    idx = np.asarray(list(outlier_classes), dtype=int)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= p.shape[1]:
        raise ValueError(f"`outlier_classes` must be non-empty column indices of `y_prob` (0..{p.shape[1] - 1}).")
    return p[:, idx].sum(axis=1)


def ensemble_probabilities(member_probs: Sequence[object]) -> np.ndarray:
    """Average the members' class probabilities; score the average with any probability score (msp, hod).

    Averaging probabilities *before* scoring is the deep-ensemble recipe (Lakshminarayanan et al. 2017) used by
    HOD ensembles in the method spec §4.
    """
    if len(member_probs) == 0:
        raise ValueError("`member_probs` is empty; pass one (n, K) probability matrix per ensemble member.")
    mats = [as_2d(p, f"member_probs[{i}]") for i, p in enumerate(member_probs)]
    if len({m.shape for m in mats}) > 1:
        raise ValueError(f"ensemble members disagree on shape: {[m.shape for m in mats]}.")
    return np.mean(mats, axis=0)


class MahalanobisDetector:
    """Class-conditional Gaussians with one shared covariance (Lee et al. 2018); score = min_k Mahalanobis distance².

    The covariance is accumulated in a streaming way: per batch, the within-class scatter of the batch is merged
    into a running pooled scatter with the parallel-update formula of Chan et al. (1979),
    ``M2 = M2_a + M2_b + (n_a n_b / n) d d^T`` per class, so memory is O(K D + D^2) whatever the training-set size
    and the result equals the batch computation. ``covariance_ = pooled within-class scatter / N`` (the maximum-
    likelihood estimate used by Lee et al.).

    Higher score = more OOD (further from the nearest class mean).

    Args:
        ridge: added to the covariance diagonal before inversion, for features with near-zero variance.

    Attributes:
        classes_, class_counts_, means_ (K, D), covariance_ (D, D), precision_ (D, D), n_samples_.
    """

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge

    def partial_fit(self, features: object, labels: object) -> MahalanobisDetector:
        """Add one batch of training features (n, D) with their inlier class labels (n,)."""
        x = as_2d(features, "features")
        y = as_1d(labels, "labels")
        same_length(features=x, labels=y)
        if not hasattr(self, "_sums"):
            self._dim = x.shape[1]
            # Keyed by class label: numpy scalars of whatever (sortable) dtype ``labels`` has.
            self._sums: dict[Any, np.ndarray] = {}
            self._counts: dict[Any, int] = {}
            self._scatter = np.zeros((x.shape[1],) * 2)
        if x.shape[1] != self._dim:
            raise ValueError(f"`features` has {x.shape[1]} columns but earlier batches had {self._dim}.")
        for c in np.unique(y):
            xb = x[y == c]
            nb, mb = len(xb), xb.mean(axis=0)
            centred = xb - mb
            self._scatter += centred.T @ centred
            na = self._counts.get(c, 0)
            if na:
                ma = self._sums[c] / na
                d = mb - ma
                self._scatter += np.outer(d, d) * (na * nb / (na + nb))
            self._counts[c] = na + nb
            self._sums[c] = self._sums.get(c, 0.0) + xb.sum(axis=0)
        self._finalise()
        return self

    def fit(self, features: object, labels: object, batch_size: int | None = None) -> MahalanobisDetector:
        """Fit from scratch, streaming over ``batch_size`` rows at a time (all at once when ``None``)."""
        for attr in ("_sums", "_counts", "_scatter"):
            self.__dict__.pop(attr, None)
        x = as_2d(features, "features")
        y = as_1d(labels, "labels")
        same_length(features=x, labels=y)
        step = batch_size or len(x)
        for i in range(0, len(x), step):
            self.partial_fit(x[i : i + step], y[i : i + step])
        return self

    def _finalise(self) -> None:
        self.classes_ = np.array(sorted(self._counts))
        self.class_counts_ = np.array([self._counts[c] for c in self.classes_])
        self.means_ = np.stack([self._sums[c] / self._counts[c] for c in self.classes_])
        self.n_samples_ = int(self.class_counts_.sum())
        self.covariance_ = self._scatter / self.n_samples_
        self.precision_ = np.linalg.pinv(self.covariance_ + self.ridge * np.eye(self._dim), hermitian=True)

    def score(self, features: object) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, shape (n,); higher = more OOD."""
        if not hasattr(self, "precision_"):
            raise RuntimeError("MahalanobisDetector is not fitted; call fit(train_features, train_labels) first.")
        x = as_2d(features, "features")
        if x.shape[1] != self._dim:
            raise ValueError(f"`features` has {x.shape[1]} columns; the detector was fitted on {self._dim}.")
        xp = x @ self.precision_
        quad_x = np.einsum("nd,nd->n", xp, x)
        quad_m = np.einsum("kd,kd->k", self.means_ @ self.precision_, self.means_)
        dist = quad_x[:, None] - 2.0 * xp @ self.means_.T + quad_m[None, :]
        return np.maximum(dist.min(axis=1), 0.0)


class KNNDetector:
    """Deep nearest-neighbour OOD score (Sun et al. 2022): cosine distance to the k-th nearest training feature.

    Features are L2-normalised; the score is ``1 - cos`` to the k-th most similar training feature. Higher = more
    OOD.

    Args:
        k: which neighbour (*default* 10; Sun et al. use tens of neighbours for large sets).
        chunk_size: query rows processed at once, bounding memory to chunk_size x n_train.

    Attributes:
        train_features_: the normalised training features (n_train, D).
    """

    def __init__(self, k: int = 10, chunk_size: int = 1024) -> None:
        self.k = k
        self.chunk_size = chunk_size

    def fit(self, features: object) -> KNNDetector:
        """Store the normalised training (inlier) features."""
        x = as_2d(features, "features")
        if not 1 <= self.k <= len(x):
            raise ValueError(f"`k`={self.k} must lie in 1..{len(x)} (the number of training features).")
        self.train_features_ = _normalise(x)
        return self

    def score(self, features: object) -> np.ndarray:
        """Cosine distance to the k-th nearest training feature, shape (n,); higher = more OOD."""
        if not hasattr(self, "train_features_"):
            raise RuntimeError("KNNDetector is not fitted; call fit(train_features) first.")
        q = _normalise(as_2d(features, "features"))
        out = np.empty(len(q))
        for i in range(0, len(q), self.chunk_size):
            sim = q[i : i + self.chunk_size] @ self.train_features_.T
            kth = np.partition(-sim, self.k - 1, axis=1)[:, self.k - 1]
            out[i : i + self.chunk_size] = 1.0 + kth  # 1 - cos, with kth = -cos
        return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ood_metrics(score: object, is_ood: object, tpr_level: float = 0.95) -> pd.Series:
    """Detection metrics for an OOD score (higher = more OOD); the key names carry the positive-class convention.

    Keys:
        ``ood_auroc``: AUROC with OOD samples as the positive class.
        ``aupr_out``: average precision with OOD as positive, ranked by ``score``.
        ``aupr_in``: average precision with inliers as positive, ranked by ``-score``.
        ``fpr_at_95_tpr``: with OOD as positive, the threshold t is the *largest* score such that at least
        ``tpr_level`` (*default* 95%) of OOD samples have ``score >= t``; the value is the fraction of inliers with
        ``score >= t`` (inliers wrongly flagged). The key name follows ``tpr_level`` (e.g. ``fpr_at_90_tpr``).

    Args:
        score: OOD score per sample, shape (n,).
        is_ood: 1/True for out-of-distribution samples, 0/False for inliers.
        tpr_level: detection rate at which the FPR is read.

    Raises:
        ValueError: when either inliers or OOD samples are missing.
    """
    s = as_1d(score, "score", float)
    ood = binary_labels(is_ood, "is_ood")
    same_length(score=s, is_ood=ood)
    if ood.all() or not ood.any():
        raise ValueError("`is_ood` must contain both inliers (0) and OOD samples (1).")
    ood_sorted = np.sort(s[ood])[::-1]
    t = ood_sorted[int(np.ceil(tpr_level * len(ood_sorted) - 1e-9)) - 1]
    return pd.Series(
        {
            "ood_auroc": float(batched_auroc(ood, s, np.ones((1, len(s))))[0]),
            "aupr_in": float(average_precision_score(~ood, -s)),
            "aupr_out": float(average_precision_score(ood, s)),
            f"fpr_at_{round(100 * tpr_level)}_tpr": float(np.mean(s[~ood] >= t)),
        },
        name="ood",
    )


def _case_costs(
    s: np.ndarray, ood: np.ndarray, ok: np.ndarray, risk_level: object | None, costs: DeferralCosts
) -> tuple[np.ndarray, np.ndarray]:
    """Each case's cost if retained and if deferred: an outlier retained costs its condition's risk level."""
    missed_cost = np.zeros(len(s))
    if ood.any():
        if risk_level is None:
            raise ValueError("`risk_level` is required when outliers are present (one of the cost-table levels).")
        risk = as_1d(risk_level, "risk_level").astype(object)
        same_length(score=s, risk_level=risk)
        unknown = set(risk[ood].tolist()) - set(costs.outlier_missed)
        if unknown:
            raise ValueError(
                f"risk levels {sorted(map(str, unknown))} are not in the cost table "
                f"{sorted(costs.outlier_missed)}; add them to `outlier_missed`."
            )
        missed_cost[ood] = [costs.outlier_missed[r] for r in risk[ood]]
    inl = ~ood
    retain_cost = np.where(inl, np.where(ok, costs.inlier_correct, costs.inlier_misclassified), missed_cost)
    defer_cost = np.where(inl, costs.inlier_deferred, costs.outlier_deferred)
    return retain_cost, defer_cost


def deferral_curve(
    score: object,
    is_ood: object,
    correct: object,
    risk_level: object | None = None,
    cost_table: DeferralCosts | Mapping | None = None,
) -> pd.DataFrame:
    """Referral rate, accuracy on retained inliers and mean cost as the deferral threshold sweeps the scores.

    A case is deferred when ``score >= threshold``. Rows run from deferring nothing (threshold = +inf) to deferring
    everything (threshold = the lowest score), one row per distinct score.

    Args:
        score: OOD score (higher = more OOD), shape (n,).
        is_ood: 1 for outliers, 0 for inliers.
        correct: 1 where the inlier prediction is correct (ignored for outliers).
        risk_level: risk level of each outlier's condition (keys of ``cost_table.outlier_missed``; ignored for
            inliers). Required when outliers are present.
        cost_table: a ``DeferralCosts`` (or a mapping of its fields); *defaults* when ``None``.

    Returns:
        DataFrame with ``threshold``, ``referral_rate``, ``retained_accuracy`` (on retained inliers; NaN when none),
        ``outliers_missed`` (fraction of outliers retained) and ``mean_cost``.
    """
    costs = cost_table if isinstance(cost_table, DeferralCosts) else DeferralCosts(**(cost_table or {}))
    s = as_1d(score, "score", float)
    ood = binary_labels(is_ood, "is_ood")
    ok = binary_labels(correct, "correct")
    n = same_length(score=s, is_ood=ood, correct=ok)
    inl = ~ood
    retain_cost, defer_cost = _case_costs(s, ood, ok, risk_level, costs)

    order = np.argsort(-s, kind="stable")
    thresholds = np.unique(s)[::-1]
    ends = np.r_[0, np.searchsorted(-s[order], -thresholds, side="right")]  # number deferred per row

    def deferred(v: np.ndarray) -> np.ndarray:
        return np.r_[0.0, np.cumsum(v[order])][ends]

    n_inl_ret = inl.sum() - deferred(inl.astype(float))
    correct_ret = (inl & ok).sum() - deferred((inl & ok).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        retained_acc = np.where(n_inl_ret > 0, correct_ret / n_inl_ret, np.nan)
    n_ood = max(int(ood.sum()), 1)
    total = deferred(defer_cost) + (retain_cost.sum() - deferred(retain_cost))
    return pd.DataFrame(
        {
            "threshold": np.r_[np.inf, thresholds],
            "referral_rate": ends / n,
            "retained_accuracy": retained_acc,
            "outliers_missed": (ood.sum() - deferred(ood.astype(float))) / n_ood,
            "mean_cost": total / n,
        }
    )
