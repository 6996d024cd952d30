"""Writing cohort files so that a full disk or a kill never leaves a half-written file in place of a good one.

Each file is written to a temporary name beside its target, flushed to disk, and renamed over the target (a rename
within one folder is atomic on POSIX). A write that fails removes its temporary file; a full disk (or quota)
becomes :class:`DiskFullError` naming the folder and the space needed, instead of numpy's "8388608 requested and
6217600 written" or pyarrow's bare IOError.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medvision.cohort.identifiers import CohortBuildError

__all__ = ["DiskFullError", "disk_errors", "write_all"]

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(CohortBuildError, OSError):
    """No room left where a cohort file was being written; the message says where and how much is needed."""


def _is_full(exc: BaseException, folder: Path, need: int) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc)
    if "No space left" in text or "Disk quota" in text or f"[Errno {errno.ENOSPC}]" in text or "requested and" in text:
        return True
    try:
        return shutil.disk_usage(folder).free < need
    except OSError:
        return False


@contextmanager
def disk_errors(target: Path, need_bytes: int, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a failed write of about ``need_bytes`` into ``target`` into :class:`DiskFullError` when the disk is
    full, removing ``cleanup`` (the partial file) either way."""
    try:
        yield
    except Exception as exc:  # pyarrow and numpy raise their own types for the same ENOSPC
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)
        folder = target.parent
        if _is_full(exc, folder, need_bytes):
            mb = max(1, round(need_bytes / 2**20))
            raise DiskFullError(
                f"disk full at {folder} (need ~{mb} MB more); free space there or build into another folder "
                "(`--out`). Nothing was replaced: the previous cohort, if any, is intact."
            ) from exc
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(writes: list[tuple[Path, int, Callable[[Path], None]]]) -> None:
    """Write several files, then switch them all: every temporary file is complete before the first rename.

    ``writes`` holds ``(target, estimated bytes, write(path))``. A failure while writing replaces nothing.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, need, write in writes:
            tmp = target.with_name(f".{target.name}.tmp")
            with disk_errors(target, need, cleanup=tmp):
                write(tmp)
                _fsync(tmp)
            staged.append((tmp, target))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        tmp.replace(target)
