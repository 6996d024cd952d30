"""One model's tables from its predictions: what is fitted on validation first (operating point, temperature,
OOD detectors), then discrimination, calibration, subgroups, OOD screening, trust and label shift per set.

Why apart from the stage: the stage decides *what* is predicted (models, seed ensembles, views, sets) and writes
the record; this module turns one model's predictions into its numbers, the same way for a run and for a seed
ensemble's averaged predictions, in the order the method spec §10 requires (nothing fitted on a set it scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvision._atomic import atomic_path
from medvision.evaluation.calibration import TemperatureScaler
from medvision.evaluation.document import (
    Calibration,
    CalibrationTables,
    LabelShift,
    OODScreening,
    OperatingPointRecord,
    SetMetrics,
    Subgroups,
    ood_scores_path,
)
from medvision.evaluation.guards import Guards, choose_detector
from medvision.evaluation.metrics import OperatingPoint, choose_operating_point
from medvision.evaluation.predict import Predictions
from medvision.evaluation.settings import DeferralCosts, EvaluationSettings
from medvision.evaluation.tables import (
    calibration_tables,
    discrimination,
    fit_detectors,
    label_shift_table,
    ood_by_group,
    ood_tables,
    subgroup_table,
)
from medvision.evaluation.trust import TrustInputs, trust_record
from medvision.evaluation.trust_document import Trust

__all__ = [
    "Fitted",
    "Scoring",
    "fit_on_validation",
    "inliers",
    "no_operating_point_reason",
    "operating_point_record",
]


@dataclass
class Fitted:
    """What an evaluation learns from training/validation data before it looks at any evaluation set."""

    positive: int
    operating_point: OperatingPoint | None
    scaler: TemperatureScaler
    detectors: Any
    #: The pretrained-feature guards (``evaluation/guards.py``); their detectors are in ``detectors`` too.
    guards: Guards | None = None
    #: Why no operating point was chosen (``None`` when one was): the report must say so rather than imply a
    #: threshold that does not exist.
    no_operating_point: str | None = None


def inliers(p: Predictions, k: int) -> Predictions:
    """The rows of ``p`` labelled with one of the ``k`` classes the model scores (not abstention classes, not
    unlabelled or outlier images)."""
    return p.subset(((p.frame["label_idx"] >= 0) & (p.frame["label_idx"] < k)).to_numpy())


def operating_point_record(op: OperatingPoint | None) -> OperatingPointRecord | None:
    return None if op is None else OperatingPointRecord(rule="Youden's J on validation", threshold=op.threshold)


def no_operating_point_reason(is_positive: np.ndarray, positive_class: str) -> str | None:
    """Why validation cannot choose a threshold (``None`` when it can): Youden's J needs at least one case of the
    positive class and one of the rest, and a reader of the report must learn which was missing."""
    n_positive = int(is_positive.sum())
    if not len(is_positive):
        return "validation holds no labelled case"
    if n_positive == 0:
        return f"validation holds no case of {positive_class}"
    if n_positive == len(is_positive):
        return f"validation holds only cases of {positive_class}, none of the other classes"
    return None


def fit_on_validation(
    classes: list[str], request: EvaluationSettings, preds: dict[str, Predictions], val: Predictions
) -> Fitted:
    k = len(classes)
    positive = classes.index(request.positive_class) if request.positive_class else (1 if k == 2 else 0)
    y_val = val.frame["label_idx"].to_numpy()
    # No operating point without both outcomes on validation: the test set may never choose it (spec §10).
    missing = no_operating_point_reason(y_val == positive, classes[positive])
    op = None if missing else choose_operating_point(y_val == positive, val.probs[:, positive], rule="youden")
    scaler = TemperatureScaler().fit(np.log(np.clip(val.probs, 1e-12, None)), y_val)
    return Fitted(positive, op, scaler, fit_detectors(preds["train"], k), no_operating_point=missing)


class Scoring:
    """The tables of one model, from its predictions and what was fitted on validation (method spec §10):
    discrimination per set; calibration, subgroups and OOD screening on the in-distribution set; label shift
    towards the held-out site."""

    def __init__(
        self,
        classes: list[str],
        request: EvaluationSettings,
        preds: dict[str, Predictions],
        inlier: dict[str, Predictions],
        fitted: Fitted,
        folder: Path,
        name: str,
    ) -> None:
        self.classes, self.request, self.preds, self.inlier, self.fitted = classes, request, preds, inlier, fitted
        self.folder, self.name = folder, name
        #: Sets scored for discrimination: requested, present, not screened as outliers, with inlier images.
        self.scored = [
            s for s in request.sets if s in inlier and s not in request.outlier_sets and len(inlier[s].frame)
        ]
        self.id_set: str | None = "test" if "test" in inlier else next(iter(self.scored), None)

    def sets(self) -> tuple[dict[str, SetMetrics], dict[str, CalibrationTables]]:
        """Discrimination and calibration on every scored set."""
        r, k, fit, sets, calibration = self.request, len(self.classes), self.fitted, {}, {}
        for s in self.scored:
            metrics = discrimination(self.inlier[s], fit.positive, fit.operating_point, r.bootstrap, r.seed)
            # abstention-class images are not scored: say how many were left out
            metrics["abstention_images_excluded"] = int((self.preds[s].frame["label_idx"] >= k).sum())
            sets[s] = SetMetrics.model_validate(metrics)
            rows, reliability = calibration_tables(self.inlier[s], self.fitted.scaler)
            calibration[s] = CalibrationTables.model_validate({"metrics": rows, "reliability": reliability})
        return sets, calibration

    def in_distribution(self) -> tuple[Calibration | None, Subgroups | None, OODScreening | None]:
        """Calibration (and the method chosen on validation), subgroups and OOD screening on the in-distribution
        set (``test``, else the first scored set)."""
        id_set = self.id_set
        if id_set is None:
            return None, None, None
        val, scaler = self.inlier["val"], self.fitted.scaler
        chosen = _chosen_calibration(val, scaler) if len(val.frame) else None
        rows, reliability = calibration_tables(self.inlier[id_set], scaler)
        calibration = Calibration.model_validate(
            {"set": id_set, "metrics": rows, "reliability": reliability, "chosen": chosen}
        )
        return calibration, self._subgroups(id_set), self._ood(id_set)

    def _subgroups(self, id_set: str) -> Subgroups:
        r, k, positive = self.request, len(self.classes), self.fitted.positive
        rows, diffs, overall = subgroup_table(
            self.inlier[id_set],
            r.subgroups,
            positive,
            r.min_patients,
            r.bootstrap,
            r.seed,
            min_positives=r.min_positives,
            min_negatives=r.min_negatives,
        )
        return Subgroups.model_validate(
            {
                "set": id_set,
                "metric": f"AUROC ({self.classes[positive]} vs rest)" if k > 2 else "AUROC",
                "overall": overall,
                "table": rows,
                "differences": diffs,
            }
        )

    def _ood(self, id_set: str) -> OODScreening | None:
        """Every detector on the in-distribution inliers against every image of the outlier sets; the per-image
        scores go to parquet, the tables to the document."""
        r, preds, k = self.request, self.preds, len(self.classes)
        outlier_sets = [s for s in r.sets if s in r.outlier_sets and s in preds and len(preds[s].frame)]
        if not outlier_sets:
            return None
        outliers = Predictions.concat([preds[s] for s in outlier_sets])
        # condition_ood: one group per held-out condition; any other outlier set is one group
        groups = [
            str(lab) if s == "condition_ood" else s
            for s in outlier_sets
            for lab in preds[s].frame["label"].fillna("(unlabelled)")
        ]
        inliers, detectors = self.inlier[id_set], self.fitted.detectors
        costs = DeferralCosts(**(r.costs or {}))
        det, scores, deferral = ood_tables(inliers, outliers, detectors, r.bootstrap, r.seed, costs=costs, risk=r.risk)
        scores_file = ood_scores_path(self.name)
        with atomic_path(self.folder / scores_file) as tmp:
            pd.DataFrame(scores, columns=["detector", "score", "is_outlier"]).to_parquet(tmp, index=False)
        return OODScreening.model_validate(
            {
                "inliers": id_set,
                "outliers": outlier_sets,
                "detectors": det,
                "scores_file": scores_file,
                "deferral": deferral,
                "by_group": ood_by_group(inliers, outliers, groups, detectors),
                "inliers_exclude_abstention_images": int((preds[id_set].frame["label_idx"] >= k).sum()),
                "primary": inliers.ood_score_name or "msp",  # the head's own score (Head.ood_score_name)
                "pretrained": self.fitted.guards.record if self.fitted.guards else None,
                "choice": choose_detector(
                    preds["val"], detectors, k, inliers.ood_score_name or "msp", r.bootstrap, r.seed
                ),
            }
        )

    def trust(self, multilabel: bool) -> Trust:
        """Conformal sets and the referral rule fitted on validation, evaluated on every requested set (inliers of
        a scored set, every image of an outlier set); calibration per subgroup and site (``evaluation/trust.py``)."""
        r, sets = self.request, {}
        for s in (s for s in r.sets if s in self.preds):
            judged = self.preds[s] if s in r.outlier_sets else self.inlier[s]
            if len(judged.frame):
                sets[s] = judged
        inputs = TrustInputs(
            classes=self.classes,
            positive=self.fitted.positive,
            val=self.inlier["val"],
            sets=sets,
            outlier_sets=list(r.outlier_sets),
            detectors=self.fitted.detectors,
            multilabel=multilabel,
        )
        return trust_record(inputs, r)

    def label_shift(self) -> LabelShift | None:
        site = self.inlier.get("site_ood")
        if site is None or "site_ood" in self.request.outlier_sets or not len(site.frame):
            return None
        table = label_shift_table(self.inlier["val"], site, self.fitted.scaler)
        return LabelShift.model_validate(table) if table else None


def _chosen_calibration(val: Predictions, scaler: TemperatureScaler) -> str:
    """Raw or temperature-scaled probabilities, whichever has the lower ECE on validation (never on test)."""
    metrics, _ = calibration_tables(val, scaler)
    return min(metrics, key=lambda m: (m["ece"], m["method"] != "uncalibrated"))["method"]
