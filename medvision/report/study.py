"""What a study tested, as the report must state it: what was held out, what each number is, per evaluation set.

The summary's sentences about held-out sets, the headline AUROC's meaning, the operating point on every set,
calibration on every set and the label-shift check are computed from this section (:mod:`.summary`); it is
filled from ``metrics.json`` and the cohort card (:mod:`.build`), so a report never guesses what "the other site"
or "outliers" were.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StudySection"]


class StudySection(BaseModel):
    """The study's design and per-set facts.

    Frames (all optional, one row per set unless said):
        per_set: ``eval_set``, ``auroc_kind`` (``binary`` / ``macro one-vs-rest over N classes``),
            ``positive_auroc`` / ``positive_low`` / ``positive_high`` (the positive class against the rest),
            ``sensitivity``, ``specificity``, ``classes_absent`` (comma-separated names),
            ``abstention_excluded`` (images of abstention classes left out).
        prevalence: ``eval_set``, ``class``, ``share`` — class shares per set (site gaps need them).
        calibration: ``eval_set``, ``method``, ``ece`` — raw and temperature-scaled ECE per set.
        reliability: ``eval_set``, ``method``, ``confidence``, ``accuracy``, ``count`` — reliability bins per set.
        label_shift: ``metric``, ``before``, ``after`` — on ``label_shift_set``, without and with the EM prior.
        ood_by_group: ``detector``, ``group``, ``n_images``, ``auroc`` — each held-out condition (or outlier set).
        costs: ``outcome``, ``cost`` — the deferral cost table behind "mean cost".
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    heldout_sites: list[str] = Field(default_factory=list)
    heldout_conditions: list[str] = Field(default_factory=list)
    abstention_classes: list[str] = Field(default_factory=list)
    outlier_sets: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)
    positive_class: str | None = None
    calibration_chosen: str | None = None
    label_shift_set: str | None = None
    per_set: Any = None
    prevalence: Any = None
    calibration: Any = None
    reliability: Any = None
    label_shift: Any = None
    ood_by_group: Any = None
    costs: Any = None

    def frame(self, name: str) -> pd.DataFrame:
        """One of the frames, empty when not given."""
        value = getattr(self, name)
        return value if isinstance(value, pd.DataFrame) else pd.DataFrame()
