"""Discrimination and calibration metrics agree with scikit-learn; ECE and operating points match hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn import metrics as skm

from medvision.evaluation.calibration import (
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    nll,
    reliability_diagram,
)
from medvision.evaluation.metrics import (
    accuracy,
    auroc,
    choose_operating_point,
    macro_ovr_auroc,
    per_label_auroc,
    sensitivity,
    specificity,
    top_k_accuracy,
)

TOL = 1e-9


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _multiclass(rng: np.random.Generator, n: int = 300, k: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    return y, softmax(logits, axis=1), rng.uniform(0.1, 3.0, n)


def test_binary_auroc_matches_sklearn_with_ties_and_weights(rng):
    y = rng.integers(0, 2, 500)
    score = np.round(rng.normal(size=500) + y, 1)  # rounding creates many ties
    w = rng.uniform(0, 2, 500)
    assert abs(auroc(y, score) - skm.roc_auc_score(y, score)) < TOL
    assert abs(auroc(y, score, w) - skm.roc_auc_score(y, score, sample_weight=w)) < TOL


def test_single_class_auroc_is_nan():
    assert np.isnan(auroc([1, 1, 1], [0.2, 0.3, 0.9]))


def test_macro_ovr_auroc_matches_sklearn(rng):
    y, p, w = _multiclass(rng)
    ref = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert abs(macro_ovr_auroc(y, p) - ref) < TOL
    ref_w = skm.roc_auc_score(y, p, multi_class="ovr", average="macro", sample_weight=w)
    assert abs(macro_ovr_auroc(y, p, sample_weight=w) - ref_w) < TOL


def test_per_label_auroc_matches_sklearn(rng):
    y = rng.integers(0, 2, (200, 3))
    s = rng.normal(size=(200, 3)) + y
    w = rng.uniform(0, 2, 200)
    ours = per_label_auroc(y, s, label_names=["a", "b", "c"], sample_weight=w)
    assert list(ours.index) == ["a", "b", "c"]
    np.testing.assert_allclose(ours.to_numpy(), skm.roc_auc_score(y, s, average=None, sample_weight=w), atol=TOL)


def test_accuracy_topk_sens_spec_match_sklearn(rng):
    y, p, w = _multiclass(rng)
    pred = p.argmax(axis=1)
    assert abs(accuracy(y, pred) - skm.accuracy_score(y, pred)) < TOL
    assert abs(accuracy(y, pred, w) - skm.accuracy_score(y, pred, sample_weight=w)) < TOL
    for k in (1, 2, 3):
        ref = skm.top_k_accuracy_score(y, p, k=k, sample_weight=w, labels=range(4))
        assert abs(top_k_accuracy(y, p, k=k, sample_weight=w) - ref) < TOL
    yb, pb = (y == 0).astype(int), (pred == 0).astype(int)
    assert abs(sensitivity(yb, pb, w) - skm.recall_score(yb, pb, sample_weight=w)) < TOL
    assert abs(specificity(yb, pb, w) - skm.recall_score(yb, pb, pos_label=0, sample_weight=w)) < TOL


def test_nll_and_brier_match_sklearn(rng):
    y, p, w = _multiclass(rng)
    assert abs(nll(y, p) - skm.log_loss(y, p)) < TOL
    assert abs(nll(y, p, w) - skm.log_loss(y, p, sample_weight=w)) < TOL
    # multi-class Brier: mean over samples of the unhalved sum of squares
    ref = skm.brier_score_loss(y, p, sample_weight=w, scale_by_half=False)
    assert abs(brier_score(y, p, w) - ref) < TOL
    yb, pb = (y == 1).astype(int), p[:, 1]
    assert abs(brier_score(yb, pb, w) - skm.brier_score_loss(yb, pb, sample_weight=w)) < TOL
    assert abs(nll(yb, pb) - skm.log_loss(yb, pb)) < TOL


def test_ece_and_reliability_match_hand_computation():
    # top-label confidences 0.95, 0.9, 0.6, 0.55 -> with 15 bins, bins (0.933,1], (0.867,0.933], (0.533,0.6] x2
    p = np.array([[0.95, 0.05], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])  # correct, wrong, correct, correct
    # bin 14: conf .95 acc 1 -> |.05|; bin 13: conf .9 acc 0 -> .9; bin 8: conf (.6+.55)/2 = .575, acc 1 -> .425
    expected = (1 * 0.05 + 1 * 0.9 + 2 * 0.425) / 4
    assert abs(expected_calibration_error(y, p) - expected) < 1e-12
    table = reliability_diagram(y, p)
    assert len(table) == 15 and table["count"].sum() == 4
    assert table.loc[8, "count"] == 2 and abs(table.loc[8, "confidence"] - 0.575) < 1e-12
    assert table.loc[13, "accuracy"] == 0.0
    # with 2 bins everything falls in (0.5, 1]: conf mean .75, acc .75 -> ECE 0
    assert abs(expected_calibration_error(y, p, n_bins=2)) < 1e-12


def test_temperature_scaling_recovers_known_temperature(rng):
    n, k, t_true = 4000, 5, 2.5
    base = rng.normal(size=(n, k)) * 2
    y = np.array([rng.choice(k, p=row) for row in softmax(base, axis=1)])  # labels drawn from softmax(base)
    logits = base * t_true  # overconfident by a factor t_true
    ts = TemperatureScaler().fit(logits, y)
    assert abs(ts.temperature_ - t_true) < 0.25
    assert ts.nll_after_ < ts.nll_before_
    np.testing.assert_allclose(ts.predict_proba(logits), softmax(logits / ts.temperature_, axis=1), atol=1e-12)
    assert (ts.predict_proba(logits).argmax(1) == logits.argmax(1)).all()


def test_operating_point_rules_on_validation():
    y_val = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s_val = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = choose_operating_point(y_val, s_val, rule="youden")
    # t=0.7: sens 3/4 spec 1 -> J .75; t=0.4: sens 1 spec 3/4 -> J .75 (tie: higher threshold kept)
    assert youden.threshold == 0.7 and youden.val_sensitivity == 0.75 and youden.val_specificity == 1.0
    op = choose_operating_point(y_val, s_val, rule="sensitivity", target_sensitivity=1.0)
    assert op.threshold == 0.4 and op.val_specificity == 0.75
    # applied unchanged to "test" data
    res = op.evaluate([0, 1, 1], [0.5, 0.39, 0.41])
    assert res["sensitivity"] == 0.5 and res["specificity"] == 0.0
    with pytest.raises(ValueError, match="rule"):
        choose_operating_point(y_val, s_val, rule="f1")


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="y_score"):
        auroc([0, 1], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="samples"):
        accuracy([0, 1, 1], [0, 1])


def test_bootstrap_macro_auroc_is_nan_without_a_warning_where_a_resample_defines_no_class():
    """A resample that holds one outcome only defines no class's AUROC: NaN, and no 'Mean of empty slice' warning
    per resample (a report's evaluation printed it hundreds of times); where defined, the per-class mean."""
    import warnings

    from medvision.auroc import macro_auroc

    labels = np.array([0, 1, 2, 0, 1, 2])
    scores = softmax(np.random.default_rng(0).normal(size=(6, 3)), axis=1)
    weights = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 0, 2, 0, 0], [1, 1, 0, 1, 1, 0]], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = macro_auroc(labels, scores, weights)
    assert got[0] == pytest.approx(macro_auroc(labels, scores)) and np.isnan(got[1])
    two = [skm.roc_auc_score(labels[[0, 1, 3, 4]] == c, scores[[0, 1, 3, 4], c]) for c in (0, 1)]
    assert got[2] == pytest.approx(np.mean(two))  # class 2 absent from the resample: the mean of the defined two
