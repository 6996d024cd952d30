"""From predictions to the tables of ``metrics.json``: one function per question a clinician asks.

Each function takes :class:`~medvision.evaluation.predict.Predictions` (already restricted to the rows it
is about) and returns plain records, with confidence intervals from one shared patient-level
:class:`~medvision.evaluation.bootstrap.Bootstrap` per set. Conventions are the method spec's (§10):
AUROC is macro one-vs-rest over inlier classes (binary AUROC for two classes); the operating point is
chosen on validation, never on test; OOD metrics treat the outlier as the positive class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from medvision.auroc import macro_auroc
from medvision.evaluation.bootstrap import Bootstrap, BootstrapResult
from medvision.evaluation.calibration import (
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    nll,
    reliability_diagram,
)
from medvision.evaluation.label_shift import EMPriorEstimator, compare_adjustment
from medvision.evaluation.metrics import OperatingPoint
from medvision.evaluation.ood import (
    DeferralCosts,
    KNNDetector,
    MahalanobisDetector,
    deferral_curve,
    energy_score,
    max_logit_score,
    msp_score,
    ood_metrics,
)
from medvision.evaluation.predict import Predictions
from medvision.evaluation.subgroups import SubgroupFrame

__all__ = [
    "PredictionsDetector",
    "calibration_tables",
    "detector_row",
    "detector_scores",
    "ood_by_group",
    "discrimination",
    "fit_detectors",
    "label_shift_table",
    "ood_tables",
    "subgroup_table",
]


def _ci(r: BootstrapResult) -> dict[str, float | None]:
    return {"value": _f(r.point), "low": _f(r.low), "high": _f(r.high)}


def _f(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def discrimination(
    pred: Predictions, positive: int, op: OperatingPoint | None, n_resamples: int, seed: int
) -> dict[str, Any]:
    """AUROC, accuracy and (for the positive class) sensitivity/specificity at the validation operating point."""
    y = pred.frame["label_idx"].to_numpy()
    bs = Bootstrap(pred.frame["patient_id"].to_numpy(), n_resamples=max(n_resamples, 1), seed=seed)
    out: dict[str, Any] = {
        "n_images": int(len(y)),
        "n_patients": int(pred.frame["patient_id"].nunique()),
        "auroc": _ci(bs.ci(macro_auroc, y, pred.probs)),
        "accuracy": _ci(bs.ci("accuracy", y, pred.probs.argmax(1))),
    }
    k = pred.probs.shape[1]
    counts = np.bincount(y[(y >= 0) & (y < k)], minlength=k)
    # what the headline AUROC is, and which classes it could not include (absent from this set)
    out["auroc_kind"] = "binary" if k == 2 else f"macro one-vs-rest over {int((counts > 0).sum())} classes"
    out["class_counts"] = counts.tolist()
    out["classes_absent"] = [int(c) for c in np.flatnonzero(counts == 0)]
    if k > 2:
        out["auroc_positive"] = _ci(bs.ci("auroc", y == positive, pred.probs[:, positive]))
    if op is not None:
        is_pos = y == positive
        called = op.predict(pred.probs[:, positive])
        out["sensitivity"] = _ci(bs.ci("sensitivity", is_pos, called))
        out["specificity"] = _ci(bs.ci("specificity", is_pos, called))
    return out


def calibration_tables(pred: Predictions, scaler: TemperatureScaler) -> tuple[list[dict], list[dict]]:
    """NLL / Brier / ECE before and after temperature scaling, and both reliability diagrams (15 bins)."""
    y = pred.frame["label_idx"].to_numpy()
    scaled = scaler.predict_proba(np.log(np.clip(pred.probs, 1e-12, None)))
    metrics, reliability = [], []
    for method, p in (("uncalibrated", pred.probs), (f"temperature-scaled (T={scaler.temperature_:.2f})", scaled)):
        metrics.append(
            {
                "method": method,
                "nll": nll(y, p),
                "brier": brier_score(y, p),
                "ece": expected_calibration_error(y, p, n_bins=15),
            }
        )
        diagram = reliability_diagram(y, p, n_bins=15)
        for r in diagram.to_dict("records"):
            if r.get("count", 0):
                reliability.append(
                    {
                        "method": method,
                        "confidence": float(r["confidence"]),
                        "accuracy": float(r["accuracy"]),
                        "count": int(r["count"]),
                    }
                )
    return metrics, reliability


@runtime_checkable
class PredictionsDetector(Protocol):
    """A detector that scores predictions by something other than the model's own embeddings (e.g. the frozen
    pretrained backbone's features of the same images, :mod:`medvision.evaluation.guards`)."""

    def score_predictions(self, pred: Predictions) -> np.ndarray: ...


