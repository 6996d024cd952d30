"""The typed data a clinical report is rendered from.

The report is a pure function of a :class:`ReportContext`: plain Python values and pandas DataFrames in long
format, one row per measurement, so a caller fills it straight from the evaluation frames (bootstrap CIs, OOD
metrics, deferral curves, subgroup frames) without reshaping. Every section is optional: a section left ``None``
(or given an empty frame) is rendered as a heading with a "not run in this pipeline" note, never as an empty figure.

Column names are part of the contract and are checked when the context is built; a missing column raises a
:class:`ReportError` naming the section, the frame and the columns to add. Extra columns are allowed and ignored.
Confidence-interval columns (``low``/``high``) are 95% percentile bootstrap intervals over patients (see the
method spec §10); ``NaN`` means "no interval", and the value is then shown without one.

Privacy: the context must carry only pseudonymous ids and subgroup attributes. :func:`render_report` scans every
text value against caller-supplied forbidden strings before rendering (see ``guard.py``).

Example:
    >>> import pandas as pd
    >>> perf = pd.DataFrame({"eval_set": ["test"], "metric": ["auroc"], "value": [0.91],
    ...                      "low": [0.88], "high": [0.94]})
    >>> ctx = ReportContext(title="Melanoma triage", performance=PerformanceSection(table=perf))
    >>> ctx.cohort is None
    True
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medvision.cohort.card import CohortCard
from medvision.errors import InputError
from medvision.report.study import StudySection
from medvision.report.trust import TrustSection

__all__ = [
    "CalibrationSection",
    "CohortSection",
    "DataEfficiencySection",
    "OODSection",
    "PerformanceSection",
    "ReportContext",
    "ReportError",
    "Reproducibility",
    "SaliencyCase",
    "SaliencySection",
    "SubgroupSection",
    "SummaryOptions",
    "TrainingSection",
    "TrainingStage",
    "runtime_versions",
]

SALIENCY_CATEGORIES = ("correct", "wrong", "most-ood")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


class ReportError(InputError):
    """A report that cannot be rendered. The message names the section/field and says what to change."""


class _Model(BaseModel):
    # DataFrames and arrays are not pydantic types: allow them, but keep unknown keys an error.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _frame(df: Any, where: str, required: tuple[str, ...]) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise ReportError(
            f"{where}: expected a pandas DataFrame with columns {list(required)}, got {type(df).__name__}"
        )
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportError(
            f"{where}: missing column(s) {missing}; the frame has {list(df.columns)}. "
            f"Rename or add them (required: {list(required)})."
        )
    return df


def _optional_frame(df: Any, where: str, required: tuple[str, ...]) -> pd.DataFrame | None:
    return None if df is None else _frame(df, where, required)


# -- summary --------------------------------------------------------------------------------------


class SummaryOptions(_Model):
    """Which numbers feed the one-page summary, and the thresholds that turn them into words.

    The thresholds are starting points a clinical team should agree on, not facts; they are printed in the report.
    """

    metric: str = "auroc"  # headline discrimination metric (a ``metric`` value in the table)
    id_set: str = "test"  # in-distribution test set (an ``eval_set`` value)
    site_ood_set: str | None = "site_ood"  # the other site; None when the cohort holds no other site
    material_drop: float = 0.05  # a drop this large (absolute) on the other site is called material
    referral_rate: float = 0.10  # share of cases referred for review at the quoted operating point
    ece_good: float = 0.05  # ECE at or below this reads "well calibrated"
    ece_poor: float = 0.10  # ECE above this reads "poorly calibrated"
    wide_ci: float = 0.10  # a headline CI wider than this gets a caveat
    collapse_drop: float = 0.20  # sensitivity/specificity this much lower on another set than on test: a collapse
    chance_auroc: float = 0.60  # an in-distribution AUROC below this is near chance: no transfer claim is made
    prevalence_gap: float = 0.10  # class shares differing this much between test and the held-out site: caveat
    caveats: list[str] = Field(default_factory=list)  # extra caveats from the caller, shown verbatim

    @field_validator("referral_rate")
    @classmethod
    def _rate(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("summary.referral_rate must be a fraction in (0, 1), e.g. 0.1 for 10%")
        return v


# -- cohort ---------------------------------------------------------------------------------------


class CohortSection(_Model):
    """The cohort card: what the model was trained and tested on.

    Frames:
        splits: ``split``, ``patients``, ``images`` — one row per split.
        counts: ``split``, ``label``, ``images`` — images per split x class.
        subgroups: ``attribute``, ``value``, ``split``, ``images`` — images per split x subgroup value (optional).
    """

    name: str
    classes: list[str]
    splits: pd.DataFrame
    counts: pd.DataFrame
    subgroups: pd.DataFrame | None = None
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)
    manifest_sha256: str

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: Any) -> pd.DataFrame:
        return _frame(v, "cohort.splits", ("split", "patients", "images"))

    @field_validator("counts")
    @classmethod
    def _counts(cls, v: Any) -> pd.DataFrame:
        return _frame(v, "cohort.counts", ("split", "label", "images"))

    @field_validator("subgroups")
    @classmethod
    def _subgroups(cls, v: Any) -> pd.DataFrame | None:
        return _optional_frame(v, "cohort.subgroups", ("attribute", "value", "split", "images"))

    @classmethod
    def from_card(cls, card: CohortCard) -> CohortSection:
        """Build the section from a built cohort's card (``cohort.json``), so callers never reshape it."""
        splits, counts, subgroups = [], [], []
        for split, entry in card.counts.items():
            splits.append({"split": split, "patients": entry.patients, "images": entry.images})
            counts += [{"split": split, "label": lab, "images": n} for lab, n in entry.by_label.items()]
            for attr, values in entry.by_subgroup.items():
                subgroups += [
                    {"attribute": attr, "value": val, "split": split, "images": sum(by_label.values())}
                    for val, by_label in values.items()
                ]
        return cls(
            name=card.name,
            classes=list(card.classes),
            splits=pd.DataFrame(splits),
            counts=pd.DataFrame(counts),
            subgroups=pd.DataFrame(subgroups) if subgroups else None,
            quarantined=card.quarantined,
            quarantine_reasons=dict(card.quarantine_reasons),
            manifest_sha256=card.manifest_sha256,
        )


