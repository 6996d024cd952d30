"""Writing an output file whole or not at all, and saying "disk full" with the path when the disk is full.

Why: a full disk (or a kill) in the middle of a write left a truncated shard or ``metrics.json`` where a
reader later found it, and the error was numpy's ``8388608 requested and 6217600 written``, naming no file.
Every output is therefore written to a temporary name in its own folder and renamed over the final name only
when complete (a rename within one file system is atomic); on any failure the temporary file is removed. An
out-of-space failure becomes :class:`DiskFullError`, which names the folder and roughly how much was needed.

Files that identify patients (a PACS store, a built cohort, its cache, the pseudonym key) are written
``private``: the temporary file is created with mode 0600 before the first byte goes in, so no other account can
read it at any moment whatever the umask, and :func:`private_dir` makes their folders 0700.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from medvision.errors import MedvisionError

__all__ = ["DiskFullError", "atomic_path", "atomic_write_text", "private_dir", "write_all"]

log = logging.getLogger("medvision")

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # EFBIG: a file-size limit (ulimit -f) reads the same
#: Owner-only modes of private files and folders.
FILE_MODE, DIR_MODE = 0o600, 0o700


class DiskFullError(MedvisionError, OSError):
    """The disk (or quota) filled up while writing; the message names the folder and the space needed (exit 1)."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


@contextlib.contextmanager
def atomic_path(
    path: str | Path, need_bytes: int | None = None, *, private: bool = False, replace: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``, on failure it is removed.

    The temporary name keeps ``path``'s suffix (``np.save`` and friends add theirs otherwise) and starts with a
    dot, so folder listings and globs for the real files skip it.

    Args:
        path: the final file.
        need_bytes: about how much the write needs, for the disk-full message (and to recognise a short write
            that the writer reported without an errno, as numpy does).
        private: owner-only (0600) from creation, and a missing folder is made owner-only (0700).
        replace: ``False`` never replaces an existing ``path``: the complete file is linked into place, and
            :class:`FileExistsError` says another writer got there first (its file is whole, and kept).

    Raises:
        DiskFullError: the file system ran out of space (or quota) during the write.
        FileExistsError: ``replace=False`` and ``path`` exists.
    """
    path = Path(path)
    _make_parent(path, private)
    tmp = _temporary(path, private)
    try:
        yield tmp
        _finish(tmp, path, private, replace)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_if_full(e, path, need_bytes)
        raise


def write_all(writes: list[tuple[Path, int, Callable[[Path], None]]], *, private: bool = False) -> None:
    """Write several files, then switch them all: every temporary file is complete (and on disk) before the first
    rename, so a failure part-way replaces nothing (a cohort's manifest, quarantine list and card always agree).

    Args:
        writes: ``(target, estimated bytes, write(temporary path))`` per file.
        private: owner-only files (and missing folders), as in :func:`atomic_path`.

    Raises:
        DiskFullError: the file system ran out of space (or quota) during a write.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, need, write in writes:
            _make_parent(target, private)
            tmp = _temporary(target, private)
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
        _finish(tmp, target, private, replace=True)


def atomic_write_text(path: str | Path, text: str, *, private: bool = False, replace: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_path`."""
    data = text.encode("utf-8")
    with atomic_path(path, need_bytes=len(data), private=private, replace=replace) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def private_dir(path: str | Path) -> Path:
    """``path`` as an owner-only folder (0700): created with its missing parents (each 0700), or, when it exists,
    tightened (group and other bits removed), since a folder of identifiable files must not be listable by others.

    A folder owned by another account cannot be tightened; that is logged, not raised (its files are still 0600).
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, mode & ~0o077)
        except PermissionError:
            log.warning("cannot make %s owner-only (it belongs to another account); its files are 0600", path)
    return path


def _make_parent(path: Path, private: bool) -> None:
    if private:
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)


def _temporary(path: Path, private: bool = False) -> Path:
    # keeps path's suffix (np.save and friends add theirs otherwise); the leading dot hides it from globs
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    if private:  # created 0600 before any byte is written; writers that open by name keep the mode
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    return tmp


def _finish(tmp: Path, path: Path, private: bool, replace: bool) -> None:
    if private:  # a writer that replaced the file (rather than writing into it) brought its own mode
        os.chmod(tmp, FILE_MODE)
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with FileExistsError, never overwrites
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if path.exists():  # a file system without hard links: checked, then renamed (a narrow race)
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


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


def _out_of_space(e: OSError, path: Path, need_bytes: int | None) -> bool:
    if e.errno in _NO_SPACE:
        return True
    if e.errno is None and need_bytes:  # numpy: "N requested and M written", no errno
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path.parent).free < need_bytes
    return False
