"""Writing an output file whole or not at all, and saying "disk full" with the path when the disk is full.

Why: a full disk (or a kill) in the middle of a write left a truncated shard or ``metrics.json`` where a
reader later found it, and the error was numpy's ``8388608 requested and 6217600 written``, naming no file.
Every output is therefore written to a temporary name in its own folder and renamed over the final name only
when complete (a rename within one file system is atomic); on any failure the temporary file is removed. An
out-of-space failure becomes :class:`DiskFullError`, which names the folder and roughly how much was needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from medvision.errors import MedvisionError

__all__ = ["DiskFullError", "atomic_path", "atomic_write_text", "write_all"]

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # EFBIG: a file-size limit (ulimit -f) reads the same


class DiskFullError(MedvisionError, OSError):
    """The disk (or quota) filled up while writing; the message names the folder and the space needed (exit 1)."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


@contextlib.contextmanager
def atomic_path(path: str | Path, need_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``, on failure it is removed.

    The temporary name keeps ``path``'s suffix (``np.save`` and friends add theirs otherwise) and starts with a
    dot, so folder listings and globs for the real files skip it.

    Args:
        path: the final file.
        need_bytes: about how much the write needs, for the disk-full message (and to recognise a short write
            that the writer reported without an errno, as numpy does).

    Raises:
        DiskFullError: the file system ran out of space (or quota) during the write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_if_full(e, path, need_bytes)
        raise


def write_all(writes: list[tuple[Path, int, Callable[[Path], None]]]) -> None:
    """Write several files, then switch them all: every temporary file is complete (and on disk) before the first
    rename, so a failure part-way replaces nothing (a cohort's manifest, quarantine list and card always agree).

    Args:
        writes: ``(target, estimated bytes, write(temporary path))`` per file.

    Raises:
        DiskFullError: the file system ran out of space (or quota) during a write.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, need, write in writes:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary(target)
            staged.append((tmp, target))
            try:
                write(tmp)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except BaseException as e:
                _raise_if_full(e, target, need)
                raise
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)


def _temporary(path: Path) -> Path:
    # keeps path's suffix (np.save and friends add theirs otherwise); the leading dot hides it from globs
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _raise_if_full(e: BaseException, path: Path, need_bytes: int | None) -> None:
    if isinstance(e, OSError) and not isinstance(e, DiskFullError) and _out_of_space(e, path, need_bytes):
        need = f"need ~{max(1, round(need_bytes / 2**20))} MB" if need_bytes else "need more space"
        free = shutil.disk_usage(path.parent).free
        raise DiskFullError(
            errno.ENOSPC,
            f"disk full at {path.parent} ({need}, {free / 2**20:.0f} MB free) while writing {path.name}; "
            "free space or choose another output folder, then run again (nothing partial was kept; a previous "
            "version of the file, if any, is intact)",
        ) from e


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_path`."""
    data = text.encode("utf-8")
    with atomic_path(path, need_bytes=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _out_of_space(e: OSError, path: Path, need_bytes: int | None) -> bool:
    if e.errno in _NO_SPACE:
        return True
    if e.errno is None and need_bytes:  # numpy: "N requested and M written", no errno
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path.parent).free < need_bytes
    return False