# -- training -------------------------------------------------------------------------------------


class TrainingStage(_Model):
    """One stage of the recipe (e.g. SimCLR pretraining, then supervised fine-tuning; see the method spec §1-§3)."""

    name: str
    backbone: str
    weights_source: str
    head: str
    label_fraction: float = 1.0
    epochs: int
    best_val_metric: str | None = None
    best_val_value: float | None = None
    mlflow_run_id: str | None = None


class TrainingSection(_Model):
    """Stages and learning curves.

    Frames:
        curves: ``stage``, ``epoch``, ``metric``, ``value`` — one row per stage x epoch x logged metric
            (e.g. ``train_loss``, ``val_loss``, ``val_auroc``); optional.
    """

    stages: list[TrainingStage]
    curves: pd.DataFrame | None = None

    @field_validator("curves")
    @classmethod
    def _curves(cls, v: Any) -> pd.DataFrame | None:
        return _optional_frame(v, "training.curves", ("stage", "epoch", "metric", "value"))


# -- performance ----------------------------------------------------------------------------------


class PerformanceSection(_Model):
    """Discrimination per evaluation set, with no retraining for the out-of-distribution sets (method spec §1).

    Frames:
        table: ``eval_set``, ``metric``, ``value``, ``low``, ``high`` — one row per set x metric; metrics are
            named ``auroc``, ``accuracy``, ``sensitivity``, ``specificity`` (others are shown too). Sensitivity and
            specificity are at the operating point chosen on validation (method spec §10).
    """

    table: pd.DataFrame
    operating_point: str | None = None  # how the threshold was chosen, e.g. "Youden on validation"
    #: Why no threshold was chosen (e.g. "validation holds no case of melanoma"): then no sensitivity or
    #: specificity exists, and the section must say why rather than describe a threshold.
    no_operating_point: str | None = None

    @field_validator("table")
    @classmethod
    def _table(cls, v: Any) -> pd.DataFrame:
        return _frame(v, "performance.table", ("eval_set", "metric", "value", "low", "high"))


