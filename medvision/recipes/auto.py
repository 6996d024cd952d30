"""``recipe: auto``: the cohort fingerprint picks candidates, each trains as an ordinary run, validation decides,
and one run of its own holds the chosen model with the record of why.

nnU-Net's idea applied to classification transfer: derive what is worth trying from the data set, then let the
data choose empirically. The steps:

1. the fingerprint of the labelled training rows (:func:`medvision.training.recipe.fingerprint`) and the candidates
   rule (:func:`medvision.training.recipe.plan_candidates`);
2. each candidate is the same config with a fixed ``recipe`` and its own output folder
   (``<output_dir>/candidates/<recipe>``) and MLflow run: a complete, resumable, evaluable model (a pipeline can pass
   ``run_candidate`` to reuse an identical finished run, e.g. the same recipe run as a baseline);
3. their validation predictions are compared by :func:`medvision.recipes.selection.compare_candidates` (the one
   macro AUROC, paired patient-level bootstrap, the simpler recipe kept unless a more expensive one is better with
   its interval above zero); the test split is never read;
4. the ``auto`` run records the winner's network (so evaluation, export and the report use it unchanged), its
   training curves, the fingerprint as params and :class:`~medvision.training.recipe.RecipeDecision` as the artifact
   ``recipe/decision.json`` (the report's "Why this recipe").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from mlflow.entities import Metric

from medvision.cohort.cohort import Cohort, open_cohort
from medvision.config import flatten, to_yaml
from medvision.engine.config import resolve_tracking_uri, single_process
from medvision.errors import InputError
from medvision.evaluation.predict import predict_rows
from medvision.evaluation.settings import EvaluationSettings
from medvision.recipes.selection import DECISION_RULE, compare_candidates
from medvision.tracking import MLflowTracking, load_run_classifier
from medvision.tracking.store import open_client
from medvision.training.config import FinetuneConfig
from medvision.training.finetune import FinetuneResult, finetune
from medvision.training.recipe import (
    DECISION_ARTIFACT,
    CohortFingerprint,
    FixedRecipe,
    Interval,
    RecipeDecision,
    fingerprint,
    plan_candidates,
)

__all__ = ["AutoResult", "CandidateRunner", "candidate_config", "fingerprint_config", "fit", "fit_auto"]

#: Trains one candidate config and returns its result (default: :func:`medvision.training.finetune`).
CandidateRunner = Callable[[FinetuneConfig], FinetuneResult]


@dataclass(frozen=True)
class AutoResult(FinetuneResult):
    """A :class:`FinetuneResult` for the ``auto`` run (its ``run_id`` holds the winner's network), plus the choice.

    Attributes:
        decision: the recorded decision.
        candidates: every candidate's own result, by recipe.
    """

    decision: RecipeDecision | None = None
    candidates: dict[str, FinetuneResult] = field(default_factory=dict)


def fit(
    config: FinetuneConfig,
    *,
    datamodule: Any = None,
    callbacks: Sequence[Callback] = (),
    run_candidate: CandidateRunner | None = None,
) -> FinetuneResult:
    """Fit the recipe ``config.recipe`` names: ``auto`` here, the fixed ones by :func:`medvision.training.finetune`.

    The CLI (``medvision finetune``) and the pipeline's finetune stages call this for every fine-tune.

    Raises:
        ValueError: ``auto`` with a custom ``datamodule`` (it reads the cohort itself; fit a fixed recipe instead).
    """
    if config.recipe != "auto":
        return finetune(config, datamodule=datamodule, callbacks=callbacks)
    if datamodule is not None:
        raise InputError(
            "recipe: auto reads its cohort (data.cohort_dir) itself and cannot train on a given data module; "
            "set recipe to linear-probe, lp-ft or finetune to train on it"
        )
    return fit_auto(config, callbacks=callbacks, run_candidate=run_candidate)


def candidate_config(config: FinetuneConfig, recipe: FixedRecipe) -> FinetuneConfig:
    """``config`` as one candidate: a fixed recipe, its own output folder and run name, the same store."""
    tracking = config.tracking.model_copy(
        update={
            "tracking_uri": resolve_tracking_uri(config.tracking),
            "run_name": f"{config.tracking.run_name or 'auto'}/{recipe}",
        }
    )
    return config.model_copy(
        update={"recipe": recipe, "output_dir": Path(config.output_dir) / "candidates" / recipe, "tracking": tracking}
    )


def fingerprint_config(config: FinetuneConfig, cohort: Cohort | None = None) -> CohortFingerprint:
    """The fingerprint of the training rows ``config`` trains on (its cohort at its label fraction)."""
    cohort = cohort or open_cohort(config.data.cohort_dir)
    rows = cohort.rows("train", config.data.label_fraction)
    return fingerprint(
        rows,
        cohort.classes[: cohort.num_inlier_classes],
        label_fraction=config.data.label_fraction,
        image_size=int(cohort.cache.params.size),
        channels=cohort.in_chans,
    )


def fit_auto(
    config: FinetuneConfig, *, callbacks: Sequence[Callback] = (), run_candidate: CandidateRunner | None = None
) -> AutoResult:
    """Run ``recipe: auto`` (module docstring): candidates, validation choice, one run holding the winner.

    Args:
        config: a validated config with ``recipe: auto``.
        callbacks: extra Lightning callbacks for every candidate's training loop.
        run_candidate: trains one candidate config (default :func:`medvision.training.finetune`); a pipeline passes
            one that first looks for an identical finished run.

    Returns:
        An :class:`AutoResult` whose ``run_id`` is the ``auto`` run.
    """
    if not single_process(config.trainer):
        raise InputError(
            "recipe: auto runs in one process (its probe and its choice are not distributed); set trainer.devices "
            "to 1 outside torchrun/SLURM, or pick a fixed recipe (lp-ft, finetune) to train on several devices"
        )
    cohort = open_cohort(config.data.cohort_dir)
    fp = fingerprint_config(config, cohort)
    plan = plan_candidates(fp, config.head.name)

    def default_runner(c: FinetuneConfig) -> FinetuneResult:
        return finetune(c, callbacks=callbacks)

    runner = run_candidate or default_runner
    results: dict[str, FinetuneResult] = {r: runner(candidate_config(config, r)) for r in plan.candidates}
    tracking_uri = resolve_tracking_uri(config.tracking)
    decision = _decide(config, cohort, fp, plan.rule, results, tracking_uri)
    winner = results[decision.winner]
    run_id = _record(config, cohort, decision, winner, tracking_uri)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    decision.write(Path(config.output_dir) / "decision.json")
    return AutoResult(
        run_id=run_id,
        best_checkpoint=winner.best_checkpoint,
        last_checkpoint=winner.last_checkpoint,
        best_score=winner.best_score,
        metrics=dict(winner.metrics),
        output_dir=Path(config.output_dir),
        decision=decision,
        candidates=results,
    )


def _decide(
    config: FinetuneConfig,
    cohort: Cohort,
    fp: CohortFingerprint,
    candidates_rule: str,
    results: dict[str, FinetuneResult],
    tracking_uri: str,
) -> RecipeDecision:
    """Every candidate's logged network on the validation inliers, compared by the paired rule."""
    k = cohort.num_inlier_classes
    val = cohort.rows("val")
    if not cohort.label_columns:  # multi-class: the task's inlier rows (outlier conditions have no task label)
        val = val[(val["label_idx"] >= 0) & (val["label_idx"] < k)].reset_index(drop=True)
    if val.empty:
        raise InputError(
            f"recipe: auto chooses on the validation split, but cohort {cohort.card.name} has no labelled "
            "validation images of its task classes; give the cohort a validation split or pick a fixed recipe"
        )
    probs = {}
    for recipe, result in results.items():
        if result.run_id is None:
            raise ValueError(f"candidate {recipe} recorded no MLflow run, so its network cannot be compared")
        classifier, _ = load_run_classifier(result.run_id, tracking_uri)
        probs[recipe] = predict_rows(classifier, cohort, val).probs
    settings = EvaluationSettings()  # the evaluation's own bootstrap defaults (method spec §10)
    labels = val[cohort.label_columns].fillna(0).to_numpy() if cohort.label_columns else val["label_idx"].to_numpy()
    winner, scores = compare_candidates(
        labels,
        val["patient_id"].to_numpy(),
        probs,  # type: ignore[arg-type]  # keys are the plan's fixed recipes
        {r: res.run_id for r, res in results.items()},  # type: ignore[misc]
        n_resamples=max(1, settings.bootstrap),
        seed=config.seed,
        multilabel=bool(cohort.label_columns),
    )
    return RecipeDecision(
        fingerprint=fp,
        candidates_rule=candidates_rule,
        decision_rule=DECISION_RULE,
        candidates=scores,
        winner=winner,
        winner_run_id=results[winner].run_id,
        val_images=len(val),
        val_patients=int(val["patient_id"].nunique()),
        n_resamples=max(1, settings.bootstrap),
        confidence=0.95,
        seed=config.seed,
    )


def _record(
    config: FinetuneConfig, cohort: Cohort, decision: RecipeDecision, winner: FinetuneResult, tracking_uri: str
) -> str:
    """The ``auto`` run: the winner's network and curves, the fingerprint as params, the decision as an artifact."""
    assert winner.run_id is not None  # checked in _decide
    classifier, card = load_run_classifier(winner.run_id, tracking_uri)
    sha = cohort.manifest_sha256
    resolved = config.model_copy(update={"tracking": config.tracking.model_copy(update={"tracking_uri": tracking_uri})})
    params = {
        **flatten(resolved),
        "data.manifest_sha256": sha,
        "data.classes": list(cohort.classes),
        "recipe.winner": decision.winner,
        "recipe.winner_run_id": decision.winner_run_id,
        "recipe.candidates": ",".join(s.recipe for s in decision.candidates),
        # one param per fingerprint field (per-class counts as one JSON value: class names are not key material)
        **{f"fingerprint.{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in decision.fingerprint},
    }
    metrics: dict[str, float] = {}  # the winner's own metrics arrive with its history
    for s in decision.candidates:
        metrics |= {f"recipe/{s.recipe}/val_auroc{sfx}": v for sfx, v in _interval_values(s.val_auroc).items()}
    tracker = MLflowTracking(
        tracking_uri,
        config.tracking.experiment,
        run_name=config.tracking.run_name,
        params=params,
        tags={
            "medvision.stage": "finetune",
            "medvision.recipe": "auto",
            "medvision.recipe.winner": decision.winner,
            "cohort.manifest_sha256": sha,
        },
        texts={
            "config.yaml": to_yaml(resolved),
            "cohort/manifest_sha256.txt": sha + "\n",
            DECISION_ARTIFACT: decision.to_json(),
        },
        preprocessing=card.preprocessing,  # the winner's: export and serving read it from the auto run's card
    )
    history = _history(winner.run_id, tracking_uri)
    return tracker.record_fitted(classifier, card.input_shape, metrics, history)


def _interval_values(i: Interval) -> dict[str, float]:
    return {k: v for k, v in {"": i.point, "_low": i.low, "_high": i.high}.items() if v is not None}


def _history(run_id: str, tracking_uri: str) -> list[Metric]:
    """The winner's per-epoch metrics (its training curves), to carry into the ``auto`` run."""
    client = open_client(tracking_uri)
    run = client.get_run(run_id)
    return [m for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