def fit_detectors(train: Predictions, k: int) -> dict[str, Any]:
    """Feature-space detectors fitted on the training embeddings of the ``k`` inlier classes only (HOD's
    training-outlier classes would otherwise teach them that outliers look in-distribution)."""
    y = train.frame["label_idx"].to_numpy()
    keep = (y >= 0) & (y < k)
    maha = MahalanobisDetector().fit(train.embeddings[keep], y[keep])
    knn = KNNDetector(k=min(10, max(1, int(keep.sum()) - 1))).fit(train.embeddings[keep])
    return {"mahalanobis": maha, "knn": knn}


def detector_scores(pred: Predictions, detectors: dict[str, Any], k: int) -> dict[str, np.ndarray]:
    """Every OOD score of every image (higher = more out of distribution): output-space scores, the head's own
    score under its declared name, and the fitted feature-space detectors (on the model's embeddings, or on whatever
    a :class:`PredictionsDetector` reads)."""
    logits = pred.logits[:, :k]
    scores = {"msp": msp_score(pred.probs), "max_logit": max_logit_score(logits), "energy": energy_score(logits)}
    if pred.ood_score is not None:  # the head's own score, under the name the head declares (Head.ood_score_name)
        scores[pred.ood_score_name or "head"] = pred.ood_score
    for name, det in detectors.items():
        reads_predictions = isinstance(det, PredictionsDetector)
        scores[name] = det.score_predictions(pred) if reads_predictions else det.score(pred.embeddings)
    return scores


def detector_row(name: str, score: np.ndarray, is_ood: np.ndarray, bs: Bootstrap) -> dict[str, Any]:
    """One detector's metrics (outliers positive), AUROC with its patient-level bootstrap interval."""
    m = ood_metrics(score, is_ood)
    ci = bs.ci("auroc", is_ood, score)
    return {
        "detector": name,
        "auroc": float(m["ood_auroc"]),
        "auroc_low": _f(ci.low),
        "auroc_high": _f(ci.high),
        "aupr_in": float(m["aupr_in"]),
        "aupr_out": float(m["aupr_out"]),
        "fpr_at_95_tpr": float(m["fpr_at_95_tpr"]),
    }


