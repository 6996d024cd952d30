"""How an evaluation is run, with every default declared once: the pipeline's ``evaluate`` stage, the
``medvision evaluate`` command and :class:`~medvision.evaluation.stage.EvaluationRequest` all read these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medvision.cohort.spec import SPLITS
from medvision.config import StrictModel, did_you_mean
from medvision.errors import InputError

if TYPE_CHECKING:
    from medvision.cohort.named_values import CohortFacts

__all__ = [
    "AbstainSettings",
    "CalibrationSettings",
    "ConformalSettings",
    "DeferralCosts",
    "EvaluationSettings",
    "OOD_SCORES",
    "TTASettings",
]

#: OOD scores an abstention rule may combine with its confidence threshold: the detectors every evaluation
#: computes (``hod`` only for HOD heads). Higher = more out of distribution, as in ``evaluation/ood.py``.
OOD_SCORES = ("hod", "msp", "max_logit", "energy", "mahalanobis", "knn")


class DeferralCosts(BaseModel):
    """Cost of each outcome when a model may defer (refer) a case to a clinician (see the method spec §4).

    All values are *defaults* to be set with clinicians for a given deployment; units are arbitrary but shared.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inlier_correct: float = Field(0.0, description="inlier retained and classified correctly")
    inlier_misclassified: float = Field(1.0, description="inlier retained and misclassified")
    inlier_deferred: float = Field(0.1, description="inlier sent to a clinician (small: their time)")
    outlier_deferred: float = Field(0.0, description="outlier sent to a clinician (about zero: the right call)")
    outlier_missed: dict[str, float] = Field(
        default_factory=lambda: {"low": 1.0, "medium": 5.0, "high": 20.0},
        description="outlier retained (silently mislabelled), by the condition's risk level",
    )


