"""The whole study checked before anything runs: every stage's kind checks what only the data can confirm.

``load_pipeline`` validates each stage's own keys; this module walks the stages in order and asks each kind
(:meth:`~medvision.pipeline.kinds.StageKind.check`) to check its stage against what the earlier ones found: a
cohort stage assembles and validates the spec it will build and reads its labels CSV when it can; a fine-tune
checks its label fractions against its cohort's, and its head against the cohort's unit (a series-level
cohort needs a head that reads bags); an evaluate stage checks the classes, conditions and subgroup
attributes it names against the cohort's. What one kind learns for the next travels in :class:`Study`.

A cohort the pipeline generates (``synth``, ``medmnist``) has no labels to read before it runs, so
:func:`~medvision.pipeline.run.run_pipeline` checks the study again after each cohort stage, with the built
cohort's card: a misspelt ``positive_class`` then fails before the first training stage, not after the last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medvision.cohort.named_values import CohortFacts
from medvision.pipeline.kinds import stage_kind

if TYPE_CHECKING:
    from medvision.cohort.card import CohortCard
    from medvision.pipeline.spec import PipelineSpec

__all__ = ["Study", "check_study"]


@dataclass
class Study:
    """What the check has learnt so far, for the stages that come later.

    Attributes:
        spec: the pipeline.
        source: the pipeline file (errors start with it).
        cohort_of: stage id → the cohort stage it works on (a cohort stage names itself).
        facts: cohort stage → its classes, conditions and attributes, when its labels CSV is readable now.
        fractions: cohort stage → the label fractions it declares, when known now.
        units: cohort stage → what one case of it is (``image``, ``series``, ``study``, ``patient``), when known
            now; a fine-tune on a case cohort needs a head that reads bags.
        built: cohort stage → the card of the cohort it has built in this run (what it holds, not a guess).
    """

    spec: PipelineSpec
    source: str
    cohort_of: dict[str, str] = field(default_factory=dict)
    facts: dict[str, CohortFacts | None] = field(default_factory=dict)
    fractions: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    built: dict[str, CohortCard] = field(default_factory=dict)


def check_study(spec: PipelineSpec, source: str, built: Mapping[str, CohortCard] | None = None) -> list[str]:
    """Check every stage against the data (``built``: the cohorts built so far); return what was checked.

    Raises:
        ConfigError: naming the stage, the key, the value, what exists and the closest spelling.
    """
    study = Study(spec, source, built=dict(built or {}))
    notes: list[str] = []
    for stage_id, stage in spec.stages.items():
        notes += stage_kind(stage.kind).check(stage_id, stage, study)
    return notes
