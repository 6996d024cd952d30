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
from medvision.cohort.card import CohortCard
from medvision.cohort.cohort import open_cohort
from medvision.engine.config import TrackingConfig, resolve_tracking_uri
from medvision.errors import InputError, MedvisionError
from medvision.pipeline import executors
from medvision.pipeline.kinds import StageContext, StageOutput, stage_kind
from medvision.pipeline.spec import PipelineSpec
from medvision.pipeline.study import check_study
from medvision.pipeline.tracker import Tracker
from medvision.plugins import load_all
from medvision.tracking.uri import redact_uri

__all__ = ["PipelineInterrupted", "PipelineResult", "run_pipeline"]

log = logging.getLogger("medvision.pipeline")


class PipelineInterrupted(MedvisionError):
    """A pipeline stopped by SIGTERM (what SLURM and Kubernetes send at a time limit) in the middle of a stage.

    Lightning turns SIGTERM into a ``SystemExit`` without a code, so a killed job would exit 0 and look
    successful; the runner raises this instead and the CLI exits ``exit_code`` (128 + the signal, 143).
    """

    def __init__(self, stage_id: str, kind: str, signum: int) -> None:
        self.stage_id, self.kind, self.signum = stage_id, kind, signum
        self.exit_code = 128 + signum
        resumes = "continues from its last checkpoint" if stage_kind(kind).resumes else "runs again"
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
def _sigterm_raises() -> Iterator[list[int]]:
    """SIGTERM stops the running stage; yields the signals received so far.

    Outside Lightning the handler raises :class:`_Terminated` where the main thread is. Inside ``Trainer.fit``
    Lightning's own handler runs first and calls ours: there the handler only records the signal, and Lightning
    raises its ``SIGTERMException`` at its next check (a batch of validation, the end of an epoch), a point where
    no lock is held. An exception raised at an arbitrary bytecode of training (a checkpoint half saved, a logging
    queue mid-put) could leave a lock taken and hang the teardown that marks the runs killed.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        if signal.getsignal(signal.SIGTERM) is handler:  # not chained from another handler (Lightning's)
            raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
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
    def files(self) -> list[tuple[str, Path]]:
        """``(kind, path)`` of every file a person opens (the report: kinds whose ``opens_file`` is set), in order."""
        return [(o.kind, o.path) for o in self.outputs.values() if o.path is not None and stage_kind(o.kind).opens_file]

    @property
    def report_path(self) -> Path | None:
        """The last of :attr:`files` (the report), if any stage made one."""
        return self.files[-1][1] if self.files else None


def run_pipeline(
    spec: PipelineSpec, *, echo: Callable[[str], None] = print, source: str | None = None
) -> PipelineResult:
    """Run every stage of ``spec`` in order (reusing finished identical stages); return the outputs.

    A failing stage marks its run and the parent run FAILED and re-raises; the stages that finished
    before it are kept and are reused by the next attempt. SIGTERM stops the running stage and raises
    :class:`PipelineInterrupted` (the parent run is marked KILLED). After each cohort stage the study is checked
    again against the cohort it built (``source``, the pipeline file, starts those errors), so a value only the
    built cohort can refute stops the run before its training stages.
    """

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    load_all()

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
    built: dict[str, CohortCard] = {}
    try:
        with _sigterm_raises() as received:
            for stage_id, stage in spec.stages.items():
                if received:  # it came as the last stage finished (after Lightning's last check): stop before this
                    killed = True
                    raise PipelineInterrupted(stage_id, stage.kind, received[0])
                started = time.perf_counter()
                ctx = StageContext(
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
                except InputError as e:
                    _say_in_pipeline_terms(e, stage_id, stage)
                    raise
                except (_Terminated, SystemExit):  # SystemExit: Lightning's SIGTERMException
                    if not received:
                        raise
                    killed = True
                    raise PipelineInterrupted(stage_id, stage.kind, received[0]) from None
                result.outputs[stage_id] = output
                _check_again_if_built(spec, source, stage_id, output, built)
                for row in rows:
                    row.setdefault("seconds", round(time.perf_counter() - started, 1))
                    result.rows.append({"stage": stage_id, "kind": stage.kind, **row})
        ok = True
    finally:
        tracker.end(tracker.parent_run_id, ok, killed=killed)
    return result


def _say_in_pipeline_terms(error: InputError, stage_id: str, stage: Any) -> None:
    """A stage's config error names its keys as the stage's own config does (``data.batch_size``); inside a
    pipeline the key a user can set is ``stages.ID.config.data.batch_size``, so a note says so (the error keeps
    its type for library callers; the command line prints notes after the message)."""
    if getattr(stage, "config", None) is not None and f"stages.{stage_id}" not in str(error):
        error.add_note(
            f"(stage {stage_id}: where this names a key of the stage's config, in this pipeline it is under "
            f"stages.{stage_id}.config: `--set stages.{stage_id}.config.KEY=VALUE`)"
        )


def _check_again_if_built(
    spec: PipelineSpec, source: str | None, stage_id: str, output: StageOutput, built: dict[str, CohortCard]
) -> None:
    """After a cohort stage: the study checked again with that cohort's card, before any stage that reads it."""
    if output.kind == "cohort" and output.cohort_dir is not None:
        built[stage_id] = open_cohort(output.cohort_dir).card
        check_study(spec, source or f"pipeline {spec.name}", built)
