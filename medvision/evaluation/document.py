"""``metrics.json`` as a typed document, and the evaluation folder around it.

The evaluate stage (:func:`medvision.evaluation.stage.evaluate_models`) is the one writer; the report, the
benchmarks and anyone else read :class:`Evaluation` (``Evaluation.open(folder)``), never keys of a dict. The
field-by-field description is ``docs/metrics.md``. Per-image arrays are not in the JSON: predictions and OOD scores
are parquet tables beside it (:meth:`Evaluation.predictions`, :meth:`Evaluation.ood_scores`), so ``metrics.json``
stays small whatever the size of the test set.

Each model's trust record (``ModelMetrics.trust``: conformal sets, the referral rule, calibration per group and site)
is its own module, :mod:`~medvision.evaluation.trust_document`: a closed subtree (no trust part refers to another
part of the document) built by one module (``trust.py``). The base both modules' parts share is in ``_part.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
from pydantic import Field, model_validator

from medvision._documents import Document
from medvision.evaluation._part import Part as _Part
from medvision.evaluation.settings import (
    AbstainSettings,
    CalibrationSettings,
    ConformalSettings,
    DeferralCosts,
    TTASettings,
)
from medvision.evaluation.trust_document import Trust

__all__ = [
    "METRICS_FILE",
    "Calibration",
    "CalibrationTables",
    "DetectorChoice",
    "Estimate",
    "Evaluation",
    "MetricsDocument",
    "ModelMetrics",
    "OODScreening",
    "PretrainedGuards",
    "SetMetrics",
    "Subgroups",
]

METRICS_FILE = "metrics.json"


class Estimate(_Part):
    """A point estimate and its 95% patient-level bootstrap interval (``None``: undefined, e.g. one class only)."""

    value: float | None = None
    low: float | None = None
    high: float | None = None


class SetMetrics(_Part):
    """Discrimination on one evaluation set (inlier images of the inlier classes only)."""

    n_images: int
    n_patients: int
    auroc: Estimate
    accuracy: Estimate
    sensitivity: Estimate | None = None
    specificity: Estimate | None = None
    #: ``binary`` or ``macro one-vs-rest over N classes`` (N: the classes present).
    auroc_kind: str
    #: The positive class against the rest (more than two classes only).
    auroc_positive: Estimate | None = None
    class_counts: list[int]
    classes_absent: list[int]
    #: Images of abstention classes left out of every metric (``None`` for the ensemble, which scores inliers).
    abstention_images_excluded: int | None = None


class CalibrationRow(_Part):
    method: str
    nll: float | None
    brier: float | None
    ece: float | None


class ReliabilityBin(_Part):
    method: str
    confidence: float
    accuracy: float
    count: int


class CalibrationTables(_Part):
    metrics: list[CalibrationRow]
    reliability: list[ReliabilityBin]


class Calibration(CalibrationTables):
    """Calibration on the in-distribution set, and the method chosen on validation (what the report quotes)."""

    set: str
    chosen: str | None = None


class DetectorRow(_Part):
    """One OOD detector; outliers are the positive class, a higher score means more out of distribution."""

    detector: str
    auroc: float | None
    auroc_low: float | None = None
    auroc_high: float | None = None
    aupr_in: float | None
    aupr_out: float | None
    fpr_at_95_tpr: float | None


class DeferralPoint(_Part):
    detector: str
    threshold: float | None
    referral_rate: float
    retained_accuracy: float | None
    outliers_missed: float
    mean_cost: float


class OODGroupRow(_Part):
    detector: str
    group: str
    n_images: int
    auroc: float | None


class PretrainedGuards(_Part):
    """The frozen-feature OOD guards: kNN and Mahalanobis on the *pretrained* backbone's embeddings (the weights the
    run started from), fitted on the training inliers, beside the fine-tuned model's own detectors."""

    #: Where the pretrained weights came from (the backbone's weights record), ``None`` when it records none.
    source: str | None
    #: SHA-256 of the pretrained backbone's tensors (the feature cache's key), ``None`` when not built.
    weights_digest: str | None = None
    #: The detector names added to ``OODScreening.detectors`` (empty when skipped).
    detectors: list[str] = Field(default_factory=list)
    #: Why no guard was computed (random initial weights, weights not loadable here, a frozen backbone).
    skipped: str | None = None


class DetectorChoice(_Part):
    """Which detector the report leads with, and why: the best OOD AUROC on *validation* (never test), only when
    the validation split holds outliers; otherwise the head's declared score."""

    #: The detector the report names (the best on validation, or the head's declared score).
    chosen: str
    #: The head's declared score (``OODScreening.primary``).
    declared: str
    on_validation: bool
    validation_inliers: int
    validation_outliers: int
    #: The outlier conditions (labels) of the validation outliers.
    validation_conditions: list[str] = Field(default_factory=list)
    #: Every detector on validation inliers against validation outliers (empty without validation outliers).
    validation: list[DetectorRow] = Field(default_factory=list)
    reason: str


