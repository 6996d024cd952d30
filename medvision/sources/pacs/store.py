"""The local content-addressed store a pull fills and the folder build reads.

Layout under the store root::

    instances/ab/<sha256>.dcm   one canonical DICOM file per instance, named by the hash of its bytes
    index.jsonl                 {"sop": SOPInstanceUID, "sha256": ...}, appended after each file lands
    quarantine.jsonl            instances that could not be retrieved or read, with the reason
    tmp/                        partial downloads (emptied when a pull starts)

A file reaches ``instances/`` only by an atomic rename of a complete temporary file, and its index
line is written after, so a pull killed at any moment leaves no half-written instance; the next pull
skips every indexed instance whose file still has its hash and fetches the rest. Instances are stored
in a canonical encoding (fresh file meta, pydicom's element order, the transfer syntax the PACS holds),
so the same instance pulled by DICOMweb or DIMSE has the same bytes, the same hash and the same name.
The store holds identifiable DICOM: it belongs on the hospital side, like the PACS itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import uuid
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

__all__ = ["InstanceStore", "canonical_bytes"]

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
    """A store root; safe to use from several threads of one pull."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.instances = self.root / "instances"
        self.tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self.instances.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        for part in self.tmp.glob("*.part"):  # left by a killed pull: never renamed, so never indexed
            part.unlink()
        self._index = self._read_index()

    def _read_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        path = self.root / "index.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    index[rec["sop"]] = rec["sha256"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that instance is simply fetched again
        return index

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
        """Store ``data`` under its hash (temp file, then rename), index it, return the hash."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path_for(sha)
        part = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(part, "wb") as fh:
                fh.write(data)
            target.parent.mkdir(exist_ok=True)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        with self._lock, open(self.root / "index.jsonl", "a") as fh:
            fh.write(json.dumps({"sop": sop_uid, "sha256": sha}) + "\n")
            self._index[sop_uid] = sha
        return sha

    def quarantine(self, sop_uid: str, reason: str) -> None:
        """Record an instance that failed, with the reason (our own words, never a server's reply)."""
        with self._lock, open(self.root / "quarantine.jsonl", "a") as fh:
            fh.write(json.dumps({"sop": sop_uid, "reason": reason}) + "\n")

    def __len__(self) -> int:
        return len(self._index)
