"""How an evaluation is run, with every default declared once: the pipeline's ``evaluate`` stage, the
``medvision evaluate`` command and :class:`~medvision.evaluation.stage.EvaluationRequest` all read these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medvision.cohort.spec import SPLITS
from medvision.config import StrictModel

if TYPE_CHECKING:
    from medvision.cohort.named_values import CohortFacts

__all__ = ["DeferralCosts", "EvaluationSettings"]


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
    #: Also evaluate a greedy ensemble of the evaluated models (selection on validation NLL, method spec §4).
    ensemble: bool = False
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
        classes = facts.classes
        if classes is not None and self.positive_class is not None:
            problems += unknown_values("class", "positive_class", [self.positive_class], classes, facts.source)
        if facts.labels is not None and self.risk:
            screened = set(facts.heldout_conditions) if self.outlier_sets == ["condition_ood"] else set(facts.labels)
            what = "held-out condition" if self.outlier_sets == ["condition_ood"] else "label value"
            problems += unknown_values(what, "risk", list(self.risk), screened, facts.source)
        if problems:
            raise ValueError("evaluation settings name values the cohort does not have:\n" + "\n".join(problems))

    @model_validator(mode="after")
    def _known_risk_levels(self) -> EvaluationSettings:
        levels = set(DeferralCosts(**(self.costs or {})).outlier_missed)
        bad = {c: r for c, r in self.risk.items() if r not in levels}
        if bad:
            raise ValueError(f"risk levels {bad} are not in the cost table's outlier_missed levels {sorted(levels)}")
        return self