class OODScreening(_Part):
    """Outlier screening of one model: inliers of ``inliers`` against every image of ``outliers``."""

    inliers: str
    outliers: list[str]
    #: The head's declared OOD score (``msp`` for heads without one).
    primary: str
    detectors: list[DetectorRow]
    #: Per-image scores (``detector``, ``score``, ``is_outlier``), relative to the evaluation folder.
    scores_file: str
    deferral: list[DeferralPoint]
    by_group: list[OODGroupRow]
    inliers_exclude_abstention_images: int
    #: The pretrained-feature guards (``None``: evaluated before schema version 4).
    pretrained: PretrainedGuards | None = None
    #: The detector chosen on validation, or why none could be (``None``: evaluated before schema version 4).
    choice: DetectorChoice | None = None


class SubgroupRow(_Part):
    attribute: str
    group: str
    n_patients: int
    n_images: int
    #: Patients holding an image of the positive class / of another class (``None`` in older documents).
    n_positive: int | None = None
    n_negative: int | None = None
    #: Why the group has no value, interval or gap (``;``-joined ``few_patients``, ``single_class``,
    #: ``few_positives``, ``few_negatives``); empty or ``None`` for a usable group.
    flag: str | None = None
    value: float | None = None
    low: float | None = None
    high: float | None = None
    gap: float | None = None
    gap_low: float | None = None
    gap_high: float | None = None


class SubgroupDifference(_Part):
    attribute: str
    metric: str
    n_groups: int
    max_group: str | None = None
    min_group: str | None = None
    difference: float | None = None
    low: float | None = None
    high: float | None = None


class Subgroups(_Part):
    set: str
    metric: str
    overall: Estimate
    table: list[SubgroupRow]
    differences: list[SubgroupDifference]


class ShiftRow(_Part):
    metric: str
    before: float | None
    after: float | None
    change: float | None


class LabelShift(_Part):
    """The EM estimate of the held-out site's class prior and metrics before/after adjusting for it."""

    prior_validation: list[float]
    prior_estimated: list[float]
    prior_true: list[float]
    comparison: list[ShiftRow]


class HistoryPoint(_Part):
    metric: str
    epoch: int
    value: float | None


class OperatingPointRecord(_Part):
    rule: str
    threshold: float


class ModelMetrics(_Part):
    """Everything measured for one model (see ``docs/metrics.md``)."""

    name: str
    run_id: str
    stage: str | None = None
    member: str | None = None
    backbone: str | None = None
    weights: str | None = None
    head: str | None = None
    label_fraction: float = 1.0
    seed: int | None = None
    classes: list[str]
    positive_class: str
    operating_point: OperatingPointRecord | None = None
    #: Why no operating point was chosen, e.g. "validation holds no case of melanoma" (``None``: one was chosen,
    #: or the document predates this field): without it no sensitivity or specificity is measured anywhere.
    no_operating_point: str | None = None
    temperature: float
    sets: dict[str, SetMetrics]
    calibration: Calibration | None = None
    calibration_by_set: dict[str, CalibrationTables] = Field(default_factory=dict)
    ood: OODScreening | None = None
    subgroups: Subgroups | None = None
    label_shift: LabelShift | None = None
    #: When to trust this model (``None``: evaluated before schema version 3).
    trust: Trust | None = None
    #: The models this one averages (a seed ensemble, ``evaluation/seed_ensemble.py``); empty for a single run,
    #: whose ``run_id`` it is (an ensemble's ``run_id`` is its first member's).
    ensemble_of: list[str] = Field(default_factory=list)
    history: list[HistoryPoint] = Field(default_factory=list)


class EnsembleOOD(_Part):
    detector: str
    auroc: float | None
    auroc_low: float | None = None
    auroc_high: float | None = None
    aupr_in: float | None
    aupr_out: float | None
    fpr_at_95_tpr: float | None


class EnsembleMetrics(_Part):
    members: list[str]
    val_nll: list[float]
    sets: dict[str, SetMetrics]
    ood: list[EnsembleOOD]
    operating_point: OperatingPointRecord | None = None


class RankRow(_Part):
    model: str
    loo_1nn_accuracy: float | None
    rank: int


class SaliencyRecord(_Part):
    case_id: str
    category: Literal["correct", "wrong", "most-ood"]
    #: The ``.npz`` arrays (``image``, ``integrated_gradients``, ``gradcam``), relative to the evaluation folder.
    file: str
    true_label: str | None
    predicted_label: str
    confidence: float
    ood_score: float | None
    #: Case cohorts (series, study, patient): the image shown is one of the case's top instances by the bag head's
    #: pooling weight: its image id, rank (from 1), weight, place in the case's order (0-based) and the case's length.
    instance_id: str | None = None
    instance_rank: int | None = None
    instance_weight: float | None = None
    instance_position: int | None = None
    n_instances: int | None = None


class CodeVersion(_Part):
    """The code that computed the numbers (:func:`medvision._version.code_provenance`)."""

    package: str
    commit: str | None
    dirty: bool | None
    label: str
    key: str


