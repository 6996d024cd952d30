"""The local content-addressed store a pull fills and the folder build reads.

Layout under the store root::

    instances/ab/<sha256>.dcm   one canonical DICOM file per instance, named by the hash of its bytes
    index.jsonl                 {"sop": SOPInstanceUID, "sha256": ...} per stored instance
    quarantine.jsonl            instances that could not be retrieved or read, with the reason
    index.d/, quarantine.d/     records of a pull still running (or killed), merged into the files above when
                                a pull ends and when the next one starts

Every file is written through :mod:`medvision._atomic`: an instance reaches ``instances/`` only whole (written to a
temporary name beside it, then renamed), and its index record is written after it, in a segment file that is
itself written whole (a few instances at a time: rewriting one growing index after each instance would cost a
pull time quadratic in its size). A pull killed at any moment therefore leaves no half-written file; the next pull
skips every indexed instance whose file still has its hash and fetches the rest (at most the last segment's few
instances again). Instances are stored in a canonical encoding (fresh file meta, pydicom's element order, the
transfer syntax the PACS holds), so the same instance pulled by DICOMweb or DIMSE has the same bytes, the same
hash and the same name.

The store holds identifiable DICOM: it belongs on the hospital side, like the PACS itself, and is owner-only
(folders 0700, files 0600) whatever the umask.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from medvision._atomic import FILE_MODE, atomic_path, atomic_write_text, private_dir

__all__ = ["InstanceStore", "PullFailure", "canonical_bytes", "pull_failures"]

_VERSION_NAME = "MEDVISION_PULL"


def canonical_bytes(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` as a DICOM file whose bytes depend only on its content, not on the transport it came by."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _VERSION_NAME
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class InstanceStore:
    """A store root; safe to use from several threads of one pull. :meth:`close` merges the pull's records."""

    def __init__(self, root: str | Path) -> None:
        self.root = private_dir(Path(root).expanduser().resolve())
        self.instances = private_dir(self.root / "instances")
        self._remove_temporaries()
        self._records = _RecordLog(self.root, "index", flush_every=64, flush_seconds=0.25)
        self._quarantined = _RecordLog(self.root, "quarantine", flush_every=1, flush_seconds=0.0)
        self._index: dict[str, str] = {}
        for rec in self._records.read():
            if isinstance(rec.get("sop"), str) and isinstance(rec.get("sha256"), str):
                self._index[rec["sop"]] = rec["sha256"]

    def _remove_temporaries(self) -> None:
        """Left by a killed pull: never renamed into place, so never indexed."""
        for stale in [*self.instances.glob("*/.*.tmp.dcm"), *self.root.glob("*.d/.*.tmp.jsonl")]:
            stale.unlink(missing_ok=True)
        legacy = self.root / "tmp"  # partial downloads of stores written before _atomic did this
        if legacy.is_dir() and all(p.suffix == ".part" for p in legacy.iterdir()):
            shutil.rmtree(legacy)

    def path_for(self, sha256: str) -> Path:
        return self.instances / sha256[:2] / f"{sha256}.dcm"

    def has(self, sop_uid: str) -> bool:
        """The instance is indexed and its file is present with the recorded hash."""
        sha = self._index.get(sop_uid)
        if sha is None:
            return False
        path = self.path_for(sha)
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest() == sha
        except OSError:
            return False

    def put(self, sop_uid: str, data: bytes) -> str:
        """Store ``data`` under its hash (whole, owner-only), index it, return the hash."""
        sha = hashlib.sha256(data).hexdigest()
        with atomic_path(self.path_for(sha), need_bytes=len(data), private=True) as tmp:
            tmp.write_bytes(data)
        self._records.add({"sop": sop_uid, "sha256": sha})
        self._index[sop_uid] = sha
        return sha

    def quarantine(self, sop_uid: str, reason: str) -> None:
        """Record an instance that failed, with the reason (our own words, never a server's reply)."""
        self._quarantined.add({"sop": sop_uid, "reason": reason})

    def close(self) -> None:
        """Write the records still pending and merge every segment into ``index.jsonl`` / ``quarantine.jsonl``."""
        self._records.compact()
        self._quarantined.compact()

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True)
class PullFailure:
    """An instance a pull quarantined and no pull has stored since: where its record is, and why it failed.

    Carries no identifier (the SOP Instance UID stays in the owner-only store), so it can be listed in a table that
    is logged (``medvision predict``'s ``quarantine.csv``)."""

    record: int  # 1-based, the first record of this instance in quarantine.jsonl (segments after it, by name)
    reason: str


def pull_failures(root: str | Path) -> list[PullFailure]:
    """The instances of the store at ``root`` that failed and are still missing, in record order (last reason).

    Read-only, so it is safe beside a pull still running (unlike opening an :class:`InstanceStore`, which removes
    a killed pull's temporaries); an instance retried and stored since is not a failure any more.
    """
    root = Path(root)
    stored = {r.get("sop") for r in _RecordLog(root, "index", 1, 0.0).read()}
    first: dict[str, int] = {}
    reason: dict[str, str] = {}
    for number, rec in enumerate(_RecordLog(root, "quarantine", 1, 0.0).read(), start=1):
        sop = rec.get("sop")
        if isinstance(sop, str) and sop not in stored:
            first.setdefault(sop, number)
            reason[sop] = str(rec.get("reason", "unknown reason"))
    return [PullFailure(first[sop], reason[sop]) for sop in sorted(first, key=first.__getitem__)]


class _RecordLog:
    """JSON records kept as ``NAME.jsonl`` plus segments ``NAME.d/*.jsonl`` added since, each file written whole.

    Records are buffered and written as a new segment every ``flush_every`` records or ``flush_seconds``;
    :meth:`compact` merges the segments into ``NAME.jsonl`` (under the store's lock, so two pulls never merge one
    segment twice).
    """

    def __init__(self, root: Path, name: str, flush_every: int, flush_seconds: float) -> None:
        self.file, self.segments = root / f"{name}.jsonl", root / f"{name}.d"
        self._lock_path = root / ".lock"
        self._flush_every, self._flush_seconds = flush_every, flush_seconds
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def read(self) -> list[dict]:
        records = []
        for path in [self.file, *sorted(self.segments.glob("*.jsonl"))]:
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:  # merged away by a pull ending meanwhile
                continue
            for line in lines:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short in a store written before _atomic: that instance is fetched again
        return records

    def add(self, record: dict) -> None:
        with self._lock:
            self._pending.append(record)
            due = time.monotonic() - self._last_flush >= self._flush_seconds
            if len(self._pending) >= self._flush_every or due:
                self._flush()

    def compact(self) -> None:
        with self._lock:
            self._flush()
        with FileLock(str(self._lock_path), mode=FILE_MODE):
            merged = sorted(self.segments.glob("*.jsonl"))
            if not merged:
                return
            records = self.read()
            text = "".join(json.dumps(r) + "\n" for r in records)
            atomic_write_text(self.file, text, private=True)
            for path in merged:
                path.unlink(missing_ok=True)

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        atomic_write_text(self.segments / name, "".join(json.dumps(r) + "\n" for r in self._pending), private=True)
        self._pending = []