# -- calibration ----------------------------------------------------------------------------------


class CalibrationSection(_Model):
    """Probability quality before/after temperature scaling (method spec §1: ECE with 15 equal-width bins, NLL, Brier).

    Frames:
        metrics: ``method``, ``nll``, ``brier``, ``ece`` — one row per calibration method, e.g. ``uncalibrated`` and
            ``temperature-scaled``; the summary quotes the row named by ``deployed`` (default: the last row).
        reliability: ``method``, ``confidence``, ``accuracy``, ``count`` — one row per method x bin (mean
            confidence and observed accuracy in the bin; empty bins are skipped); optional.
    """

    metrics: pd.DataFrame
    reliability: pd.DataFrame | None = None
    temperature: float | None = None
    bins: int = 15
    eval_set: str = "test"
    deployed: str | None = None

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: Any) -> pd.DataFrame:
        return _frame(v, "calibration.metrics", ("method", "nll", "brier", "ece"))

    @field_validator("reliability")
    @classmethod
    def _reliability(cls, v: Any) -> pd.DataFrame | None:
        return _optional_frame(v, "calibration.reliability", ("method", "confidence", "accuracy", "count"))

    @model_validator(mode="after")
    def _deployed_exists(self) -> CalibrationSection:
        if self.deployed is not None and self.deployed not in set(self.metrics["method"]):
            raise ReportError(
                f"calibration.deployed={self.deployed!r} is not a method in calibration.metrics "
                f"({sorted(map(str, self.metrics['method']))}); pick one of those"
            )
        return self


# -- OOD screening --------------------------------------------------------------------------------


class OODSection(_Model):
    """Outlier screening (method spec §4). Convention: an *outlier is the positive class* and a higher score means
    "more likely out of distribution".

    Frames:
        detectors: ``detector``, ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr_at_95_tpr`` — one row per detector.
            ``auroc``: outlier = positive; ``aupr_in``: inlier = positive (score negated); ``aupr_out``: outlier =
            positive; ``fpr_at_95_tpr``: share of inliers flagged at the threshold that catches 95% of outliers.
            Optional ``auroc_low``/``auroc_high``.
        scores: ``detector``, ``score``, ``is_outlier`` — per-image scores for histograms (optional).
        deferral: ``detector``, ``referral_rate``, ``outliers_missed``, ``mean_cost`` — the deferral curve (as
            ``medvision.evaluation.deferral_curve`` returns it, plus a ``detector`` column): refer every case with
            score above a threshold; ``referral_rate`` is the share referred, ``outliers_missed`` the share of
            outliers *not* referred, ``mean_cost`` the mean cost per case under the cost table (optional).
    """

    detectors: pd.DataFrame
    primary: str | None = None  # the deployed detector (default: the first row)
    scores: pd.DataFrame | None = None
    deferral: pd.DataFrame | None = None
    outlier_sets: list[str] = Field(default_factory=list)  # what "outlier" meant here, e.g. unseen conditions
    #: The detector chosen on validation (``None``: none could be, or the evaluation predates the choice).
    chosen: str | None = None
    #: Why that detector, or why none could be chosen on validation (a sentence).
    choice: str | None = None
    #: Every detector on validation inliers against validation outliers (``detector``, ``auroc`` + interval).
    validation: pd.DataFrame | None = None
    #: What the frozen-feature guards are, or why they were not computed (a sentence).
    guards: str | None = None

    @field_validator("validation")
    @classmethod
    def _validation(cls, v: Any) -> pd.DataFrame | None:
        return _optional_frame(v, "ood.validation", ("detector", "auroc", "auroc_low", "auroc_high"))

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, v: Any) -> pd.DataFrame:
        return _frame(v, "ood.detectors", ("detector", "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr"))

    @field_validator("scores")
    @classmethod
    def _scores(cls, v: Any) -> pd.DataFrame | None:
        return _optional_frame(v, "ood.scores", ("detector", "score", "is_outlier"))

    @field_validator("deferral")
    @classmethod
    def _deferral(cls, v: Any) -> pd.DataFrame | None:
        return _optional_frame(v, "ood.deferral", ("detector", "referral_rate", "outliers_missed", "mean_cost"))

    @model_validator(mode="after")
    def _primary_exists(self) -> OODSection:
        if self.primary is not None and self.primary not in set(self.detectors["detector"]):
            raise ReportError(
                f"ood.primary={self.primary!r} is not a detector in ood.detectors "
                f"({sorted(map(str, self.detectors['detector']))}); pick one of those"
            )
        return self

    @property
    def primary_detector(self) -> str | None:
        if self.primary is not None:
            return self.primary
        return None if self.detectors.empty else str(self.detectors["detector"].iloc[0])


