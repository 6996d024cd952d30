"""Header-only indexing of an images folder.

Indexing reads only the DICOM header (or a photo's size), in parallel, so a folder of tens of
thousands of studies is listed in seconds; pixels are decoded later, once, into the cache.
Every file found ends as an :class:`IndexedFile` or a :class:`Rejected` - never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from medvision.cohort.logscrub import Scrubber, scrub_worker
from medvision.cohort.workers import WORKER_DIED, map_isolated
from medvision.io import PHOTO_SUFFIXES, ImageHeader, ImageReadError, read_header

__all__ = [
    "IndexLimits",
    "IndexedFile",
    "Rejected",
    "index_files",
    "list_entries",
    "list_files",
    "safe_name",
    "worker_count",
]


@dataclass(frozen=True, kw_only=True)
class IndexedFile(ImageHeader):
    """A file's header (identifiers included: used for pseudonyms and the PHI check, never written out) and where
    the file is, relative to the images folder."""

    relpath: str


@dataclass(frozen=True)
class Rejected:
    relpath: str
    stage: str
    reason: str


def worker_count(requested: int) -> int:
    return requested if requested > 0 else max(1, os.cpu_count() or 1)


def safe_name(relpath: str) -> str:
    """A file name as text that can always be written: undecodable bytes (a name in Latin-1 on a UTF-8 system)
    shown as ``\\xe9`` escapes."""
    return os.fsencode(relpath).decode("utf-8", "backslashreplace")


def list_entries(root: Path) -> tuple[list[str], list[Rejected]]:
    """Every entry under ``root``: the regular files to index, and every other entry with the reason it is left out.

    Hidden files are listed (nothing is silently skipped). Symbolic links to files are followed; links to folders
    are followed once, and a folder reached a second time (a link loop, or two links to one folder) is reported
    instead of listed again. Broken links, sockets, devices and names that are not valid UTF-8 are reported.
    """
    files: list[str] = []
    left_out: list[Rejected] = []
    seen: set[tuple[int, int]] = set()

    def visit(folder: Path, rel: str) -> None:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            left_out.append(
                Rejected(
                    safe_name(rel),
                    "list",
                    "link to a folder already listed (a link loop or a "
                    "second link to one folder): its files are listed once, under the first path",
                )
            )
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            left_out.append(Rejected(safe_name(rel or "."), "list", f"folder could not be listed ({e.strerror})"))
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if safe_name(child) != child:
                left_out.append(
                    Rejected(
                        safe_name(child),
                        "list",
                        "the name is not valid UTF-8 text; rename the "
                        "file (e.g. `convmv -f latin1 -t utf8`) to include it",
                    )
                )
            elif entry.is_dir(follow_symlinks=True):
                visit(Path(entry.path), child)
            elif entry.is_file(follow_symlinks=True):
                files.append(child)
            elif entry.is_symlink():
                left_out.append(Rejected(child, "list", "broken symbolic link: its target does not exist"))
            else:
                left_out.append(Rejected(child, "list", "not a regular file (a socket, pipe or device)"))

    visit(root, "")
    return sorted(files), left_out


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (hidden ones too), sorted; see :func:`list_entries` for the rest."""
    return list_entries(root)[0]


@dataclass(frozen=True)
class IndexLimits:
    """What a file must satisfy before any pixel is decoded."""

    #: Cap on the declared size, columns x rows x frames x samples per pixel, in millions (``None``: no cap).
    max_megapixels: float | None = None
    #: Reader kinds to ingest (``None``: all); files of other kinds are left out with a reason.
    kinds: frozenset[str] | None = None


def _index_one(root: str, relpath: str, limits: IndexLimits = IndexLimits()) -> IndexedFile | Rejected:
    path = Path(root) / relpath
    try:
        header = read_header(path)
    except ImageReadError as e:
        reason = e.reason + (f" ({e.hint})" if e.hint else "")
        if path.suffix.lower() not in (".dcm", ".dicom", "") and "not a DICOM" in e.reason:
            reason += f"; supported photos are {', '.join(sorted(PHOTO_SUFFIXES))}"
        return Rejected(relpath, "index", reason)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop a build
        return Rejected(relpath, "index", f"unexpected error while reading the header: {type(e).__name__}")
    if limits.kinds is not None and header.kind not in limits.kinds:
        return Rejected(
            relpath, "index", f"a {header.kind} file, and only {sorted(limits.kinds)} are ingested (`kinds`)"
        )
    too_large = _too_large(header, limits.max_megapixels)
    if too_large:
        return Rejected(relpath, "index", too_large)
    return IndexedFile(relpath=relpath, **asdict(header))


def _too_large(h: ImageHeader, cap: float | None) -> str | None:
    """The declared size is checked before decoding: a 1 KB file may claim 60000 x 60000 pixels."""
    if cap is None:
        return None
    samples = max(1, h.channels)
    megapixels = h.columns * h.rows * max(1, h.frames) * samples / 1e6
    if megapixels <= cap:
        return None
    shape = f"{h.columns}×{h.rows}×{max(1, h.frames)}" + (f"×{samples} samples" if samples > 1 else "")
    return f"image too large ({shape} = {megapixels:,.0f} MP, cap {cap:g} MP; raise `max_megapixels` if intended)"


def index_files(
    root: Path,
    relpaths: Iterable[str],
    workers: int = 0,
    limits: IndexLimits = IndexLimits(),
    scrubber: Scrubber | None = None,
) -> Iterator[IndexedFile | Rejected]:
    """Index files in order; with several workers, in a process pool where a dying worker costs one file.

    ``scrubber`` is installed in every worker (:func:`~medvision.cohort.logscrub.scrub_worker`): a spawned or
    forkserver worker does not inherit the caller's scrubbing, and library log lines quote paths.
    """
    relpaths = list(relpaths)
    n = worker_count(workers)
    if n == 1 or len(relpaths) < 64:
        for r in relpaths:
            yield _index_one(str(root), r, limits)
        return
    results: list[IndexedFile | Rejected | None] = [None] * len(relpaths)
    jobs = [(str(root), r, limits) for r in relpaths]
    for i, result in map_isolated(_index_one, jobs, n, initializer=scrub_worker, initargs=(scrubber,)):
        results[i] = (
            Rejected(relpaths[i], "index", "the reading process died on this file (out of memory or a crash)")
            if result is WORKER_DIED
            else result
        )
    yield from results  # type: ignore[misc]
