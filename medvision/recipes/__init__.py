"""Recipes that need more than one training run: ``recipe: auto`` trains the candidates a cohort fingerprint
selects and keeps the one validation prefers.

* :func:`fit` — fit whatever ``recipe`` a fine-tune config names (the CLI and the pipeline call it);
* :func:`fit_auto` / :class:`AutoResult` — the ``auto`` recipe (:mod:`.auto`);
* :func:`compare_candidates` / :data:`DECISION_RULE` — the paired validation rule (:mod:`.selection`).

It sits above :mod:`medvision.evaluation` (it compares candidates with the patient-level bootstrap) and below the
pipeline and the CLI; the fixed recipes go straight to :func:`medvision.training.finetune`. The decision document
it writes is :class:`medvision.training.recipe.RecipeDecision`, which the report reads.
"""

from medvision.recipes.auto import AutoResult, CandidateRunner, candidate_config, fingerprint_config, fit, fit_auto
from medvision.recipes.selection import DECISION_RULE, compare_candidates

__all__ = [
    "DECISION_RULE",
    "AutoResult",
    "CandidateRunner",
    "candidate_config",
    "compare_candidates",
    "fingerprint_config",
    "fit",
    "fit_auto",
]