class ConformalSettings(StrictModel):
    """Conformal prediction sets calibrated on the validation patients (``evaluation/conformal.py``)."""

    #: Fit and report the sets (single-label models with labelled validation patients; otherwise the evaluation
    #: records why they were skipped).
    enabled: bool = True
    #: Coverage the sets promise for a new patient exchangeable with the validation ones.
    target: float = Field(0.9, gt=0, lt=1)
    #: Mondrian taxonomies, each calibrated and reported beside the marginal sets: ``class`` (per true class), a
    #: subgroup column (``sex``, ``site``), or an intersection ``a*b`` (``class*site``).
    mondrian: list[str] = Field(default_factory=list)
    #: Conformity score: ``aps`` (Romano et al. 2020) or ``raps`` (Angelopoulos et al. 2021).
    score: Literal["aps", "raps"] = "aps"
    #: Randomised scores (exact coverage; the evaluation seed reproduces every set); ``false``: larger sets.
    randomized: bool = True

    @field_validator("mondrian")
    @classmethod
    def _plain_taxonomies(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if not t or any(not part for part in t.split("*")) or t == "marginal"]
        if bad:
            raise ValueError(f"mondrian entries must name 'class' or subgroup columns (a*b crosses them); got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"mondrian lists a taxonomy twice: {v}")
        return v


class AbstainSettings(StrictModel):
    """Referral with a guaranteed risk on the answered cases (``evaluation/risk_control.py``, Learn then Test)."""

    #: Fit and report the referral rule (same conditions as the conformal sets).
    enabled: bool = True
    #: Promised bound on the risk of answered cases.
    alpha: float = Field(0.05, gt=0, lt=1)
    #: Chance the promise fails over the draw of validation patients: P(risk <= alpha) >= 1 - delta.
    delta: float = Field(0.1, gt=0, lt=1)
    #: ``error``: errors among answered patients; ``miss``: misses of ``positive_class`` (answered and called
    #: something else).
    on: Literal["error", "miss"] = "error"
    #: Also refer what this OOD score flags (``hod``, ``msp``, ``max_logit``, ``energy``, ``mahalanobis``,
    #: ``knn``); ``null``: confidence only.
    ood: str | None = None
    #: Share of in-distribution cases the OOD score may refer (its threshold, fixed on validation).
    ood_rate: float = Field(0.05, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, raw: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True: `abstain: {on: miss}` must still mean `on`
        if isinstance(raw, dict) and True in raw and "on" not in raw:
            raw = {("on" if k is True else k): v for k, v in raw.items()}
        return raw

    @field_validator("ood")
    @classmethod
    def _known_score(cls, v: str | None) -> str | None:
        if v is not None and v not in OOD_SCORES:
            raise ValueError(f"unknown OOD score {v!r}.{did_you_mean(v, OOD_SCORES)} Known: {', '.join(OOD_SCORES)}")
        return v


class CalibrationSettings(StrictModel):
    """Recalibration beyond the validation-wide temperature."""

    #: Fit a second temperature on this site's validation patients only (recalibration for deployment there);
    #: ``null``: none. The site must have validation patients (a held-out site has none).
    site: str | None = None


class TTASettings(StrictModel):
    """Test-time augmentation: the modality preset's deterministic flips and crops, probabilities averaged over the
    views (``evaluation/tta.py``). The one augmentation vocabulary of ``data/augment.py``: a ``radiograph`` is never
    mirrored unless asked (anatomy has a side); a ``photo`` is (a lesion has no left or right).

    ``tta: auto`` is short for ``tta: {preset: auto}``."""

    #: ``none`` (off), ``auto`` (``radiograph`` for one-channel or radiology-modality cohorts, else ``photo``),
    #: ``photo`` or ``radiograph``.
    preset: Literal["none", "auto", "photo", "radiograph"] = "none"
    #: Mirrored views; ``None`` takes the preset's: photo horizontal, vertical and both; radiograph none.
    flip: bool | None = None
    #: Cropped views (each resized back to the image size): ``center``, ``five`` (centre and four corners) or
    #: ``none``; ``None`` takes the preset's: photo none, radiograph five.
    crops: Literal["none", "center", "five"] | None = None
    #: Side of a cropped view as a share of the image side (radiograph training crops keep >= 80% of the area).
    crop_scale: float = Field(0.9, gt=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, str):  # `tta: auto`, `--tta photo`
            raw = {"preset": raw}
        if isinstance(raw, dict) and "preset" in raw:
            from medvision.data.augment import canonical_preset  # the old spellings (rgb, grayscale) still load

            raw = {**raw, "preset": canonical_preset(raw["preset"], "tta.preset")}
        return raw


class EvaluationSettings(StrictModel):
    """Which sets, which subgroups, how many resamples, what a deferral costs."""

    #: Cohort sets evaluated (``test``, ``val``, ``site_ood``, ``condition_ood``); absent ones are skipped.
    sets: list[str] = Field(default_factory=lambda: ["test", "site_ood", "condition_ood"])
    #: Sets screened as out-of-distribution (every image an outlier, never scored for discrimination): the
    #: held-out conditions by default; add ``site_ood`` to ask whether a held-out site or modality is detected.
    outlier_sets: list[str] = Field(default_factory=lambda: ["condition_ood"])
    #: Subgroup attributes (manifest columns) audited, and intersections written ``sex*age_band``.
    subgroups: list[str] = Field(default_factory=lambda: ["sex", "age_band", "site"])
    #: Patient-level bootstrap resamples for every interval (0: no intervals).
    bootstrap: int = Field(1000, ge=0)
    #: Subgroups with fewer patients are flagged and get no metric.
    min_patients: int = Field(20, ge=1)
    #: Subgroups where fewer patients hold a case of the positive class are flagged and get no metric, interval
    #: or gap: with one positive case an AUROC is that case's rank, and its interval claims nothing.
    min_positives: int = Field(5, ge=1)
    #: The same for patients holding a case of any other class.
    min_negatives: int = Field(5, ge=1)
    #: Also evaluate a greedy ensemble of the evaluated models (selection on validation NLL, method spec §4).
    ensemble: bool = False
    #: Also evaluate, as its own model, each finetune stage's members that differ only in ``seed``: their
    #: probabilities averaged (``evaluation/seed_ensemble.py``), scored like any model (calibration, operating point,
    #: OOD, trust).
    seed_ensemble: bool = False
    #: Test-time augmentation of every model's predictions: ``{preset: auto | photo | radiograph | none, flip,
    #: crops, crop_scale}`` or just the preset (``tta: auto``).
    tta: TTASettings = Field(default_factory=TTASettings)
    #: Referral rate at which the report says how many outliers are caught.
    referral_rate: float = Field(0.1, gt=0, lt=1)
    saliency: int = Field(3, ge=0, description="cases per gallery row (correct, wrong, most OOD); 0 turns it off")
    #: The class sensitivity/specificity and the subgroup AUROC are about (e.g. melanoma); ``None``: class 1 of
    #: a binary task, else the first class.
    positive_class: str | None = None
    #: Deferral costs (fields of :class:`~medvision.evaluation.DeferralCosts`: inlier_correct,
    #: inlier_misclassified, inlier_deferred, outlier_deferred, outlier_missed {risk level: cost}); unset fields
    #: keep their defaults.
    costs: dict[str, Any] | None = None
    #: Risk level of each held-out condition, e.g. ``{MEL: high, SCC: high}``; unlisted ones are ``medium``.
    risk: dict[str, str] = Field(default_factory=dict)
    #: Conformal prediction sets: ``{target: 0.9, mondrian: [sex, site]}``.
    conformal: ConformalSettings = Field(default_factory=ConformalSettings)
    #: Referral with a guaranteed risk: ``{alpha: 0.05, on: error | miss, ood: hod}``.
    abstain: AbstainSettings = Field(default_factory=AbstainSettings)
    #: Per-site recalibration: ``{site: NAME}``.
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    seed: int = 0

    @field_validator("costs")
    @classmethod
    def _known_costs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            DeferralCosts(**v)  # an unknown field or a bad value fails at load time, naming the field
        return v

    @field_validator("sets", "outlier_sets")
    @classmethod
    def _known_sets(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown set(s) {bad}; cohort sets are {', '.join(SPLITS)}")
        return v

    @model_validator(mode="after")
    def _outliers_are_not_the_reference(self) -> EvaluationSettings:
        if {"test", "val"} & set(self.outlier_sets):
            raise ValueError("outlier_sets may not hold test or val: they are the in-distribution reference")
        return self

    def check_against(self, facts: CohortFacts) -> None:
        """Fail unless every class, condition and subgroup attribute named here exists in the cohort.

        Raises:
            ValueError: one line per unknown value, with what exists and the closest spelling.
        """
        # imported here: the CLI reads these defaults at start-up, and the check's pandas costs 0.3 s there
        from medvision.cohort.named_values import unknown_values

        problems: list[str] = []
        parts = [p for a in self.subgroups for p in a.split("*")]
        problems += unknown_values("subgroup attribute", "subgroups", parts, facts.attributes, facts.source)
        taxonomies = [p for t in self.conformal.mondrian for p in t.split("*") if p != "class"]
        problems += unknown_values(
            "subgroup attribute", "conformal.mondrian", taxonomies, [*facts.attributes, "class"], facts.source
        )
        site = self.calibration.site
        if site is not None and site in facts.heldout_sites:
            problems.append(
                f"  - calibration.site: {site!r} is a held-out site: it has no validation patients to fit a "
                "temperature on. Name a site seen in validation."
            )
        elif site is not None and facts.sites is not None:
            problems += unknown_values("site", "calibration.site", [site], facts.sites, facts.source)
        classes = facts.classes
        if classes is not None and self.positive_class is not None:
            problems += unknown_values("class", "positive_class", [self.positive_class], classes, facts.source)
        if facts.labels is not None and self.risk:
            screened = set(facts.heldout_conditions) if self.outlier_sets == ["condition_ood"] else set(facts.labels)
            what = "held-out condition" if self.outlier_sets == ["condition_ood"] else "label value"
            problems += unknown_values(what, "risk", list(self.risk), screened, facts.source)
        if problems:
            raise InputError("evaluation settings name values the cohort does not have:\n" + "\n".join(problems))

    @model_validator(mode="after")
    def _known_risk_levels(self) -> EvaluationSettings:
        levels = set(DeferralCosts(**(self.costs or {})).outlier_missed)
        bad = {c: r for c, r in self.risk.items() if r not in levels}
        if bad:
            raise ValueError(f"risk levels {bad} are not in the cost table's outlier_missed levels {sorted(levels)}")
        return self
