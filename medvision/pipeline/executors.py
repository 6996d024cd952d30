"""Running one stage: its kind's executor (from the registry), under the locks that make concurrent runs safe.

Each kind's :meth:`~medvision.pipeline.kinds.StageKind.execute` returns the stage's :class:`StageOutput` and summary
rows (one per sweep member); the helpers here are what every executor shares: the stage lock, the lookup of a
finished run by stage key, and the tag that records a stage's output on its run.

Two ``medvision run`` of one pipeline may run at once (a user starts it twice, a scheduler retries). Each
unit of work therefore holds a file lock in its stage folder while it checks for a finished run and, if there
is none, runs: a training member or an evaluation locks its stage key (its output folder is named by it); a
kind whose output folder is shared by every key (``exclusive``: cohort, report) locks the stage. The second
process waits, then finds the finished run and reuses it: no duplicate runs, no two trainings in one checkpoint
folder.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from filelock import FileLock, Timeout

from medvision.pipeline.kinds import Rows, StageContext, StageOutput
from medvision.pipeline.tracker import OUTPUT_TAG

__all__ = ["execute", "record_output", "reused_output", "stage_lock"]


def execute(ctx: StageContext[Any]) -> tuple[StageOutput, Rows]:
    """Run ``ctx.stage`` through its kind's executor (the registry's), locking the stage if the kind asks."""
    kind = ctx.kind
    ctx.echo(f"[{ctx.stage_id}] {kind.name} ...")
    if kind.exclusive:  # one output folder for every key: one run of the stage at a time
        with stage_lock(ctx, "stage"):
            return kind.execute(ctx)
    return kind.execute(ctx)  # locks per stage key inside


@contextlib.contextmanager
def stage_lock(ctx: StageContext[Any], name: str) -> Iterator[None]:
    """Hold ``<stage folder>/.NAME.lock`` (released by the OS if the process dies); say so when waiting."""
    ctx.folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(ctx.folder / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        ctx.echo(f"[{ctx.stage_id}] another run is working on this stage ({lock.lock_file}); waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def reused_output(ctx: StageContext[Any], key: str) -> StageOutput | None:
    """The recorded output of a finished run with stage key ``key``, unless its files have been deleted since."""
    run = ctx.tracker.finished(key)
    if run is None or OUTPUT_TAG not in run.data.tags:
        return None
    out = StageOutput.from_json(json.loads(run.data.tags[OUTPUT_TAG]))
    if out.path is not None and not out.path.exists() or out.cohort_dir is not None and not out.cohort_dir.exists():
        return None  # its files were deleted: run again
    return out


def record_output(ctx: StageContext[Any], run_id: str, output: StageOutput) -> None:
    """Tag ``run_id`` with ``output``, so a later run with the same key reuses it (:func:`reused_output`)."""
    ctx.tracker.client.set_tag(run_id, OUTPUT_TAG, json.dumps(output.to_json()))
