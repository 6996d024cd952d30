"""The pipeline's view of MLflow: one parent run, a child run per stage, and stage keys that make finished work
reusable (equal keys mean the same result)."""

from __future__ import annotations

import gc
import hashlib
import json
import time
from typing import Any

from mlflow.exceptions import MlflowException

from medvision.tracking.store import get_or_create_experiment, open_client

__all__ = ["OUTPUT_TAG", "STAGE_KEY_TAG", "Tracker", "stage_key"]

STAGE_KEY_TAG = "medvision.stage_key"
OUTPUT_TAG = "medvision.stage_output"


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

    def end(self, run_id: str, ok: bool, killed: bool = False) -> None:
        status = "FINISHED" if ok else "KILLED" if killed else "FAILED"
        for attempt in range(5):
            try:
                self.client.set_terminated(run_id, status)
                return
            except MlflowException as e:
                if "database is locked" not in str(e) or attempt == 4:
                    raise
                # SIGTERM can land inside a store write: that session's transaction then stays open (holding SQLite's
                # write lock) until the session is collected, which rolls it back.
                gc.collect()
                time.sleep(0.5 * (attempt + 1))
