"""The evaluate stage: trained runs × evaluation sets → predictions tables and ``metrics.json``.

For each model it predicts on the training rows (only to fit the feature-space OOD detectors), the
validation rows (operating point, temperature, label-shift prior) and each requested set, then derives
every table from those predictions (:mod:`medvision.evaluation.tables`). Outputs, in one folder:

* ``predictions/<model>/<set>.parquet`` — one row per image, pseudonymous ids only;
* ``ood_scores/<model>.parquet`` — every detector's score per screened image;
* ``metrics.json`` — everything the report shows, machine-readable: the one writer of
  :class:`~medvision.evaluation.document.MetricsDocument` (schema: ``docs/metrics.md``);
* ``saliency/`` — image and attribution arrays of a few correct, wrong and most-OOD cases.

Each model gets a distinct, stable name (its folder under ``predictions/``): the pipeline's ``stage-member``,
or the one the caller gives (``medvision evaluate`` uses the run name and id); two models of one name, or one
run given twice, are refused, because one's predictions would overwrite the other's.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from medvision._atomic import atomic_path
from medvision._version import code_provenance
from medvision.cohort.cohort import open_cohort
from medvision.cohort.named_values import facts_from_card
from medvision.data.dataset import CohortDataset
from medvision.errors import InputError
from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.calibration import TemperatureScaler
from medvision.evaluation.cases import predict_cases
from medvision.evaluation.document import (
    METRICS_FILE,
    Calibration,
    CalibrationTables,
    EnsembleMetrics,
    EnsembleOOD,
    HistoryPoint,
    LabelShift,
    MetricsDocument,
    ModelMetrics,
    OODScreening,
    OperatingPointRecord,
    RankRow,
    SaliencyRecord,
    SetMetrics,
    Subgroups,
    Trust,
    TTARecord,
    ood_scores_path,
    predictions_path,
)
from medvision.evaluation.ensemble import greedy_ensemble, knn_rank_backbones
from medvision.evaluation.guards import Guards, StartingWeights, choose_detector, guards_needed, pretrained_guards
from medvision.evaluation.metrics import OperatingPoint, choose_operating_point
from medvision.evaluation.ood import msp_score
from medvision.evaluation.predict import Predictions, predict_rows
from medvision.evaluation.saliency import pick_cases, saliency_maps
from medvision.evaluation.seed_ensemble import combine_members, seed_groups
from medvision.evaluation.settings import DeferralCosts, EvaluationSettings
from medvision.evaluation.tables import (
    calibration_tables,
    detector_row,
    discrimination,
    fit_detectors,
    label_shift_table,
    ood_by_group,
    ood_tables,
    subgroup_table,
)
from medvision.evaluation.trust import TrustInputs, trust_record
from medvision.evaluation.tta import TTAViews, cohort_views
from medvision.tracking import load_run_classifier

__all__ = ["METRICS_SCHEMA", "EvaluationRequest", "evaluate_models", "model_names"]

#: The schema version of the ``metrics.json`` this medvision writes.
METRICS_SCHEMA = MetricsDocument.current_version()


class EvaluationRequest(EvaluationSettings):
    """What to evaluate and how; ``models`` are dicts with at least ``run_id`` (plus ``name`` and stage/member facts:
    ``stage``, ``member``, ``backbone``, ``weights``, ``head``, ``label_fraction``, ``seed``)."""

    cohort_dir: Path
    models: list[dict[str, Any]]
    #: The MLflow store the models' runs live in; ``None``: the current tracking URI.
    tracking_uri: str | None = None


def evaluate_models(request: EvaluationRequest, folder: Path) -> dict[str, float]:
    """Evaluate every model of ``request`` into ``folder``; return headline metrics (for the stage's run).

    Raises:
        ValueError: two models would share a name, or one run is given twice (see :func:`model_names`).
    """
    folder = Path(folder)
    names = model_names(request.models)  # before any work: a collision would overwrite predictions
    folder.mkdir(parents=True, exist_ok=True)
    cohort = open_cohort(request.cohort_dir)
    request.check_against(facts_from_card(cohort.card))  # a misspelt subgroup or class fails before predicting
    groups = seed_groups(request.models, names) if request.seed_ensemble else []
    views = cohort_views(request.tta, cohort)
    results: list[ModelMetrics] = []
    member_preds: dict[str, dict[str, Predictions]] = {}
    multilabel_of: dict[str, bool] = {}
    classifier_of: dict[str, Any] = {}
    primary = None
    for model, name in zip(request.models, names):
        classifier, _ = load_run_classifier(model["run_id"], request.tracking_uri)
        entry, preds = _evaluate_one(classifier, cohort, request, model, name, folder, views)
        entry.history = _history(model["run_id"], request.tracking_uri)
        results.append(entry)
        member_preds[name] = preds
        multilabel_of[name] = bool(getattr(classifier.head, "multilabel", False))
        if groups:
            classifier_of[name] = classifier
        if primary is None or entry.label_fraction > primary[3].label_fraction:
            primary = (model, classifier, preds, entry)
    for group in groups:  # each seed ensemble scored as its own model, from its members' predictions
        preds = combine_members(member_preds, group.members)
        _write_predictions(preds, folder, group.name)
        multilabel = multilabel_of[group.members[0]]
        guard_inputs = (classifier_of[group.members[0]], cohort)
        entry = _scored(results[0].classes, request, group.model, group.name, folder, preds, multilabel, guard_inputs)
        entry.ensemble_of = group.members
        results.append(entry)
    ensemble = _ensemble(member_preds, results, request) if request.ensemble and len(member_preds) > 1 else None
    ranking = _rank_backbones(member_preds, results) if len(member_preds) > 1 else []
    saliency = _saliency(primary, cohort, request, folder) if request.saliency and primary is not None else []
    doc = _document(request, cohort, views, results, primary[3].name if primary else None, saliency, ensemble, ranking)
    doc.write(folder / METRICS_FILE)  # whole or absent
    return _headline(results)


def _document(
    request: EvaluationRequest,
    cohort: Any,
    views: TTAViews,
    results: list[ModelMetrics],
    primary: str | None,
    saliency: list[SaliencyRecord],
    ensemble: EnsembleMetrics | None,
    ranking: list[RankRow],
) -> MetricsDocument:
    """The evaluation's record: what was evaluated (cohort, settings as given) beside what was found, so the
    report and the checklists read every number from one typed document."""
    return MetricsDocument(
        # the code that computed these numbers: the report shows this, not the version that renders it later
        code_version=code_provenance(),
        cohort={
            "name": cohort.card.name,
            "manifest_sha256": cohort.card.manifest_sha256,
            "classes": cohort.card.inlier_classes,
            "dir": str(Path(request.cohort_dir).resolve()),
            # what one row of every table is: an image, or a series / study / patient case
            "unit": cohort.unit,
        },
        settings={
            "sets": request.sets,
            "subgroups": request.subgroups,
            "bootstrap": request.bootstrap,
            "min_patients": request.min_patients,
            "min_positives": request.min_positives,
            "min_negatives": request.min_negatives,
            "referral_rate": request.referral_rate,
            "seed": request.seed,
            "outlier_sets": request.outlier_sets,
            "costs": DeferralCosts(**(request.costs or {})),
            "risk": request.risk,
            "positive_class": results[0].positive_class if results else None,
            "conformal": request.conformal,
            "abstain": request.abstain,
            "calibration": request.calibration,
            "tta": TTARecord(settings=request.tta, preset=views.preset, views=views.names),
            "seed_ensemble": request.seed_ensemble,
        },
        primary_model=primary,
        models=results,
        saliency=saliency,
        ensemble=ensemble,
        backbone_ranking=ranking,
    )


def model_names(models: list[dict[str, Any]]) -> list[str]:
    """Each model's name in an evaluation (the folder of its predictions): the ``name`` given, else
    ``stage-member`` (``model`` when it is the only one).

    Raises:
        InputError: a run given twice, or two models that would share a name (one's predictions would overwrite
            the other's, and a comparison of the two would compare a model with itself).
    """
    runs = [str(m["run_id"]) for m in models]
    twice = sorted({r for r in runs if runs.count(r) > 1})
    if twice:
        raise InputError(
            f"run(s) {', '.join(twice)} given more than once: an evaluation of a model against itself compares "
            "nothing; give each run once"
        )
    default = [f"{m.get('stage', 'model')}-{m.get('member')}" if len(models) > 1 else "model" for m in models]
    names = [_safe_name(str(m.get("name") or d)) for m, d in zip(models, default)]
    for name in sorted(set(names)):
        same = [r for r, n in zip(runs, names) if n == name]
        if len(same) > 1:
            raise InputError(
                f"models of runs {', '.join(same)} would all be named {name!r} in this evaluation, and each one's "
                "predictions would overwrite the other's; give each model a distinct name"
            )
    return names


def _safe_name(name: str) -> str:
    """A model name usable as one folder name (run names may hold ``/``)."""
    return re.sub(r"[/\\]", "-", name).lstrip(".") or "model"


def _headline(results: list[ModelMetrics]) -> dict[str, float]:
    headline = {}
    for entry in results:
        for set_name, metrics in entry.sets.items():
            if metrics.auroc.value is not None:
                key = re.sub(r"[^A-Za-z0-9_./ -]", "_", f"{entry.name}/{set_name}/auroc")
                headline[key] = metrics.auroc.value
    return headline


@dataclass
class _Fitted:
    """What an evaluation learns from training/validation data before it looks at any evaluation set."""

    positive: int
    operating_point: OperatingPoint | None
    scaler: TemperatureScaler
    detectors: Any
    #: The pretrained-feature guards (``evaluation/guards.py``); their detectors are in ``detectors`` too.
    guards: Guards | None = None


def _evaluate_one(
    classifier, cohort, request: EvaluationRequest, model: dict[str, Any], name: str, folder: Path, views: TTAViews
) -> tuple[ModelMetrics, dict[str, Predictions]]:
    """One model on every requested set, in the order the method spec §10 requires: predict, fit everything that
    needs fitting (operating point, temperature, OOD detectors) on train/validation only, then score the sets."""
    classes = _checked_classes(classifier, cohort, request, model)
    preds = _predict(classifier, cohort, request, model, views)
    _write_predictions(preds, folder, name)
    multilabel = bool(getattr(classifier.head, "multilabel", False))
    return _scored(classes, request, model, name, folder, preds, multilabel, (classifier, cohort)), preds


def _scored(
    classes: list[str],
    request: EvaluationRequest,
    model: dict[str, Any],
    name: str,
    folder: Path,
    preds: dict[str, Predictions],
    multilabel: bool,
    guard_inputs: tuple[Any, Any],
) -> ModelMetrics:
    """A model's record from its predictions (a run's, or a seed ensemble's averaged ones).

    ``guard_inputs`` (a classifier, the cohort) is what the pretrained-feature guards embed with: only the
    classifier's backbone architecture and the run's starting weights matter, so a seed ensemble passes its first
    member's (its members started from the same weights)."""
    k = len(classes)
    inlier = {
        s: p.subset(((p.frame["label_idx"] >= 0) & (p.frame["label_idx"] < k)).to_numpy()) for s, p in preds.items()
    }
    fitted = _fit_on_validation(classes, request, preds, inlier["val"])
    if guards_needed(request):  # kNN / Mahalanobis on the pretrained embeddings (evaluation/guards.py)
        start = StartingWeights.of_run(model["run_id"], request.tracking_uri)
        fitted.guards = pretrained_guards(guard_inputs[0], start, guard_inputs[1], preds, k)
        fitted.detectors.update(fitted.guards.detectors)
    entry = ModelMetrics(
        name=name,
        run_id=model["run_id"],
        stage=model.get("stage"),
        member=model.get("member"),
        backbone=model.get("backbone"),
        weights=model.get("weights"),
        head=model.get("head"),
        label_fraction=model.get("label_fraction") or 1.0,
        seed=model.get("seed"),
        classes=classes,
        positive_class=classes[fitted.positive],
        operating_point=_operating_point(fitted.operating_point),
        temperature=float(fitted.scaler.temperature_),
        sets={},
    )
    scored = _Scoring(classes, request, preds, inlier, fitted, folder, name)
    entry.sets, entry.calibration_by_set = scored.sets()
    entry.calibration, entry.subgroups, entry.ood = scored.in_distribution()
    entry.label_shift = scored.label_shift()
    entry.trust = scored.trust(multilabel)
    return entry


def _operating_point(op: OperatingPoint | None) -> OperatingPointRecord | None:
    return None if op is None else OperatingPointRecord(rule="Youden's J on validation", threshold=op.threshold)


def _checked_classes(classifier, cohort, request: EvaluationRequest, model: dict[str, Any]) -> list[str]:
    classes = list(classifier.classes)
    expected = cohort.card.inlier_classes
    if classes != expected:
        raise InputError(
            f"model {model['run_id']} predicts classes {classes} but cohort {cohort.card.name} has "
            f"{expected}; evaluate a model on the cohort it was trained on"
        )
    if request.positive_class is not None and request.positive_class not in classes:
        raise InputError(f"positive_class {request.positive_class!r} is not a class of this model: {classes}")
    return classes


def _predict(
    classifier, cohort, request: EvaluationRequest, model: dict[str, Any], views: TTAViews
) -> dict[str, Predictions]:
    """Predictions on the model's own training rows (for detectors), validation and every requested set, each
    averaged over the test-time views (training rows too: the detectors must read the features they will score)."""
    heldout = set(cohort.card.heldout_conditions)
    lf = model.get("label_fraction") or 1.0
    train_rows = cohort.rows("train", label_fraction=lf if lf < 1 else None)
    # a case cohort is scored per case (series, study, patient): one row per case, every metric from those rows
    if cohort.unit != "image" and len(views.views) > 1:
        raise InputError(
            f"tta: test-time augmentation reads single images; this cohort is scored per {cohort.unit}. "
            "Set tta: none (or leave it out) for a series-, study- or patient-level model"
        )
    predict = functools.partial(predict_rows, views=views.views) if cohort.unit == "image" else predict_cases
    preds = {
        "train": predict(classifier, cohort, train_rows),
        "val": predict(classifier, cohort, cohort.rows("val")),
    }
    for s in request.sets:
        rows = cohort.rows(s, labelled=False)
        if s == "condition_ood" and s in request.outlier_sets:
            # a held-out patient's other images (inlier or training-outlier labels) are not unseen conditions
            rows = rows[rows["label"].isin(heldout)].reset_index(drop=True)
        if len(rows):
            preds[s] = predict(classifier, cohort, rows)
    return preds


def _write_predictions(preds: dict[str, Predictions], folder: Path, name: str) -> None:
    """Every set's predictions table but the training rows' as parquet (``predictions/<name>/<set>.parquet``)."""
    for s, p in preds.items():
        if s != "train":
            with atomic_path(folder / predictions_path(name, s)) as tmp:
                p.frame.to_parquet(tmp, index=False)


def _fit_on_validation(
    classes: list[str], request: EvaluationRequest, preds: dict[str, Predictions], val: Predictions
) -> _Fitted:
    k = len(classes)
    positive = classes.index(request.positive_class) if request.positive_class else (1 if k == 2 else 0)
    y_val = val.frame["label_idx"].to_numpy()
    has_both = bool((y_val == positive).any() and (y_val != positive).any())
    # No operating point without both outcomes on validation: the test set may never choose it (spec §10).
    op = choose_operating_point(y_val == positive, val.probs[:, positive], rule="youden") if has_both else None
    scaler = TemperatureScaler().fit(np.log(np.clip(val.probs, 1e-12, None)), y_val)
    return _Fitted(positive, op, scaler, fit_detectors(preds["train"], k))


class _Scoring:
    """The tables of one model, from its predictions and what was fitted on validation (method spec §10):
    discrimination per set; calibration, subgroups and OOD screening on the in-distribution set; label shift
    towards the held-out site."""

    def __init__(
        self,
        classes: list[str],
        request: EvaluationRequest,
        preds: dict[str, Predictions],
        inlier: dict[str, Predictions],
        fitted: _Fitted,
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


def _ensemble(
    member_preds: dict[str, dict[str, Predictions]], results: list[ModelMetrics], request: EvaluationRequest
) -> EnsembleMetrics:
    """Greedy selection (with replacement) on validation NLL, then the ensemble scored like a model (spec §4)."""
    k = len(results[0].classes)
    positive = results[0].classes.index(results[0].positive_class)
    val = {name: _inliers(preds["val"], k) for name, preds in member_preds.items()}
    y_val = next(iter(val.values())).frame["label_idx"].to_numpy()
    ensemble = _Ensemble(greedy_ensemble({n: v.probs for n, v in val.items()}, y_val))
    ens_val = ensemble.combine(val)
    op = None
    if (y_val == positive).any() and (y_val != positive).any():
        op = choose_operating_point(y_val == positive, ens_val.probs[:, positive], rule="youden")
    sets: dict[str, SetMetrics] = {}
    for s in request.sets:
        if s in request.outlier_sets or any(s not in preds for preds in member_preds.values()):
            continue
        combined = ensemble.combine({n: _inliers(preds[s], k) for n, preds in member_preds.items()})
        if len(combined.frame):
            sets[s] = SetMetrics.model_validate(discrimination(combined, positive, op, request.bootstrap, request.seed))
    outlier_sets = [s for s in request.sets if s in request.outlier_sets]
    ood: list[EnsembleOOD] = []
    if "test" in sets and outlier_sets and all(s in p for p in member_preds.values() for s in outlier_sets):
        ood = _ensemble_ood(ensemble, member_preds, outlier_sets, k, request)
    return EnsembleMetrics(
        members=ensemble.selection.members,
        val_nll=ensemble.selection.history,
        sets=sets,
        ood=ood,
        operating_point=_operating_point(op),
    )


def _inliers(p: Predictions, k: int) -> Predictions:
    return p.subset(((p.frame["label_idx"] >= 0) & (p.frame["label_idx"] < k)).to_numpy())


class _Ensemble:
    """The members' predictions combined by a greedy selection.

    The ensemble's probabilities are the selection-weighted average of its members'; its OOD scores are MSP of that
    average and, when every member has one, the average of the members' OOD scores (for HOD heads this is exactly
    ``p_out`` of the averaged full distribution, ``p_out`` being linear in it).
    """

    def __init__(self, selection: Any) -> None:
        self.selection = selection

    def combine(self, parts: dict[str, Predictions]) -> Predictions:
        base = next(iter(parts.values()))
        probs = self.selection.predict_proba({n: p.probs for n, p in parts.items()})
        scores = {n: p.ood_score for n, p in parts.items() if p.ood_score is not None}
        has_ood = len(scores) == len(parts)
        ood = self.selection.predict_proba({n: s[:, None] for n, s in scores.items()})[:, 0] if has_ood else None
        return Predictions(base.frame, base.logits, probs, base.embeddings, ood)


def _ensemble_ood(
    ensemble: _Ensemble,
    member_preds: dict[str, dict[str, Predictions]],
    outlier_sets: list[str],
    k: int,
    request: EvaluationRequest,
) -> list[EnsembleOOD]:
    """The ensemble's MSP (and averaged HOD score) on test inliers against the outlier sets, AUROC with its
    patient-level interval."""
    test = ensemble.combine({n: _inliers(p["test"], k) for n, p in member_preds.items()})
    out = Predictions.concat([ensemble.combine({n: p[s] for n, p in member_preds.items()}) for s in outlier_sets])
    both = Predictions.concat([test, out])
    is_ood = np.r_[np.zeros(len(test.frame), bool), np.ones(len(out.frame), bool)]
    scores = {"ensemble_msp": msp_score(both.probs)}
    if both.ood_score is not None:
        scores["ensemble_hod"] = both.ood_score
    bs = Bootstrap(both.frame["patient_id"].to_numpy(), n_resamples=max(request.bootstrap, 1), seed=request.seed)
    return [EnsembleOOD.model_validate(detector_row(name, score, is_ood, bs)) for name, score in scores.items()]


def _rank_backbones(member_preds: dict[str, dict[str, Predictions]], results: list[ModelMetrics]) -> list[RankRow]:
    """Leave-one-out 1-NN accuracy (cosine) of each model's embeddings on validation (method spec §5)."""

    k = len(results[0].classes)
    feats, labels = {}, None
    for name, preds in member_preds.items():
        val = preds["val"]
        keep = ((val.frame["label_idx"] >= 0) & (val.frame["label_idx"] < k)).to_numpy()
        feats[name], labels = val.embeddings[keep], val.frame["label_idx"].to_numpy()[keep]
    if labels is None or len(labels) < 2:
        return []
    ranking = knn_rank_backbones(feats, labels)
    return [RankRow.model_validate(r) for r in ranking.rename_axis("model").reset_index().to_dict("records")]


def _history(run_id: str, tracking_uri: str | None) -> list[HistoryPoint]:
    """Per-epoch metrics of the training run (learning curves for the report)."""

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    rows = []
    for key in run.data.metrics:
        if key.startswith(("train/loss", "val/")):
            rows += [
                HistoryPoint(metric=key, epoch=int(m.step), value=float(m.value))
                for m in client.get_metric_history(run_id, key)
            ]
    return rows


def _saliency(primary, cohort, request: EvaluationRequest, folder: Path) -> list[SaliencyRecord]:
    """Integrated Gradients and Grad-CAM for the most confident correct and wrong test cases and the most OOD."""

    _, classifier, preds, entry = primary
    k = len(entry.classes)
    parts = []
    if "test" in preds:
        parts.append(_inliers(preds["test"], k))
    parts += [preds[s] for s in request.sets if s in request.outlier_sets and s in preds]
    parts = [p for p in parts if len(p.frame)]
    if not parts:
        return []
    both = Predictions.concat(parts)
    y = both.frame["label_idx"].to_numpy()
    inlier = (y >= 0) & (y < k)
    y_pred, conf = both.probs.argmax(1), both.probs.max(1)
    ood = both.ood_score if both.ood_score is not None else 1.0 - conf
    # correct/wrong among inliers; "most OOD" among every case (outliers included) by the deployed score
    cases = [
        (int(np.flatnonzero(inlier)[i]), c)
        for i, c in pick_cases(
            y[inlier], y_pred[inlier], conf[inlier], None, n_per_category=request.saliency, seed=request.seed
        )
    ]
    taken = {i for i, _ in cases}
    cases += [(int(i), "most-ood") for i in np.argsort(-ood, kind="stable") if int(i) not in taken][: request.saliency]
    shown = _shown_instances(both.frame, cases)
    rows = cohort.manifest.set_index("image_id").loc[[image_id for _, _, image_id, _ in shown]].reset_index()
    ds = CohortDataset(cohort, rows)
    images = torch.stack([ds[j]["image"] for j in range(len(ds))])
    targets = [int(y_pred[i]) for i, _, _, _ in shown]
    ig = saliency_maps(classifier, images, targets, method="integrated_gradients")
    cam = saliency_maps(classifier, images, targets, method="gradcam")
    records = []
    for j, (i, category, image_id, instance) in enumerate(shown):
        file = f"saliency/case-{j:02d}.npz"
        with atomic_path(folder / file) as tmp:
            np.savez_compressed(tmp, image=images[j].numpy(), integrated_gradients=ig[j], gradcam=cam[j])
        label = both.frame["label"][i]
        records.append(
            SaliencyRecord(
                case_id=both.frame["case_id"][i] if "case_id" in both.frame else image_id,
                category=category,
                file=file,
                true_label=None if pd.isna(label) else str(label),
                predicted_label=entry.classes[int(y_pred[i])],
                confidence=float(conf[i]),
                ood_score=None if both.ood_score is None else float(both.ood_score[i]),
                **instance,
            )
        )
    return records


#: Instances shown per case of a case cohort: its top ones by the bag head's pooling weight.
_INSTANCES_PER_CASE = 2


def _shown_instances(frame: pd.DataFrame, cases: list[tuple[int, str]]) -> list[tuple[int, str, str, dict]]:
    """``(row, category, image id, instance facts)`` of every image the gallery shows: the row's image, or for a case
    cohort the case's top instances (their rank, pooling weight and place in the case's order)."""
    if "case_id" not in frame:
        return [(i, category, str(frame["image_id"][i]), {}) for i, category in cases]
    shown = []
    for i, category in cases:
        top = zip(frame["top_instances"][i], frame["top_weights"][i], frame["top_positions"][i])
        for rank, (image_id, weight, position) in enumerate(list(top)[:_INSTANCES_PER_CASE]):
            facts = {
                "instance_id": str(image_id),
                "instance_rank": rank + 1,
                "instance_weight": float(weight),
                "instance_position": int(position),
                "n_instances": int(frame["n_instances"][i]),
            }
            shown.append((i, category, str(image_id), facts))
    return shown
