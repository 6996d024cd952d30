"""Label-shift correction: the known-prior formula matches a hand computation; EM recovers a target prior."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from medvision.evaluation.label_shift import EMPriorEstimator, adjust_to_prior, compare_adjustment


def test_known_prior_matches_hand_computation():
    p = np.array([[0.2, 0.5, 0.3]])
    # ratio new/train = [0.25/0.5, 0.25/0.25, 0.5/0.25] = [0.5, 1, 2] -> [0.1, 0.5, 0.6] / 1.2
    out = adjust_to_prior(p, prior_train=[0.5, 0.25, 0.25], prior_new=[0.25, 0.25, 0.5])
    np.testing.assert_allclose(out, [[1 / 12, 5 / 12, 6 / 12]], atol=1e-12)
    with pytest.raises(ValueError, match="prior_new"):
        adjust_to_prior(p, [0.5, 0.25, 0.25], [0.5, 0.5])


def _posteriors(x: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Exact Bayes posteriors for x | y ~ N(2y, 1)."""
    lik = norm.pdf(x[:, None], loc=2.0 * np.arange(len(prior))[None, :])
    joint = lik * prior
    return joint / joint.sum(axis=1, keepdims=True)


def test_em_recovers_target_prior_and_improves_nll():
    rng = np.random.default_rng(0)
    train_prior = np.array([1 / 3, 1 / 3, 1 / 3])
    target_prior = np.array([0.6, 0.3, 0.1])
    y = rng.choice(3, size=20000, p=target_prior)
    x = rng.normal(loc=2.0 * y)
    probs = _posteriors(x, train_prior)  # the model is calibrated for the *training* prior
    est = EMPriorEstimator(prior_train=train_prior).fit(probs)
    assert est.converged_
    np.testing.assert_allclose(est.prior_, target_prior, atol=0.03)
    adjusted = est.transform(probs)
    np.testing.assert_allclose(adjusted, _posteriors(x, est.prior_), atol=1e-10)
    table = compare_adjustment(y, probs, adjusted)
    assert list(table.index) == ["accuracy", "nll", "brier", "ece"]
    assert table.loc["nll", "after"] < table.loc["nll", "before"]
    assert table.loc["nll", "change"] == pytest.approx(table.loc["nll", "after"] - table.loc["nll", "before"])


def test_em_keeps_prior_when_there_is_no_shift():
    rng = np.random.default_rng(1)
    prior = np.array([0.5, 0.5])
    y = rng.choice(2, size=20000, p=prior)
    probs = _posteriors(rng.normal(loc=2.0 * y), prior)
    np.testing.assert_allclose(EMPriorEstimator(prior).fit(probs).prior_, prior, atol=0.03)
