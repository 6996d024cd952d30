"""The report stage: the clinical HTML report from an evaluate stage (and everything upstream of it)."""

from __future__ import annotations

from typing import Literal

import yaml

from medvision.config import ConfigError
from medvision.pipeline.executors import record_output, reused_output
from medvision.pipeline.kinds import Identity, Rows, StageContext, StageKind, StageOutput, StageSpec
from medvision.report.build import report_from_evaluation

__all__ = ["ReportKind", "ReportStage"]


class ReportStage(StageSpec):
    """The clinical HTML report from an evaluate stage (and everything upstream of it)."""

    kind: Literal["report"]
    evaluation: str
    title: str | None = None


class ReportKind(StageKind[ReportStage]):
    """Render the report of an evaluation (:func:`medvision.report.build.report_from_evaluation`)."""

    name = "report"
    config = ReportStage
    inputs = {"evaluation": ("evaluate",)}
    exclusive = True  # one report.html for every key
    opens_file = True

    def identity(self, ctx: StageContext[ReportStage]) -> dict[str, Identity]:
        evaluation = ctx.outputs[ctx.stage.evaluation]
        config = ctx.stage.model_dump(mode="json")
        return {"-": Identity(config, [evaluation.run_ids[0]], evaluation.manifest_sha256)}

    def execute(self, ctx: StageContext[ReportStage]) -> tuple[StageOutput, Rows]:
        key = self.identity(ctx)["-"].key(self.name, ctx.version)
        reused = reused_output(ctx, key)
        if reused is not None:
            return reused, [
                {"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": str(reused.path)}
            ]
        evaluation = ctx.outputs[ctx.stage.evaluation]
        run_id = ctx.tracker.start_child(ctx.stage_id, self.name, key, ctx.stage_id)
        ok = False
        try:
            if evaluation.path is None:
                raise ConfigError(
                    f"stages.{ctx.stage_id}.evaluation: stage {ctx.stage.evaluation!r} recorded no output folder"
                )
            path = report_from_evaluation(
                evaluation.path,
                ctx.folder / "report.html",
                title=ctx.stage.title or ctx.spec.name,
                pipeline_yaml=yaml.safe_dump(ctx.spec.model_dump(mode="json"), sort_keys=False),
            )
            ctx.tracker.client.log_artifact(run_id, str(path), "report")
            output = StageOutput(kind=self.name, run_ids=[run_id], path=path)
            record_output(ctx, run_id, output)
            ok = True
        finally:
            ctx.tracker.end(run_id, ok)
        return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": str(path)}]
