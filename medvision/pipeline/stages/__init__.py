"""The built-in stage kinds, registered on import: cohort, pretrain, finetune, evaluate, report.

Each module declares its stage's config model and its :class:`~medvision.pipeline.kinds.StageKind`; the order of
registration is the order ``stage_kinds()`` lists them in.
"""

from medvision.pipeline.kinds import register_stage_kind
from medvision.pipeline.stages.cohort import CohortKind, CohortStage
from medvision.pipeline.stages.evaluate import EvaluateKind, EvaluateStage
from medvision.pipeline.stages.report import ReportKind, ReportStage
from medvision.pipeline.stages.training import FinetuneKind, FinetuneStage, PretrainKind, PretrainStage

__all__ = [
    "CohortKind",
    "CohortStage",
    "EvaluateKind",
    "EvaluateStage",
    "FinetuneKind",
    "FinetuneStage",
    "PretrainKind",
    "PretrainStage",
    "ReportKind",
    "ReportStage",
]

for _kind in (CohortKind, PretrainKind, FinetuneKind, EvaluateKind, ReportKind):
    register_stage_kind(_kind)
