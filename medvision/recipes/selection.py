"""The ``auto`` recipe's decision: candidates compared on validation, paired by patient, the simpler one kept.

Each candidate's validation probabilities are scored with the one macro AUROC (:func:`medvision.auroc.macro_auroc`)
under one shared matrix of patient-level resamples (:class:`medvision.evaluation.bootstrap.Bootstrap`, see the
method spec §10), so the difference between two candidates has an interval of its own: in every resample both are
scored on the same patients. Two marginal intervals that overlap say nothing about a difference; a paired one does.

The rule (:data:`DECISION_RULE`): candidates are ordered simplest first (linear probe, LP-FT, fine-tune). The
simplest is the incumbent; each more expensive candidate replaces it only if it beats it with the paired interval
of the difference entirely above zero. A better point estimate with an interval that includes zero is noise at
this validation size, and the simpler recipe moves the pretrained features less (which is what keeps
out-of-distribution performance, Kumar et al. 2022).

Caveat kept in view: each fine-tuned candidate's checkpoint was itself picked on the same validation AUROC (its best
epoch), which flatters it a little against the probe (whose ``C`` came from cross-validation on the training
split); asking for an interval above zero is also a guard against that optimism.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medvision.auroc import macro_auroc
from medvision.evaluation.bootstrap import Bootstrap, BootstrapResult
from medvision.training.recipe import FIXED_RECIPES, CandidateScore, FixedRecipe, Interval

__all__ = ["DECISION_RULE", "compare_candidates"]

DECISION_RULE = (
    "Candidates ordered simplest first (linear-probe, lp-ft, finetune); the simplest is kept unless a more "
    "expensive one has a higher validation macro AUROC with the paired patient-level bootstrap interval of the "
    "difference entirely above zero; each candidate is compared with the recipe kept so far."
)


def _macro_auroc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return macro_auroc(y, p, weights)


def _macro_auroc_multilabel(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return macro_auroc(y, p, weights, multilabel=True)


def _interval(r: BootstrapResult) -> Interval:
    def finite(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    return Interval(point=finite(r.point), low=finite(r.low), high=finite(r.high))


def compare_candidates(
    y_true: np.ndarray,
    patients: np.ndarray,
    probs: Mapping[FixedRecipe, np.ndarray],
    run_ids: Mapping[FixedRecipe, str | None] | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    multilabel: bool = False,
) -> tuple[FixedRecipe, list[CandidateScore]]:
    """Choose among candidates by :data:`DECISION_RULE`.

    Args:
        y_true: ``(N,)`` validation labels in ``[0, K)`` (inlier rows only), or ``(N, K)`` 0/1 with ``multilabel``.
        patients: ``(N,)`` patient of each row; patients are resampled whole.
        probs: per candidate, ``(N, K)`` validation probabilities in the same row order.
        run_ids: per candidate, its MLflow run (recorded in the scores).
        n_resamples: bootstrap resamples (the evaluation default, see the method spec §10).
        seed: seeds the one resample matrix every candidate shares.
        confidence: interval coverage.
        multilabel: ``y_true`` is an indicator matrix (macro AUROC over labels).

    Returns:
        ``(winner, scores)``, scores in the order compared.

    Raises:
        ValueError: no candidate, or a recipe that is not a fixed one.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200); p = np.c_[1 - y, y] * 0.6 + rng.uniform(size=(200, 2)) * 0.4
        >>> winner, scores = compare_candidates(y, np.arange(200), {"linear-probe": p, "lp-ft": p})
        >>> winner, scores[1].difference.point
        ('linear-probe', 0.0)
    """
    unknown = sorted(set(probs) - set(FIXED_RECIPES))
    if unknown or not probs:
        raise ValueError(f"compare_candidates needs candidates among {list(FIXED_RECIPES)}; got {sorted(probs)}")
    order = [r for r in FIXED_RECIPES if r in probs]
    ids = dict(run_ids or {})
    boot = Bootstrap(np.asarray(patients), n_resamples=n_resamples, seed=seed, confidence=confidence)
    y = np.asarray(y_true)
    metric = _macro_auroc_multilabel if multilabel else _macro_auroc
    results = {r: boot.ci(metric, y, np.asarray(probs[r], dtype=np.float64)) for r in order}
    incumbent = order[0]
    scores = [CandidateScore(recipe=incumbent, run_id=ids.get(incumbent), val_auroc=_interval(results[incumbent]))]
    for recipe in order[1:]:
        diff = results[recipe] - results[incumbent]
        adopted = bool(np.isfinite(diff.low) and diff.low > 0)
        scores.append(
            CandidateScore(
                recipe=recipe,
                run_id=ids.get(recipe),
                val_auroc=_interval(results[recipe]),
                versus=incumbent,
                difference=_interval(diff),
                adopted=adopted,
            )
        )
        if adopted:
            incumbent = recipe
    return incumbent, scores
