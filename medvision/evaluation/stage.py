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
from medvision.evaluation.cases import predict_cases
from medvision.evaluation.document import (
    METRICS_FILE,
    EnsembleMetrics,
    HistoryPoint,
    MetricsDocument,
    ModelMetrics,
    RankRow,
    SaliencyRecord,
    TTARecord,
    predictions_path,
)
from medvision.evaluation.ensemble_scores import ensemble_metrics, rank_backbones
from medvision.evaluation.guards import StartingWeights, guards_needed, pretrained_guards
from medvision.evaluation.predict import Predictions, predict_rows
from medvision.evaluation.saliency import pick_cases, saliency_maps
from medvision.evaluation.scoring import Scoring, fit_on_validation, inliers, operating_point_record
from medvision.evaluation.seed_ensemble import combine_members, seed_groups
from medvision.evaluation.settings import DeferralCosts, EvaluationSettings
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
    ensemble = ensemble_metrics(member_preds, results, request) if request.ensemble and len(member_preds) > 1 else None
    ranking = rank_backbones(member_preds, results) if len(member_preds) > 1 else []
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
    inlier = {s: inliers(p, k) for s, p in preds.items()}
    fitted = fit_on_validation(classes, request, preds, inlier["val"])
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
        operating_point=operating_point_record(fitted.operating_point),
        no_operating_point=fitted.no_operating_point,
        temperature=float(fitted.scaler.temperature_),
        sets={},
    )
    scored = Scoring(classes, request, preds, inlier, fitted, folder, name)
    entry.sets, entry.calibration_by_set = scored.sets()
    entry.calibration, entry.subgroups, entry.ood = scored.in_distribution()
    entry.label_shift = scored.label_shift()
    entry.trust = scored.trust(multilabel)
    return entry


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
        parts.append(inliers(preds["test"], k))
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
