"""Recipes that need more than one training run: ``recipe: auto`` trains the candidates a cohort fingerprint
selects and keeps the one validation prefers (:mod:`.selection`).

It sits above :mod:`medvision.evaluation` (it compares candidates with the patient-level bootstrap) and below the
pipeline and the CLI, which call :func:`fit` for every fine-tune; the fixed recipes go straight to
:func:`medvision.training.finetune`. The decision document it writes is :class:`medvision.training.RecipeDecision`,
which the report reads.
"""

from medvision.recipes.selection import DECISION_RULE, compare_candidates

__all__ = ["DECISION_RULE", "compare_candidates"]
