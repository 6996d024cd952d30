"""Label-shift adjustment for a new site: correct predicted probabilities to a new class prior.

Under label shift p(x|y) is unchanged and only p(y) moves, so by Bayes' rule
``p_new(y|x) ∝ p_train(y|x) · π_new(y) / π_train(y)``, renormalised over classes (see the method spec §7). When the
new prior is unknown, it is estimated from unlabelled target predictions by EM (Saerens, Latinne & Decaestecker
2002, eqs. 2.9-2.10): E-step adjust every prediction with the current prior; M-step set the prior to the mean
adjusted prediction; repeat to convergence.

Example:
    >>> import numpy as np
    >>> adjust_to_prior(np.array([[0.5, 0.5]]), prior_train=[0.5, 0.5], prior_new=[0.8, 0.2]).round(2).tolist()
    [[0.8, 0.2]]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medvision.evaluation._checks import as_1d, as_2d
from medvision.evaluation.calibration import brier_score, expected_calibration_error, nll
from medvision.evaluation.metrics import accuracy

__all__ = ["adjust_to_prior", "EMPriorEstimator", "compare_adjustment"]


def _prior(p: object, k: int, name: str) -> np.ndarray:
    v = as_1d(p, name, float)
    if len(v) != k or (v <= 0).any() or not np.isclose(v.sum(), 1.0, atol=1e-6):
        raise ValueError(f"`{name}` must be {k} positive class frequencies summing to 1; got {v.tolist()}.")
    return v


def adjust_to_prior(y_prob: object, prior_train: object, prior_new: object) -> np.ndarray:
    """Reweight class probabilities (n, K) from the training prior to a known new prior, rows renormalised."""
    p = as_2d(y_prob, "y_prob")
    ratio = _prior(prior_new, p.shape[1], "prior_new") / _prior(prior_train, p.shape[1], "prior_train")
    q = p * ratio
    return q / q.sum(axis=1, keepdims=True)


class EMPriorEstimator:
    """Estimate an unknown target class prior by EM on unlabelled target predictions (Saerens et al. 2002).

    Args:
        prior_train: class frequencies of the training data the model was fitted on (K,).
        max_iter: EM iteration limit.
        tol: stop when the prior moves less than this (max absolute change).

    Attributes:
        prior_: the estimated target prior (K,).
        n_iter_: EM iterations run.
        converged_: whether ``tol`` was reached before ``max_iter``.
    """

    def __init__(self, prior_train: object, max_iter: int = 1000, tol: float = 1e-8) -> None:
        self.prior_train = prior_train
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, y_prob: object) -> EMPriorEstimator:
        """Run EM on target-site predicted probabilities (n, K) from the training-site model."""
        p = as_2d(y_prob, "y_prob")
        train = _prior(self.prior_train, p.shape[1], "prior_train")
        prior = train.copy()
        self.converged_ = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 (n_iter is read after the loop)
            q = p * (prior / train)
            q /= q.sum(axis=1, keepdims=True)
            new = q.mean(axis=0)
            delta = np.abs(new - prior).max()
            prior = new
            if delta < self.tol:
                self.converged_ = True
                break
        self.prior_, self.n_iter_ = prior, n_iter
        return self

    def transform(self, y_prob: object) -> np.ndarray:
        """Predictions adjusted to the estimated prior."""
        if not hasattr(self, "prior_"):
            raise RuntimeError("EMPriorEstimator is not fitted; call fit(target_probs) first.")
        return adjust_to_prior(y_prob, self.prior_train, self.prior_)


def compare_adjustment(y_true: object, y_prob_before: object, y_prob_after: object) -> pd.DataFrame:
    """Accuracy, NLL, Brier and ECE before and after an adjustment, one row per metric (plus the change)."""
    rows = {}
    for name, fn in {
        "accuracy": lambda y, p: accuracy(y, np.asarray(p).argmax(axis=1)),
        "nll": nll,
        "brier": brier_score,
        "ece": expected_calibration_error,
    }.items():
        rows[name] = {"before": fn(y_true, y_prob_before), "after": fn(y_true, y_prob_after)}
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")
    df["change"] = df["after"] - df["before"]
    return df
