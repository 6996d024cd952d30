"""OOD scores point the stated way, detection metrics follow their named convention on a hand-worked case, the
streaming Mahalanobis covariance equals the batch one, and the deferral curve matches hand-computed costs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from medvision.evaluation.ood import (
    DeferralCosts,
    KNNDetector,
    MahalanobisDetector,
    deferral_curve,
    energy_score,
    ensemble_probabilities,
    hod_score,
    max_logit_score,
    msp_score,
    ood_metrics,
)


def test_scores_are_higher_for_less_confident_inputs():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # confident, then uniform
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for s in (msp_score(probs), max_logit_score(logits), energy_score(logits)):
        assert s[1] > s[0]
    assert energy_score(logits)[1] == pytest.approx(-np.log(3.0))
    assert energy_score(logits, temperature=2.0)[1] == pytest.approx(-2.0 * np.log(3.0))
    # HOD: columns 2 and 3 are abstention classes
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.5, 0.3]])
    np.testing.assert_allclose(hod_score(p, [2, 3]), [0.2, 0.8])
    ens = ensemble_probabilities([p, p[::-1]])
    np.testing.assert_allclose(hod_score(ens, [2, 3]), [0.5, 0.5])


def test_ood_metrics_hand_worked():
    # inliers 0.1 0.2 0.3 0.75; OOD 0.5 0.7 0.8 0.9 (higher = more OOD)
    score = np.array([0.1, 0.2, 0.3, 0.75, 0.5, 0.7, 0.8, 0.9])
    is_ood = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    m = ood_metrics(score, is_ood)
    # OOD > inlier pairs: 0.5 beats 3, 0.7 beats 3, 0.8 and 0.9 beat 4 -> 14 / 16
    assert m["ood_auroc"] == pytest.approx(14 / 16)
    # OOD positive, descending: O O I O O -> precision at hits 1, 1, 3/4, 4/5
    assert m["aupr_out"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)
    # inliers positive, ascending score: I I I O O I -> precision at hits 1, 1, 1, 4/6
    assert m["aupr_in"] == pytest.approx((1 + 1 + 1 + 4 / 6) / 4)
    # 95% of 4 OOD -> all 4 detected -> threshold 0.5 -> inlier 0.75 flagged -> FPR 1/4
    assert m["fpr_at_95_tpr"] == pytest.approx(0.25)
    # 50% -> 2 OOD -> threshold 0.8 -> no inlier above -> 0
    assert ood_metrics(score, is_ood, tpr_level=0.5)["fpr_at_50_tpr"] == 0.0
    with pytest.raises(ValueError, match="both inliers"):
        ood_metrics(score[:4], is_ood[:4])


def test_mahalanobis_streaming_covariance_equals_batch():
    rng = np.random.default_rng(0)
    n, d = 503, 6
    labels = rng.integers(0, 3, n)
    feats = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0 * labels[:, None] + 100.0  # offset: stability
    det = MahalanobisDetector().fit(feats, labels, batch_size=37)
    means = np.stack([feats[labels == k].mean(0) for k in range(3)])
    centred = feats - means[labels]
    np.testing.assert_allclose(det.covariance_, np.cov(centred.T, bias=True), atol=1e-8, rtol=0)
    np.testing.assert_allclose(det.means_, means, atol=1e-10)
    # score = min over classes of the squared Mahalanobis distance
    query = rng.normal(size=(20, d)) * 5 + 100.0
    ref = cdist(query, means, metric="mahalanobis", VI=det.precision_).min(axis=1) ** 2
    np.testing.assert_allclose(det.score(query), ref, rtol=1e-7, atol=1e-7)
    # a far-away point scores higher than training points
    assert det.score(feats[:5] + 50.0).min() > det.score(feats[:5]).max()


def test_knn_detector_matches_brute_force_cosine():
    rng = np.random.default_rng(1)
    train, query = rng.normal(size=(200, 8)), rng.normal(size=(30, 8))
    det = KNNDetector(k=5, chunk_size=7).fit(train)
    ref = np.sort(cdist(query, train, metric="cosine"), axis=1)[:, 4]
    np.testing.assert_allclose(det.score(query), ref, atol=1e-12)
    with pytest.raises(ValueError, match="k"):
        KNNDetector(k=500).fit(train)


def test_deferral_curve_hand_worked_costs():
    score = np.array([0.9, 0.6, 0.4, 0.1])
    is_ood = np.array([1, 0, 1, 0])
    correct = np.array([0, 0, 0, 1])  # inlier at 0.6 is wrong, at 0.1 right
    risk = np.array(["high", "", "low", ""])
    curve = deferral_curve(score, is_ood, correct, risk)
    # defaults: missed high 20, missed low 1, misclassified 1, inlier deferred 0.1, outlier deferred 0
    np.testing.assert_allclose(curve["mean_cost"], [22 / 4, 2 / 4, 1.1 / 4, 0.1 / 4, 0.2 / 4])
    np.testing.assert_allclose(curve["referral_rate"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["retained_accuracy"], [0.5, 0.5, 1.0, 1.0, np.nan])
    np.testing.assert_allclose(curve["outliers_missed"], [1.0, 0.5, 0.5, 0.0, 0.0])
    assert curve["threshold"].iloc[0] == np.inf
    cheap = deferral_curve(score, is_ood, correct, risk, {"outlier_missed": {"low": 0.0, "high": 0.0}})
    assert cheap["mean_cost"].iloc[0] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="risk levels"):
        deferral_curve(score, is_ood, correct, np.array(["extreme", "", "low", ""]))
    with pytest.raises(ValueError, match="extra|forbid|Extra"):
        DeferralCosts(outlier_mised={"low": 1.0})
