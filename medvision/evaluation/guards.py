"""Frozen-feature OOD guards, and which detector the report may name the best one.

Fine-tuning erodes what the pretrained features knew about unusual inputs (issue 20: on PAD-UFES-20 held-out
MEL+SCC, the fine-tuned model's scores lose to MSP). A *guard* keeps that knowledge: kNN (Sun et al. 2022, cosine
distance to the k-th nearest training feature) and Mahalanobis (Lee et al. 2018, shared covariance) scores computed
on the embeddings of the **pretrained** backbone, the weights the run started from (its ``backbone.*`` MLflow
parameters: the weights string, options and the starting file's SHA-256), fitted on the training inliers exactly as
the fine-tuned model's own ``knn`` / ``mahalanobis`` (:func:`~medvision.evaluation.tables.fit_detectors`). The
pretrained backbone embeds each image once through the frozen-feature cache (:mod:`medvision.engine.features`,
keyed by the weights' digest), so a re-evaluation, another seed or another recipe of the same start reuses its
features.

No guard without pretrained weights: a run that started from random weights (``backbone.weights: none``) has no
pretrained features worth guarding with, weights that cannot be loaded here (a hub checkpoint not cached offline, a
moved file) are named with the reason, and a frozen backbone's features already *are* the pretrained ones.

Which detector leads the report is chosen on **validation**, never on test (method spec §10): the one with the
highest OOD AUROC on validation inliers against validation outliers, the head's declared score winning ties. A
validation split without outliers cannot choose, and then the head's declared score is kept and the record says
so. Validation outliers are *training* outlier conditions (HOD's abstention classes; test outliers are unseen
conditions), so the choice says which detector separates known outliers, not that it will win on unseen ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medvision.cohort.cohort import Cohort
from medvision.engine.features import FeatureCache, weights_digest
from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.document import DetectorChoice, DetectorRow, PretrainedGuards
from medvision.evaluation.predict import Predictions
from medvision.evaluation.settings import EvaluationSettings
from medvision.evaluation.tables import detector_row, detector_scores, fit_detectors
from medvision.models import Backbone, WeightsError, create_backbone

__all__ = [
    "PRETRAINED_SUFFIX",
    "Guards",
    "PretrainedDetector",
    "PretrainedFeatures",
    "StartingWeights",
    "choose_detector",
    "guards_needed",
    "guards_on",
    "pretrained_backbone",
    "pretrained_guards",
]

#: The guards' names: the fine-tuned detector's name plus this (``knn_pretrained``, ``mahalanobis_pretrained``).
PRETRAINED_SUFFIX = "_pretrained"


@dataclass(frozen=True)
class PretrainedFeatures:
    """The pretrained backbone's embedding of every predicted image, looked up by ``image_id``."""

    row_of: dict[str, int]
    embeddings: np.ndarray

    def of(self, pred: Predictions) -> np.ndarray:
        """The embeddings of ``pred``'s images, in its row order."""
        ids = pred.frame["image_id"].astype(str)
        missing = [i for i in ids if i not in self.row_of]
        if missing:
            raise KeyError(f"no pretrained features for images {missing[:3]}: embed every predicted set first")
        return self.embeddings[[self.row_of[i] for i in ids]]


@dataclass(frozen=True)
class PretrainedDetector:
    """A fitted feature-space detector (``KNNDetector``, ``MahalanobisDetector``) reading pretrained features: a
    :class:`~medvision.evaluation.tables.PredictionsDetector`, so every table scores it beside the others."""

    detector: Any
    features: PretrainedFeatures

    def score_predictions(self, pred: Predictions) -> np.ndarray:
        return np.asarray(self.detector.score(self.features.of(pred)))


@dataclass
class Guards:
    """What :func:`pretrained_guards` adds to a model's detectors, and its record for ``metrics.json``."""

    record: PretrainedGuards
    detectors: dict[str, PretrainedDetector] = field(default_factory=dict)


@dataclass(frozen=True)
class StartingWeights:
    """The weights a fine-tuning run started from, as its MLflow parameters record them (``backbone.*``): a loaded
    classifier's own weights record names where *its* (fine-tuned) file was loaded from, not where training began."""

    name: str
    #: The ``weights`` string the run was given (``none``, ``hub``, ``file:PATH``, ...).
    weights: str
    options: dict[str, Any]
    #: SHA-256 of the starting weight file when it was a local file (``backbone.sha256``).
    sha256: str | None

    @classmethod
    def of_run(cls, run_id: str, tracking_uri: str | None) -> StartingWeights | None:
        """The run's starting weights; ``None`` when the run (or its ``backbone.*`` parameters) cannot be read."""
        try:
            params = MlflowClient(tracking_uri).get_run(run_id).data.params
        except MlflowException:
            return None
        if "backbone.name" not in params or "backbone.weights" not in params:
            return None
        options = _json(params.get("backbone.options")) or {}
        sha = _json(params.get("backbone.sha256"))
        return cls(params["backbone.name"], params["backbone.weights"], dict(options), sha if sha else None)


def _json(value: str | None) -> Any:
    try:
        return None if value is None else json.loads(value)
    except ValueError:
        return value


