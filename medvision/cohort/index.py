"""Header-only indexing of an images folder.

Indexing reads only the DICOM header (or a photo's size), in parallel, so a folder of tens of
thousands of studies is listed in seconds; pixels are decoded later, once, into the cache.
Every file found ends as an :class:`IndexedFile` or a :class:`Rejected` - never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from medvision.data.reader import PHOTO_SUFFIXES, ImageReadError, is_dicom

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
        if path.suffix.lower() in PHOTO_SUFFIXES and not is_dicom(path):
            return _index_photo(path, relpath)
        # Anything else is tried as DICOM: the reader also accepts legacy files without a preamble.
        return _index_dicom(path, relpath)
    except ImageReadError as e:
        reason = e.reason + (f" ({e.hint})" if e.hint else "")
        if path.suffix.lower() not in (".dcm", ".dicom", "") and "not a DICOM" in e.reason:
            reason += f"; supported photos are {', '.join(sorted(PHOTO_SUFFIXES))}"
        return Rejected(relpath, "index", reason)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop a build
        return Rejected(relpath, "index", f"unexpected error while reading the header: {type(e).__name__}")


def _index_dicom(path: Path, relpath: str) -> IndexedFile | Rejected:
    from medvision.data.dicom import read_dicom_header

    h = read_dicom_header(path)
    if not h.has_pixel_data:
        return Rejected(relpath, "index", "DICOM file has no pixel data (e.g. a report or DICOMDIR)")
    return IndexedFile(
        relpath=relpath, kind="dicom", frames=int(h.frames or 1), channels=int(h.samples_per_pixel or 1),
        rows=int(h.rows or 0), columns=int(h.columns or 0),
        patient_id=h.patient_id, patient_name=h.patient_name, birth_date=h.birth_date,
        accession_number=h.accession_number, study_uid=h.study_uid, series_uid=h.series_uid,
        sop_uid=h.sop_uid, modality=h.modality, sex=h.sex, age=h.age, manufacturer=h.manufacturer,
        institution=h.institution, view=h.view, photometric=h.photometric, transfer_syntax=h.transfer_syntax,
    )


def _index_photo(path: Path, relpath: str) -> IndexedFile | Rejected:
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.mode == "F":
                return Rejected(relpath, "index", "floating-point photos are not supported; export as 8/16-bit")
            channels = 1 if im.mode in ("1", "L", "LA", "La", "I") or im.mode.startswith("I;16") else 3
            fmt = im.format
    except (UnidentifiedImageError, OSError) as e:
        return Rejected(relpath, "index", f"photo could not be opened: {e.__class__.__name__}")
    return IndexedFile(relpath=relpath, kind="photo", frames=1, channels=channels, rows=height, columns=width,
                       modality="XC", photometric=f"{fmt}")


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
