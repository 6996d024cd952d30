"""Declarative pipelines: stages as data, validated whole, tracked as one MLflow parent run.

* :func:`load_pipeline` reads and checks a pipeline YAML (``--set`` overrides, ``${params.*}``);
* :func:`run_pipeline` runs it, reusing finished identical stages and resuming interrupted ones;
* :func:`print_summary` prints what ran, what was reused and where the results are;
* :class:`StageKind` / :func:`register_stage_kind`: what a stage can be (:mod:`medvision.pipeline.kinds`).
"""

from medvision.pipeline.kinds import StageContext, StageKind, StageOutput, StageSpec, register_stage_kind
from medvision.pipeline.run import PipelineResult, run_pipeline
from medvision.pipeline.spec import PipelineSpec, load_pipeline
from medvision.pipeline.summary import print_summary

__all__ = [
    "PipelineResult",
    "PipelineSpec",
    "StageContext",
    "StageKind",
    "StageOutput",
    "StageSpec",
    "load_pipeline",
    "print_summary",
    "register_stage_kind",
    "run_pipeline",
]
