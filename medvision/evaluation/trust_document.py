"""The "when to trust this model" part of ``metrics.json``: each model's :class:`Trust` record
(``ModelMetrics.trust``), with its conformal sets, risk-controlled referral rule, calibration per group and site, and
the sentences the report quotes.

Apart from :mod:`~medvision.evaluation.document` because it is one closed subtree of the document: none of these
parts refers to another part of the document, and only ``ModelMetrics.trust`` refers to them. One module builds it
(:mod:`~medvision.evaluation.trust`); its readers are the report's trust section (``report/build.py``) and
``serving/decisions.py``, which rebuilds the certified rules. The field-by-field description is the ``trust``
section of ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medvision.evaluation._part import Part as _Part

__all__ = [
    "AbstainRecord",
    "AbstentionRow",
    "ConformalRecord",
    "ConformalThreshold",
    "CoverageRow",
    "GroupCalibration",
    "GroupECE",
    "GroupReliabilityBin",
    "SiteECE",
    "SiteRecalibration",
    "Trust",
    "TrustSentences",
]


class ConformalThreshold(_Part):
    """One calibrated category of one taxonomy (``ConformalClassifier.thresholds_``)."""

    method: str
    category: str
    #: True class index (label-conditional taxonomies), else -1.
    label: int
    n_patients: int
    n_images: int
    #: q̂; ``None``: +inf (too few patients for the target: the set holds every class).
    threshold: float | None


class CoverageRow(_Part):
    """:func:`~medvision.evaluation.conformal.conformal_table`: one set x taxonomy x group."""

    method: str
    set: str
    attribute: str
    group: str
    n_patients: int
    n_images: int
    flag: str = ""
    target: float
    coverage: float | None = None
    coverage_low: float | None = None
    coverage_high: float | None = None
    shortfall: float | None = None
    mean_set_size: float | None = None
    singleton_rate: float | None = None
    empty_rate: float | None = None
    #: ``holds``, ``below_target``, ``not_promised``, ``does_not_carry_over``, ``vacuous`` (no calibrated
    #: threshold: every set holds every class); empty for a flagged row.
    guarantee: str = ""


class ConformalRecord(_Part):
    """Conformal prediction sets fitted on the inlier validation images (every patient weighing one)."""

    target: float
    score: str
    randomized: bool
    mondrian: list[str]
    #: Validation patients the sets were calibrated on.
    n_patients: int
    thresholds: list[ConformalThreshold]
    coverage: list[CoverageRow]


class AbstentionRow(_Part):
    """:func:`~medvision.evaluation.risk_control.abstention_table`: one set x group."""

    set: str
    attribute: str
    group: str
    n_patients: int
    n_images: int
    flag: str = ""
    referral_rate: float | None = None
    referral_rate_low: float | None = None
    referral_rate_high: float | None = None
    accepted_error: float | None = None
    accepted_error_low: float | None = None
    accepted_error_high: float | None = None
    miss_rate: float | None = None
    miss_rate_low: float | None = None
    miss_rate_high: float | None = None
    #: The controlled risk (``accepted_error`` or ``miss_rate``) and how far it is over alpha.
    risk: float | None = None
    risk_low: float | None = None
    risk_high: float | None = None
    excess: float | None = None
    #: ``holds``, ``above_alpha``, ``not_promised``, ``does_not_carry_over``; empty for a flagged row.
    guarantee: str = ""


class AbstainRecord(_Part):
    """The referral rule certified by Learn then Test on validation, and what it did on every set."""

    alpha: float
    delta: float
    on: Literal["error", "miss"]
    positive_class: str
    ood: str | None = None
    ood_rate: float
    #: Confidence below which a case is referred; ``None``: no threshold was certified, every case is referred.
    threshold: float | None
    #: OOD score above which a case is referred; ``None``: no OOD score (or none fixed: nothing referred on it).
    ood_threshold: float | None = None
    feasible: bool
    n_patients: int
    sets: list[AbstentionRow]


class GroupECE(_Part):
    attribute: str
    group: str
    n_patients: int
    n_images: int
    flag: str = ""
    ece: float | None = None
    ece_low: float | None = None
    ece_high: float | None = None


class GroupReliabilityBin(_Part):
    attribute: str
    group: str
    bin_lower: float
    bin_upper: float
    count: int
    confidence: float
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None


class GroupCalibration(_Part):
    """ECE (uncalibrated probabilities) and reliability bins per subgroup and site of one set."""

    ece: list[GroupECE]
    reliability: list[GroupReliabilityBin]


class SiteECE(_Part):
    group: str
    n_images: int
    ece_before: float | None
    ece_after: float | None


class SiteRecalibration(_Part):
    """A temperature fitted on one site's validation patients, and ECE per site before and after it."""

    site: str
    temperature: float
    ece_by_set: dict[str, list[SiteECE]]


class TrustSentences(_Part):
    """What the report quotes (``evaluation/trust_text.py``), written when the numbers are made."""

    coverage: str | None = None
    abstention: str | None = None


class Trust(_Part):
    """When to trust this model: each part is ``None`` when it was not computed, with the reason in ``skipped``."""

    #: The exchangeable set the sentences are about (``test``, else the first scored set).
    reference: str | None = None
    conformal: ConformalRecord | None = None
    abstain: AbstainRecord | None = None
    calibration_by_group: dict[str, GroupCalibration] = Field(default_factory=dict)
    site_recalibration: SiteRecalibration | None = None
    sentences: TrustSentences = Field(default_factory=TrustSentences)
    #: Part (``conformal``, ``abstain``, ``calibration_by_group``) -> why it was not computed.
    skipped: dict[str, str] = Field(default_factory=dict)

    @property
    def held_out_sets(self) -> list[str]:
        """Sets where a promise was evaluated but does not carry over (not exchangeable with validation)."""
        rows: list[CoverageRow | AbstentionRow] = [
            *(self.conformal.coverage if self.conformal else []),
            *(self.abstain.sets if self.abstain else []),
        ]
        return list(dict.fromkeys(r.set for r in rows if r.guarantee == "does_not_carry_over"))
