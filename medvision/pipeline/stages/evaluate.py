"""The evaluate stage: predictions and metrics of earlier finetune stages' models on their cohort's evaluation sets.

Its identity is its settings, the runs it evaluates and their cohort's manifest; its output folder is named by
its stage key. At ``--check`` time the classes, conditions and subgroup attributes it names are checked against
its cohort's labels CSV when that is readable (:meth:`EvaluationSettings.check_against`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medvision.config import ConfigError
from medvision.evaluation.settings import EvaluationSettings
from medvision.evaluation.stage import EvaluationRequest, evaluate_models
from medvision.pipeline.executors import record_output, reused_output, stage_lock
from medvision.pipeline.kinds import Identity, Rows, StageContext, StageKind, StageOutput, StageSpec
from medvision.pipeline.study import Study

__all__ = ["EvaluateKind", "EvaluateStage"]


class EvaluateStage(StageSpec, EvaluationSettings):
    """Predictions and metrics of earlier finetune stages' models on the cohort's evaluation sets."""

    kind: Literal["evaluate"]
    models: list[str] = Field(min_length=1)


class EvaluateKind(StageKind[EvaluateStage]):
    """Evaluate every model of the named finetune stages (:func:`medvision.evaluation.stage.evaluate_models`)."""

    name = "evaluate"
    config = EvaluateStage
    inputs = {"models": ("finetune",)}

    def check(self, stage_id: str, stage: EvaluateStage, study: Study) -> list[str]:
        cohorts = {study.cohort_of[m] for m in stage.models if m in study.cohort_of}
        known = [study.facts.get(c) for c in cohorts]
        for facts in known:
            if facts is None:
                continue
            try:
                stage.check_against(facts)
            except ValueError as e:
                raise ConfigError(f"{study.source}: stages.{stage_id}: {e}") from None
        checked = bool(known) and all(f is not None for f in known)
        where = "checked against the cohort" if checked else "checked when its cohort is built"
        return [f"{stage_id}: positive_class, risk and subgroups {where}"]

    def _models(self, ctx: StageContext[EvaluateStage]) -> tuple[list[dict[str, Any]], StageOutput]:
        """The models to evaluate (one per upstream run, with its member facts) and the cohort they share."""
        models: list[dict[str, Any]] = []
        cohorts: dict[str | None, list[str]] = {}
        for ref in ctx.stage.models:
            up = ctx.outputs[ref]
            cohorts.setdefault(up.manifest_sha256, []).append(ref)
            for run_id, member in zip(up.run_ids, up.members):
                models.append({"stage": ref, "run_id": run_id, **member})
        if len(cohorts) > 1:
            groups = "; ".join(", ".join(refs) for refs in cohorts.values())
            raise ConfigError(
                f"stages.{ctx.stage_id}.models: the models come from different cohorts ({groups}); evaluate each "
                "cohort's models in its own stage"
            )
        return models, ctx.outputs[ctx.stage.models[0]]

    def identity(self, ctx: StageContext[EvaluateStage]) -> dict[str, Identity]:
        models, cohort = self._models(ctx)
        settings = ctx.stage.model_dump(mode="json")
        return {"-": Identity(settings, [m["run_id"] for m in models], cohort.manifest_sha256)}

    def execute(self, ctx: StageContext[EvaluateStage]) -> tuple[StageOutput, Rows]:
        models, cohort = self._models(ctx)
        key = self.identity(ctx)["-"].key(self.name, ctx.version)
        with stage_lock(ctx, key):  # its folder is named by the key; a second run waits, then reuses
            reused = reused_output(ctx, key)
            if reused is not None:
                row = {"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": str(reused.path)}
                return reused, [row]
            return self._evaluate(ctx, key, models, cohort)

    def _evaluate(
        self, ctx: StageContext[EvaluateStage], key: str, models: list[dict[str, Any]], cohort: StageOutput
    ) -> tuple[StageOutput, Rows]:
        run_id = ctx.tracker.start_child(ctx.stage_id, self.name, key, ctx.stage_id)
        ok = False
        try:
            folder = ctx.folder / key[:8]
            settings = ctx.stage.model_dump(exclude={"kind", "models"})
            request = EvaluationRequest(
                cohort_dir=cohort.cohort_dir, models=models, tracking_uri=ctx.tracker.uri, **settings
            )
            headline = evaluate_models(request, folder)
            client = ctx.tracker.client
            for k, v in headline.items():
                client.log_metric(run_id, k, float(v))
            client.log_artifacts(run_id, str(folder), "evaluation")
            output = StageOutput(
                kind=self.name,
                run_ids=[run_id],
                path=folder,
                cohort_dir=cohort.cohort_dir,
                manifest_sha256=cohort.manifest_sha256,
                members=[{"models": [m["run_id"] for m in models]}],
            )
            record_output(ctx, run_id, output)
            ok = True
        finally:
            ctx.tracker.end(run_id, ok)
        shown = ", ".join(f"{k}={headline[k]:.3f}" for k in sorted(headline)[:3])
        return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": shown}]