def pretrained_backbone(start: StartingWeights | None, backbone: Any) -> tuple[Backbone | None, str | None]:
    """The backbone a run started from, rebuilt: ``(pretrained, why_not)``.

    ``pretrained`` is ``None`` (and ``why_not`` says why) when the starting weights are unknown or random, cannot
    be loaded here or differ from the recorded file, or when fine-tuning left the backbone unchanged (frozen).
    """
    if start is None:
        return None, "the run records no starting weights (backbone.* parameters), so there is nothing to rebuild"
    if start.weights == "none":
        return None, (
            "the run started from random weights (backbone.weights: none): there are no pretrained features to "
            "guard with; fine-tune from pretrained weights to get them"
        )
    in_chans = int(backbone.weights_record.in_chans)
    try:
        pretrained = create_backbone(start.name, weights=start.weights, in_chans=in_chans, **start.options)
    except (WeightsError, OSError) as e:
        return None, (
            f"the starting weights {start.weights!r} cannot be loaded here ({e}); make them available (e.g. "
            "`medvision weights fetch` and file:) and evaluate again"
        )
    found = pretrained.weights_record.sha256
    if start.sha256 and found and found != start.sha256:
        return None, (
            f"the starting weights {start.weights!r} now have SHA-256 {found[:12]}..., not the {start.sha256[:12]}... "
            "the run started from; restore that file and evaluate again"
        )
    if weights_digest(pretrained) == weights_digest(backbone):
        return None, (
            "fine-tuning left the backbone unchanged (frozen): its embeddings are the pretrained ones, already "
            "scored as knn and mahalanobis"
        )
    return pretrained, None


def guards_needed(settings: EvaluationSettings) -> bool:
    """Whether an evaluation uses the guards: it screens an outlier set, or its referral rule reads a guard. Otherwise
    embedding every set through a second backbone would buy nothing."""
    screens = bool(set(settings.outlier_sets) & set(settings.sets))
    ood = settings.abstain.ood
    return screens or (ood is not None and ood.endswith(PRETRAINED_SUFFIX))


def pretrained_guards(
    classifier: Any, start: StartingWeights | None, cohort: Cohort, preds: dict[str, Predictions], k: int
) -> Guards:
    """kNN and Mahalanobis on the embeddings of the backbone the run started from (``start``), fitted on
    ``preds["train"]``'s ``k`` inlier classes; the images of every set in ``preds`` are embedded (once, through the
    feature cache)."""
    source = None if start is None else start.weights
    backbone, why_not = pretrained_backbone(start, classifier.backbone)
    if backbone is None:
        return Guards(PretrainedGuards(source=source, skipped=why_not))
    ids = list(dict.fromkeys(i for p in preds.values() for i in p.frame["image_id"].astype(str)))
    manifest = cohort.manifest.assign(image_id=cohort.manifest["image_id"].astype(str)).set_index("image_id")
    store = FeatureCache.for_cohort(cohort.cache, backbone)
    emb = store.features(cohort.cache, manifest.loc[ids, "cache_key"].tolist())
    features = PretrainedFeatures({i: j for j, i in enumerate(ids)}, emb)
    return guards_on(features, preds["train"], k, PretrainedGuards(source=source, weights_digest=store.digest))


def guards_on(features: PretrainedFeatures, train: Predictions, k: int, record: PretrainedGuards) -> Guards:
    """The guards on ``features``: the fine-tuned model's feature detectors (same kinds, same ``k`` neighbours),
    fitted on the pretrained embeddings of ``train``'s inlier images, named with :data:`PRETRAINED_SUFFIX`."""
    on_pretrained = Predictions(train.frame, train.logits, train.probs, features.of(train), train.ood_score)
    detectors = {
        f"{name}{PRETRAINED_SUFFIX}": PretrainedDetector(det, features)
        for name, det in fit_detectors(on_pretrained, k).items()
    }
    return Guards(record.model_copy(update={"detectors": list(detectors)}), detectors)


def choose_detector(
    val: Predictions, detectors: dict[str, Any], k: int, declared: str, n_resamples: int, seed: int
) -> DetectorChoice:
    """The detector with the highest OOD AUROC on validation (outliers: images of the training outlier conditions,
    label index ``>= k``; any number of them), the ``declared`` score winning ties; without validation outliers (or
    inliers) none can be chosen and ``declared`` is kept."""
    y = val.frame["label_idx"].to_numpy()
    is_ood = y >= k
    inliers, outliers = int((~is_ood).sum()), int(is_ood.sum())
    conditions = sorted({str(c) for c in val.frame["label"][is_ood].dropna()})
    if not outliers or not inliers:
        return DetectorChoice(
            chosen=declared,
            declared=declared,
            on_validation=False,
            validation_inliers=inliers,
            validation_outliers=outliers,
            reason=(
                f"The validation split holds {outliers} outlier and {inliers} inlier images, so no detector can be "
                f"chosen on validation (test never chooses); the head's declared score ({declared}) is kept."
            ),
        )
    bs = Bootstrap(val.frame["patient_id"].to_numpy(), n_resamples=max(n_resamples, 1), seed=seed)
    rows = [
        DetectorRow.model_validate(detector_row(name, score, is_ood, bs))
        for name, score in detector_scores(val, detectors, k).items()
    ]
    best = max(rows, key=lambda r: (-1.0 if r.auroc is None else r.auroc, r.detector == declared))
    how = "keeps" if best.detector == declared else "replaces"
    return DetectorChoice(
        chosen=best.detector,
        declared=declared,
        on_validation=True,
        validation_inliers=inliers,
        validation_outliers=outliers,
        validation_conditions=conditions,
        validation=rows,
        reason=(
            f"{best.detector} has the highest OOD AUROC on validation ({best.auroc:.3f}; {outliers} images of the "
            f"training outlier condition(s) {', '.join(conditions)} against {inliers} inlier images), so it {how} "
            f"the head's declared score ({declared}). Validation outliers are conditions seen in training; unseen "
            "conditions may rank the detectors differently."
        ),
    )
