"""The evaluate stage's tables on constructed predictions: the right rows, the stated conventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medvision.evaluation.predict import Predictions
from medvision.evaluation.tables import discrimination, fit_detectors, ood_tables, subgroup_table


def _preds(n: int, k: int, seed: int, labels: np.ndarray | None = None, shift: int = 0) -> Predictions:
    """Random predictions; embeddings cluster around 10 x the ``shift``-th unit vector (cosine-separable)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) if labels is None else labels
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[np.clip(y, 0, k - 1)]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    emb = rng.normal(size=(n, 4)) + 10.0 * np.eye(4)[shift]
    frame = pd.DataFrame(
        {
            "image_id": [f"I{seed}-{i}" for i in range(n)],
            "patient_id": [f"P{seed}-{i // 2}" for i in range(n)],
            "label": [str(v) for v in y],
            "label_idx": y,
            "sex": rng.choice(["F", "M"], n),
            "site": rng.choice(["a", "b"], n),
        }
    )
    return Predictions(frame, logits, probs, emb, None)


def test_discrimination_point_estimates_equal_sklearn():
    p = _preds(200, 3, 0)
    out = discrimination(p, positive=0, op=None, n_resamples=50, seed=0)
    y = p.frame["label_idx"].to_numpy()
    assert abs(out["auroc"]["value"] - roc_auc_score(y, p.probs, multi_class="ovr")) < 1e-9
    assert abs(out["accuracy"]["value"] - (p.probs.argmax(1) == y).mean()) < 1e-12
    assert out["auroc"]["low"] <= out["auroc"]["value"] <= out["auroc"]["high"]
    assert out["n_patients"] == 100


def test_feature_detectors_are_fitted_on_inlier_classes_only():
    """Training-outlier classes (label_idx >= K) sit far away; fitting on them would call that region 'inlier'."""
    k = 2
    inl = _preds(100, k, 1)
    outl = _preds(40, k, 2, labels=np.full(40, k), shift=1)  # a HOD training-outlier class
    train = Predictions.concat([inl, outl])
    far = _preds(30, k, 3, shift=1)
    det = fit_detectors(train, k)
    for name in ("mahalanobis", "knn"):
        assert det[name].score(far.embeddings).min() > det[name].score(inl.embeddings).max(), name


def test_ood_tables_treat_outliers_as_positive():
    inl = _preds(60, 3, 4)
    out = _preds(20, 3, 5)
    out.probs[:] = 1.0 / 3  # maximally unsure: MSP should flag every outlier first
    rows, scores, deferral = ood_tables(inl, out, {}, n_resamples=20, seed=0)
    msp = next(r for r in rows if r["detector"] == "msp")
    assert msp["auroc"] > 0.99 and msp["fpr_at_95_tpr"] < 0.1
    assert {r["detector"] for r in scores} >= {"msp", "max_logit", "energy"}
    assert deferral and all(0 <= r["referral_rate"] <= 1 for r in deferral)


def test_an_intersection_alone_is_audited():
    p = _preds(400, 2, 6)
    rows, diffs, overall = subgroup_table(
        p, ["sex*site"], positive=1, min_patients=5, n_resamples=20, seed=0, min_positives=5, min_negatives=5
    )
    assert overall["value"] is not None
    assert {r["attribute"] for r in rows} >= {"sex & site"}
