"""Header-only indexing of an images folder.

Indexing reads only the DICOM header (or a photo's size), in parallel, so a folder of tens of
thousands of studies is listed in seconds; pixels are decoded later, once, into the cache.
Every file found ends as an :class:`IndexedFile` or a :class:`Rejected` - never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from medvision.io import PHOTO_SUFFIXES, ImageReadError, read_header

__all__ = ["IndexedFile", "Rejected", "index_files", "list_files", "worker_count"]


@dataclass(frozen=True)
class IndexedFile:
    relpath: str
    kind: str  # "dicom" | "photo"
    frames: int
    channels: int
    rows: int
    columns: int
    # Identifiers: used for pseudonyms and the PHI check, never written out.
    patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    # Public fields.
    modality: str | None = None
    sex: str | None = None
    age: float | None = None
    manufacturer: str | None = None
    institution: str | None = None
    view: str | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None


@dataclass(frozen=True)
class Rejected:
    relpath: str
    stage: str
    reason: str


def worker_count(requested: int) -> int:
    return requested if requested > 0 else max(1, os.cpu_count() or 1)


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (hidden ones too: nothing is silently skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file():
                out.append(full.relative_to(root).as_posix())
    return sorted(out)


def _index_one(root: str, relpath: str) -> IndexedFile | Rejected:
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
    return IndexedFile(relpath=relpath, **asdict(header))


def _index_chunk(root: str, relpaths: list[str]) -> list[IndexedFile | Rejected]:
    return [_index_one(root, r) for r in relpaths]


def index_files(root: Path, relpaths: Iterable[str], workers: int = 0) -> Iterator[IndexedFile | Rejected]:
    """Index files in order; with several workers, chunks go to a process pool."""
    relpaths = list(relpaths)
    n = worker_count(workers)
    if n == 1 or len(relpaths) < 64:
        yield from _index_chunk(str(root), relpaths)
        return
    size = max(16, len(relpaths) // (n * 8))
    chunks = [relpaths[i : i + size] for i in range(0, len(relpaths), size)]
    with ProcessPoolExecutor(n) as pool:
        for result in pool.map(_index_chunk, [str(root)] * len(chunks), chunks):
            yield from result
