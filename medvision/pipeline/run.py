"""Running a pipeline: one MLflow parent run, a child run per stage (member), finished stages reused.

Reuse is decided by a *stage key*: a hash of the stage's resolved config, the keys of the stages it reads
from, the cohort's manifest hash and the code version. A finished MLflow run tagged with the same key is
the stage's result, so re-running a pipeline after a change re-runs exactly the stages the change reaches.
An interrupted stage resumes because its output folder is named by its key: the training stages find their
``last.ckpt`` there (``resume: auto``) and continue the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medvision._version import code_version
from medvision.pipeline.spec import PipelineSpec
from medvision.pipeline.stages import StageOutput

__all__ = ["PipelineResult", "run_pipeline", "stage_key"]

log = logging.getLogger("medvision.pipeline")

STAGE_KEY_TAG = "medvision.stage_key"
OUTPUT_TAG = "medvision.stage_output"


@dataclass
class PipelineResult:
    """What a pipeline run produced: the parent run, every stage's output, and a summary table."""

    parent_run_id: str
    tracking_uri: str
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["stage", "kind", "member", "status", "run_id", "seconds", "result"])

    @property
    def report_path(self) -> Path | None:
        reports = [o.path for o in self.outputs.values() if o.kind == "report" and o.path]
        return reports[-1] if reports else None


def stage_key(kind: str, config: Any, upstream: list[str], manifest_sha256: str | None, version: str) -> str:
    """The identity of a stage's work: equal keys mean the same result, so a finished run can be reused."""
    blob = json.dumps(
        {"kind": kind, "config": config, "upstream": upstream, "manifest": manifest_sha256, "code": version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Tracker:
    """The pipeline's view of MLflow: the parent run, child runs, and the lookup of finished stage runs."""

    def __init__(self, tracking_uri: str, experiment: str, pipeline_name: str) -> None:
        from medvision.tracking.store import get_or_create_experiment, open_client

        self.uri = tracking_uri
        self.client = open_client(tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment)
        self.experiment = experiment
        run = self.client.create_run(
            self.experiment_id,
            run_name=pipeline_name,
            tags={"medvision.pipeline": pipeline_name, "medvision.kind": "pipeline"},
        )
        self.parent_run_id = run.info.run_id

    def child_tags(self, stage_id: str, kind: str, key: str) -> dict[str, str]:
        return {
            "mlflow.parentRunId": self.parent_run_id,
            STAGE_KEY_TAG: key,
            "medvision.stage": stage_id,
            "medvision.kind": kind,
        }

    def finished(self, key: str) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STAGE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def start_child(self, stage_id: str, kind: str, key: str, name: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=self.child_tags(stage_id, kind, key))
        return run.info.run_id

    def end(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def run_pipeline(spec: PipelineSpec, *, echo: Callable[[str], None] = print) -> PipelineResult:
    """Run every stage of ``spec`` in order (reusing finished identical stages); return the outputs.

    A failing stage marks its run and the parent run FAILED and re-raises; the stages that finished
    before it are kept and are reused by the next attempt.
    """
    import os
    import time

    from medvision.pipeline import executors

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from medvision.engine.config import TrackingConfig, resolve_tracking_uri

    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=spec.tracking.tracking_uri))
    tracker = Tracker(uri, spec.tracking.experiment, spec.name)
    result = PipelineResult(parent_run_id=tracker.parent_run_id, tracking_uri=uri)
    version = code_version()
    out_root = Path(spec.output_dir).expanduser().resolve()
    echo(f"pipeline {spec.name}: {len(spec.stages)} stages; MLflow {uri}, experiment {spec.tracking.experiment}")
    ok = False
    try:
        for stage_id, stage in spec.stages.items():
            started = time.perf_counter()
            ctx = executors.StageContext(
                stage_id=stage_id,
                stage=stage,
                spec=spec,
                outputs=result.outputs,
                out_root=out_root,
                tracker=tracker,
                version=version,
                echo=echo,
            )
            output, rows = executors.execute(ctx)
            result.outputs[stage_id] = output
            for row in rows:
                row.setdefault("seconds", round(time.perf_counter() - started, 1))
                result.rows.append({"stage": stage_id, "kind": stage.kind, **row})
        ok = True
    finally:
        tracker.end(tracker.parent_run_id, ok)
    return result
