"""Running a pipeline: one MLflow parent run, a child run per stage (member), finished stages reused.

Reuse is decided by a *stage key*: a hash of the stage's resolved config, the keys of the stages it reads
from, the cohort's manifest hash and the code version. A finished MLflow run tagged with the same key is
the stage's result, so re-running a pipeline after a change re-runs exactly the stages the change reaches.
An interrupted stage resumes because its output folder is named by its key: the training stages find their
``last.ckpt`` there (``resume: auto``) and continue the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medvision._version import code_version
from medvision.engine.config import TrackingConfig, resolve_tracking_uri
from medvision.pipeline import executors
from medvision.pipeline.spec import PipelineSpec
from medvision.pipeline.stages import StageOutput
from medvision.pipeline.tracker import Tracker
from medvision.tracking.uri import redact_uri

__all__ = ["PipelineInterrupted", "PipelineResult", "run_pipeline"]

log = logging.getLogger("medvision.pipeline")


class PipelineInterrupted(Exception):
    """A pipeline stopped by SIGTERM (what SLURM and Kubernetes send at a time limit) in the middle of a stage.

    Lightning turns SIGTERM into a ``SystemExit`` without a code, so a killed job would exit 0 and look
    successful; the runner raises this instead and the CLI exits ``exit_code`` (128 + the signal, 143).
    """

    def __init__(self, stage_id: str, kind: str, signum: int) -> None:
        self.stage_id, self.kind, self.signum = stage_id, kind, signum
        self.exit_code = 128 + signum
        resumes = "continues from its last checkpoint" if kind in ("finetune", "pretrain") else "runs again"
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} during stage {stage_id!r} ({kind}); the stages finished "
            f"before it are kept. Re-run the same command to resume: finished stages are reused and {stage_id!r} "
            f"{resumes}"
        )


class _Terminated(BaseException):
    """Raised by the SIGTERM handler; a BaseException so that no ``except Exception`` in a stage swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` in the main thread (Lightning's own handler calls ours too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def run_pipeline(spec: PipelineSpec, *, echo: Callable[[str], None] = print) -> PipelineResult:
    """Run every stage of ``spec`` in order (reusing finished identical stages); return the outputs.

    A failing stage marks its run and the parent run FAILED and re-raises; the stages that finished
    before it are kept and are reused by the next attempt. SIGTERM stops the running stage and raises
    :class:`PipelineInterrupted` (the parent run is marked KILLED).
    """

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=spec.tracking.tracking_uri))
    tracker = Tracker(uri, spec.tracking.experiment, spec.name)
    result = PipelineResult(parent_run_id=tracker.parent_run_id, tracking_uri=uri)
    version = code_version()
    out_root = Path(spec.output_dir).expanduser().resolve()
    echo(
        f"pipeline {spec.name}: {len(spec.stages)} stages; MLflow {redact_uri(uri)}, "
        f"experiment {spec.tracking.experiment}"
    )
    ok, killed = False, False
    try:
        with _sigterm_raises():
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
                try:
                    output, rows = executors.execute(ctx)
                except _Terminated as t:
                    killed = True
                    raise PipelineInterrupted(stage_id, stage.kind, t.signum) from None
                result.outputs[stage_id] = output
                for row in rows:
                    row.setdefault("seconds", round(time.perf_counter() - started, 1))
                    result.rows.append({"stage": stage_id, "kind": stage.kind, **row})
        ok = True
    finally:
        tracker.end(tracker.parent_run_id, ok, killed=killed)
    return result
