"""A process pool in which a dying worker costs the one file it was reading, never the build.

A hostile or corrupt file can kill the process decoding it: the kernel's OOM killer, a segfault in a codec. A plain
``ProcessPoolExecutor`` then fails every pending task with ``BrokenProcessPool``, naming no file. Here the work is
re-run without the results already in hand, in halves, until the job whose worker dies is alone: that job is
reported as :data:`WORKER_DIED` and everything else completes. k culprits among n jobs cost about k·log2(n) pool
restarts; a build without one pays nothing extra.

Every worker starts by adopting the ``medvision.readers`` entry points (:func:`medvision.io.load_reader_plugins`):
a ``spawn`` or ``forkserver`` worker is a fresh interpreter that inherits nothing from the build, so without this
initializer an extension's files would be read by the parent and quarantined by the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from medvision.io import load_reader_plugins

__all__ = ["WORKER_DIED", "map_isolated"]


class _WorkerDied:
    """The result of a job whose worker process died (killed, crashed) while running it."""

    def __repr__(self) -> str:
        return "WORKER_DIED"


WORKER_DIED = _WorkerDied()


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Every worker's initializer: the extensions first (their readers), then the caller's own."""
    load_reader_plugins()
    if initializer is not None:
        initializer(*initargs)


def _call_chunk(fn: Callable[..., Any], jobs: list[tuple]) -> list[Any]:
    return [fn(*job) for job in jobs]


def map_isolated(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    chunks_per_worker: int = 16,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(job index, fn(*job))`` for every job, in completion order, from ``workers`` processes.

    A job that was running when its worker died yields ``(index, WORKER_DIED)``; every other job yields its
    result exactly once. ``fn`` must be picklable (a module-level function).
    """
    load_reader_plugins()  # here first: a broken plugin fails once, by name, not as every worker dying
    groups: list[list[int]] = [list(range(len(jobs)))]
    while groups:
        group = groups.pop(0)
        if not group:
            continue
        done: set[int] = set()
        size = max(1, len(group) // (workers * chunks_per_worker))
        chunks = [group[i : i + size] for i in range(0, len(group), size)]
        try:
            with ProcessPoolExecutor(
                min(workers, len(chunks)), initializer=_start_worker, initargs=(initializer, initargs)
            ) as pool:
                futures = {pool.submit(_call_chunk, fn, [jobs[i] for i in c]): c for c in chunks}
                for future in as_completed(futures):
                    for i, result in zip(futures[future], future.result()):
                        done.add(i)
                        yield i, result
        except BrokenProcessPool:
            rest = [i for i in group if i not in done]
            if len(rest) == 1:
                yield rest[0], WORKER_DIED
            else:
                half = len(rest) // 2
                groups[:0] = [rest[:half], rest[half:]]