class CohortRef(_Part):
    name: str
    manifest_sha256: str
    #: Inlier classes.
    classes: list[str]
    #: The built cohort's folder (its card is read by the report).
    dir: str
    #: What one row of every table is: ``image``, or a ``series`` / ``study`` / ``patient`` case (then every
    #: count called ``n_images`` counts cases, and the predictions have one row per case).
    unit: str = "image"


class TTARecord(_Part):
    """Test-time augmentation of every model's predictions (``evaluation/tta.py``): what was asked for, the preset
    it resolved to on this cohort and the views averaged (``["identity"]``: none)."""

    settings: TTASettings
    preset: str
    views: list[str]


class Settings(_Part):
    sets: list[str]
    subgroups: list[str]
    bootstrap: int
    min_patients: int
    #: ``None`` in documents written before these minimums existed.
    min_positives: int | None = None
    min_negatives: int | None = None
    referral_rate: float
    seed: int
    outlier_sets: list[str]
    costs: DeferralCosts
    risk: dict[str, str]
    positive_class: str | None = None
    #: The trust settings used (``None``: evaluated before schema version 3).
    conformal: ConformalSettings | None = None
    abstain: AbstainSettings | None = None
    calibration: CalibrationSettings | None = None
    #: Test-time augmentation (``None``: evaluated before it existed, i.e. none).
    tta: TTARecord | None = None
    #: Whether each stage's seed members were also evaluated as one model (a seed ensemble).
    seed_ensemble: bool = False


class MetricsDocument(Document):
    """``metrics.json``: written by the evaluate stage, read through :class:`Evaluation`."""

    document: ClassVar[str] = "metrics document (metrics.json)"
    remedy: ClassVar[str] = "evaluate again with this medvision (`medvision evaluate RUN... --out DIR`)"

    schema_version: Literal[4] = 4
    code_version: CodeVersion
    cohort: CohortRef
    settings: Settings
    #: The model the report is about (the largest label fraction).
    primary_model: str | None
    models: list[ModelMetrics]
    saliency: list[SaliencyRecord] = Field(default_factory=list)
    ensemble: EnsembleMetrics | None = None
    backbone_ranking: list[RankRow] = Field(default_factory=list)

    @classmethod
    def upgrade(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Versions 2 and 3 lack only optional fields: the trust record (added in 3), the pretrained-feature guards,
        the detector chosen on validation and the ensemble's AUROC interval (added in 4). Read them with those
        absent."""
        if raw.get("schema_version") in (2, 3):
            raw["schema_version"] = 4
        return raw

    @model_validator(mode="after")
    def _one_model_per_name(self) -> MetricsDocument:
        # Predictions live in predictions/<name>/: two models of one name would share (overwrite) one folder, and
        # any comparison between them would compare a model with itself.
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"model name(s) appear more than once ({', '.join(twice)}): their predictions share one folder, so "
                "one model's overwrote the other's"
            )
        return self

    @property
    def primary(self) -> ModelMetrics:
        """The primary model (the first when none is named)."""
        return next((m for m in self.models if m.name == self.primary_model), self.models[0])

    def model(self, name: str) -> ModelMetrics:
        """The model called ``name``; ``KeyError`` naming the models there are."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in this evaluation; it has {[m.name for m in self.models]}")


class Evaluation:
    """An evaluation folder: ``metrics.json`` plus the per-image tables and arrays it points to.

    Example (needs an evaluation folder, so it is shown, not run)::

        ev = Evaluation.open("runs/demo/evaluate/0123abcd")
        ev.metrics.primary.sets["test"].auroc.value
        ev.predictions(ev.metrics.primary.name, "test")   # one row per image
    """

    def __init__(self, folder: Path, metrics: MetricsDocument) -> None:
        self.folder, self.metrics = folder, metrics

    @classmethod
    def open(cls, folder: str | Path) -> Evaluation:
        """Read ``folder/metrics.json``.

        Raises:
            DocumentError: missing, damaged or written by another schema version.
        """
        folder = Path(folder)
        return cls(folder, MetricsDocument.read(folder / METRICS_FILE))

    def predictions(self, model: str, split: str) -> pd.DataFrame:
        """The predictions table of ``model`` on ``split`` (one row per image; see ``docs/metrics.md``)."""
        return pd.read_parquet(self.folder / predictions_path(model, split))

    def ood_scores(self, model: ModelMetrics) -> pd.DataFrame | None:
        """Per-image OOD scores of ``model`` (``detector``, ``score``, ``is_outlier``); ``None`` without screening."""
        if model.ood is None:
            return None
        return pd.read_parquet(self.folder / model.ood.scores_file)

    def path(self, relative: str) -> Path:
        """A file the document names (saliency arrays, score tables), inside the folder."""
        return self.folder / relative


def predictions_path(model: str, split: str) -> str:
    """Where the predictions of ``model`` on ``split`` are, relative to the evaluation folder."""
    return f"predictions/{model}/{split}.parquet"


def ood_scores_path(model: str) -> str:
    """Where the per-image OOD scores of ``model`` are, relative to the evaluation folder."""
    return f"ood_scores/{model}.parquet"