def ood_tables(
    inliers: Predictions,
    outliers: Predictions,
    detectors: dict[str, Any],
    n_resamples: int,
    seed: int,
    costs: DeferralCosts | None = None,
    risk: dict[str, str] | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Detector metrics (outliers positive), score samples for histograms, and deferral curves with costs."""
    both = Predictions.concat([inliers, outliers])
    is_ood = np.r_[np.zeros(len(inliers.frame), bool), np.ones(len(outliers.frame), bool)]
    k = inliers.probs.shape[1]
    y = both.frame["label_idx"].to_numpy()
    correct = (~is_ood) & (both.probs.argmax(1) == y)
    # outliers carry their condition's risk level, inliers None (object array: strings and None)
    risk_level = np.array(
        [(risk or {}).get(str(lab), "medium") if o else None for lab, o in zip(both.frame["label"], is_ood)],
        dtype=object,
    )
    bs = Bootstrap(both.frame["patient_id"].to_numpy(), n_resamples=max(n_resamples, 1), seed=seed)
    detectors_rows, score_rows, deferral_rows = [], [], []
    for name, score in detector_scores(both, detectors, k).items():
        detectors_rows.append(detector_row(name, score, is_ood, bs))
        score_rows += [{"detector": name, "score": float(s), "is_outlier": bool(o)} for s, o in zip(score, is_ood)]
        curve = deferral_curve(score, is_ood, correct, risk_level=risk_level, cost_table=costs)
        deferral_rows += [{"detector": name, **r} for r in _thin(curve).to_dict("records")]
    return detectors_rows, score_rows, deferral_rows


def ood_by_group(
    inliers: Predictions, outliers: Predictions, groups: Sequence[str], detectors: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each detector's AUROC for each outlier group (a held-out condition, a held-out set) against all inliers.

    One pooled AUROC can hide a condition the detectors miss entirely; this table shows it.
    """
    both = Predictions.concat([inliers, outliers])
    k = inliers.probs.shape[1]
    n_in = len(inliers.frame)
    group_of = np.asarray(groups, dtype=object)
    rows = []
    for name, score in detector_scores(both, detectors, k).items():
        for g in sorted(set(group_of)):
            mine = np.flatnonzero(group_of == g) + n_in
            keep = np.r_[np.arange(n_in), mine]
            is_ood = np.r_[np.zeros(n_in, bool), np.ones(len(mine), bool)]
            m = ood_metrics(score[keep], is_ood)
            rows.append({"detector": name, "group": str(g), "n_images": int(len(mine)), "auroc": _f(m["ood_auroc"])})
    return rows


def _thin(curve: pd.DataFrame, points: int = 60) -> pd.DataFrame:
    """At most ``points`` rows of a curve (evenly by referral rate), always keeping both ends."""
    if len(curve) <= points:
        return curve
    idx = np.unique(np.linspace(0, len(curve) - 1, points).round().astype(int))
    return curve.iloc[idx]


def subgroup_table(
    pred: Predictions,
    attributes: Sequence[str],
    positive: int,
    min_patients: int,
    n_resamples: int,
    seed: int,
    *,
    min_positives: int,
    min_negatives: int,
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Per-group AUROC with CIs, gaps to overall and worst-vs-best difference (fairlearn's shape).

    A group below ``min_patients`` patients, or with fewer than ``min_positives`` patients holding a ``positive``
    image (``min_negatives`` holding another), is flagged and gets no value, interval or gap (see
    :class:`~medvision.evaluation.subgroups.SubgroupFrame`)."""
    present = [a for a in attributes if "*" not in a and a in pred.frame.columns]
    intersections = [
        tuple(a.split("*")) for a in attributes if "*" in a and all(p in pred.frame.columns for p in a.split("*"))
    ]
    present += [p for parts in intersections for p in parts if p not in present]  # an intersection's parts too
    if not present:
        return [], [], {}
    y = pred.frame["label_idx"].to_numpy()
    binary = pred.probs.shape[1] == 2
    target = (y == 1) if binary else (y == positive)
    score = pred.probs[:, 1] if binary else pred.probs[:, positive]
    features = pred.frame[present].astype("string").fillna("unknown")
    frame = SubgroupFrame(
        metrics={"auroc": "auroc"},
        y_true=target,
        y_pred=score,
        sensitive_features=features,
        groups=pred.frame["patient_id"].to_numpy(),
        intersections=intersections,
        min_patients=min_patients,
        min_positives=min_positives,
        min_negatives=min_negatives,
        n_resamples=max(n_resamples, 1),
        seed=seed,
    )
    table = frame.table().reset_index()
    table = table[table["metric"] == "auroc"].drop(columns=["metric"])
    rows = [{k: (_f(v) if isinstance(v, float) else v) for k, v in r.items()} for r in table.to_dict("records")]
    diff = frame.difference().reset_index()
    diffs = [{k: (_f(v) if isinstance(v, float) else v) for k, v in r.items()} for r in diff.to_dict("records")]
    overall = frame.overall.loc["auroc"]
    return rows, diffs, {"value": _f(overall["value"]), "low": _f(overall["low"]), "high": _f(overall["high"])}


def label_shift_table(val: Predictions, target: Predictions, scaler: TemperatureScaler | None = None) -> dict[str, Any]:
    """EM estimate of the target set's class prior (from validation's), and metrics before/after adjusting.

    EM (Saerens et al. 2002) assumes calibrated posteriors, so the validation temperature is applied first
    when given; "before" is then the temperature-scaled model, "after" the same with the estimated prior.
    """
    k = val.probs.shape[1]
    y_val = val.frame["label_idx"].to_numpy()
    prior_train = np.bincount(y_val, minlength=k) / max(len(y_val), 1)
    if (prior_train == 0).any():
        return {}
    probs = target.probs
    if scaler is not None:
        probs = scaler.predict_proba(np.log(np.clip(probs, 1e-12, None)))
    em = EMPriorEstimator(prior_train).fit(probs)
    y = target.frame["label_idx"].to_numpy()
    table = compare_adjustment(y, probs, em.transform(probs)).reset_index()
    return {
        "prior_validation": prior_train.tolist(),
        "prior_estimated": np.asarray(em.prior_).tolist(),
        "prior_true": (np.bincount(y, minlength=k) / max(len(y), 1)).tolist(),
        "comparison": [
            {k2: (_f(v) if isinstance(v, float) else v) for k2, v in r.items()} for r in table.to_dict("records")
        ],
    }
