"""The clinical HTML report: a typed context in, one self-contained offline HTML file out.

Fill a :class:`ReportContext` (plain values and long-format DataFrames with documented columns), then call
:func:`render_report`. Sections appear in :data:`SECTIONS` order; a section without data says how to get it.
"""

from medvision.report.context import (
    CalibrationSection,
    CohortSection,
    DataEfficiencySection,
    OODSection,
    PerformanceSection,
    ReportContext,
    ReportError,
    Reproducibility,
    SaliencyCase,
    SaliencySection,
    SubgroupSection,
    SummaryOptions,
    TrainingSection,
    TrainingStage,
    runtime_versions,
)
from medvision.report.guard import ForbiddenValueError, check_forbidden
from medvision.report.render import NOT_RUN_NOTES, SECTION_HEADINGS, SECTIONS, render_report
from medvision.report.study import StudySection
from medvision.report.summary import Finding, Summary, summarize
from medvision.report.trust import TrustSection

__all__ = [
    "NOT_RUN_NOTES",
    "SECTIONS",
    "SECTION_HEADINGS",
    "CalibrationSection",
    "CohortSection",
    "DataEfficiencySection",
    "Finding",
    "ForbiddenValueError",
    "OODSection",
    "PerformanceSection",
    "ReportContext",
    "ReportError",
    "Reproducibility",
    "SaliencyCase",
    "SaliencySection",
    "StudySection",
    "Summary",
    "SubgroupSection",
    "SummaryOptions",
    "TrainingSection",
    "TrainingStage",
    "TrustSection",
    "check_forbidden",
    "render_report",
    "runtime_versions",
    "summarize",
]