# -- subgroups ------------------------------------------------------------------------------------


class SubgroupSection(_Model):
    """Per-subgroup performance and gaps to overall (method spec §1, §10).

    The table is ``medvision.evaluation``'s subgroup frame ``table().reset_index()`` restricted to one metric.

    Frames:
        table: ``attribute``, ``group``, ``patients``, ``images``, ``value``, ``low``, ``high``, ``gap``,
            ``gap_low``, ``gap_high``, ``flag`` — ``gap`` = group - overall (negative: worse than overall),
            its CI from shared bootstrap resamples; ``flag`` is empty for a usable group, else the reason it has no
            estimate and is excluded from gap summaries (``few_patients``, ``single_class``, ``few_positives``,
            ``few_negatives``; said in words with the optional ``n_positive`` / ``n_negative`` counts).
    """

    metric: str = "auroc"
    eval_set: str = "test"
    overall: float
    overall_low: float | None = None
    overall_high: float | None = None
    table: pd.DataFrame

    @field_validator("table")
    @classmethod
    def _table(cls, v: Any) -> pd.DataFrame:
        return _frame(
            v,
            "subgroups.table",
            (
                "attribute",
                "group",
                "n_patients",
                "n_images",
                "value",
                "low",
                "high",
                "gap",
                "gap_low",
                "gap_high",
                "flag",
            ),
        )


# -- data efficiency ------------------------------------------------------------------------------


class DataEfficiencySection(_Model):
    """Metric vs labelled fraction, one line per starting point (method spec §1, §2).

    Frames:
        curve: ``start``, ``label_fraction``, ``value``, ``low``, ``high`` — e.g. start ``"self-supervised
            (REMEDIS)"`` vs ``"supervised (BiT-M)"``; label_fraction in (0, 1].
    """

    metric: str = "auroc"
    eval_set: str = "test"
    curve: pd.DataFrame

    @field_validator("curve")
    @classmethod
    def _curve(cls, v: Any) -> pd.DataFrame:
        return _frame(v, "data_efficiency.curve", ("start", "label_fraction", "value", "low", "high"))


# -- saliency -------------------------------------------------------------------------------------


def _image(v: Any, where: str, heatmap: bool) -> np.ndarray | bytes:
    if isinstance(v, bytes):
        if not (v.startswith(_PNG) or v.startswith(_JPEG)):
            raise ReportError(f"{where}: bytes must be a PNG or JPEG file's contents")
        return v
    if not isinstance(v, np.ndarray):
        raise ReportError(f"{where}: expected a numpy array or PNG/JPEG bytes, got {type(v).__name__}")
    if v.ndim == 2 and heatmap:
        return v
    if v.dtype != np.uint8 or not (v.ndim == 2 or (v.ndim == 3 and v.shape[2] in (3, 4))):
        what = "a 2-D heatmap or a uint8 (H, W, 3) overlay" if heatmap else "uint8 (H, W) or (H, W, 3)"
        raise ReportError(f"{where}: expected {what}, got {v.dtype} {v.shape}")
    return v


class SaliencyCase(_Model):
    """One gallery case. ``case_id`` must be a pseudonymous image id.

    ``image`` is uint8 (H, W) or (H, W, 3), or PNG/JPEG bytes. ``integrated_gradients`` and ``gradcam`` are either a
    2-D attribution map (any dtype; magnitudes are overlaid on the image, resized if needed) or a ready-made overlay
    (uint8 (H, W, 3) or PNG/JPEG bytes) shown as given.
    """

    case_id: str
    category: str  # one of SALIENCY_CATEGORIES
    true_label: str | None = None
    predicted_label: str
    confidence: float | None = None
    ood_score: float | None = None
    image: Any
    integrated_gradients: Any = None
    gradcam: Any = None
    #: Case cohorts (series, study, patient): the shown instance is one of the case's top instances by the bag
    #: head's pooling weight: its rank, weight, place in the case's order (0-based) and the case's length.
    instance_rank: int | None = None
    instance_weight: float | None = None
    instance_position: int | None = None
    n_instances: int | None = None

    @field_validator("category")
    @classmethod
    def _category(cls, v: str) -> str:
        if v not in SALIENCY_CATEGORIES:
            raise ValueError(f"saliency case category must be one of {list(SALIENCY_CATEGORIES)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _images(self) -> SaliencyCase:
        self.image = _image(self.image, f"saliency case {self.case_id}: image", heatmap=False)
        for name in ("integrated_gradients", "gradcam"):
            if getattr(self, name) is not None:
                setattr(self, name, _image(getattr(self, name), f"saliency case {self.case_id}: {name}", True))
        return self


class SaliencySection(_Model):
    """Gallery of attributions: Integrated Gradients and Grad-CAM for correct, wrong and most-OOD cases."""

    cases: list[SaliencyCase]


# -- reproducibility ------------------------------------------------------------------------------


def runtime_versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced: Python, medvision and the numeric stack."""
    out = {"python": platform.python_version()}
    for dist in ("medvision", "torch", "torchvision", "timm", "lightning", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class Reproducibility(_Model):
    """What a reader needs to rerun the evaluation: the resolved config, data version, code version and seeds."""

    config_yaml: str | None = None
    manifest_sha256: str | None = None
    code_version: str | None = None  # e.g. a git commit, with "+dirty" when the tree had changes
    seeds: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=runtime_versions)


# -- the whole report -----------------------------------------------------------------------------


class ReportContext(_Model):
    """Everything the report shows. Leave a section ``None`` when that analysis was not run."""

    title: str
    model_name: str | None = None
    generated_at: str | None = None  # an ISO timestamp from the caller (kept out of here so renders are repeatable)
    summary: SummaryOptions = Field(default_factory=SummaryOptions)
    cohort: CohortSection | None = None
    training: TrainingSection | None = None
    performance: PerformanceSection | None = None
    calibration: CalibrationSection | None = None
    ood: OODSection | None = None
    subgroups: SubgroupSection | None = None
    #: When to trust this model: conformal sets, risk-controlled referral, ECE per subgroup and site.
    trust: TrustSection | None = None
    data_efficiency: DataEfficiencySection | None = None
    saliency: SaliencySection | None = None
    #: What was held out and what each number means, per evaluation set (issue 12's "say what was tested").
    study: StudySection | None = None
    reproducibility: Reproducibility = Field(default_factory=Reproducibility)
