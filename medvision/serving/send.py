"""Results back to the PACS: the DICOM reports of ``predict`` stored by STOW-RS (DICOMweb) or C-STORE (DIMSE).

Why these two: they are the two ways a pull reaches a PACS (``pacs.protocol: dicomweb | dimse``), so a site that
pulls a cohort can send its results back with nothing new to configure. STOW-RS goes through dicomweb-client with
the pull's credentials (``$MEDVISION_PACS_USER`` / ``$MEDVISION_PACS_PASSWORD`` or ``$MEDVISION_PACS_TOKEN``).
C-STORE goes through the pull's own DIMSE layer (:func:`~medvision.sources.pacs.dimse.associate`, the one retry
loop, the log scrubber) to ``dimse://CALLED_AET@host:port[?calling_aet=OURS]``: the words of a DIMSE spec
(``pacs.called_aet``, ``pacs.calling_aet``, with the same defaults). Messages name the server by scheme, host and
path (or host, port and AE title), never a query string or credentials, and never an identifier from a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association

from medvision.cohort.logscrub import Scrubber, scrubbed_output
from medvision.cohort.spec import DimsePacs
from medvision.errors import InputError
from medvision.sources.pacs.credentials import resolve_credentials
from medvision.sources.pacs.dimse import Peer, associate
from medvision.sources.pacs.errors import PacsAuthError, PacsError, PacsUnreachableError
from medvision.sources.pacs.pull import quiet_libraries
from medvision.sources.pacs.retry import Retriable, with_retries

__all__ = ["DicomWebTarget", "parse_send_target", "send_reports"]

#: C-STORE statuses that mean "stored" (success, and the warnings: coerced, elements discarded, not matching).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
#: Keywords whose values identify a patient or a study in a report sent back (``--for-source-pacs``).
_IDENTIFYING = ("PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class DicomWebTarget:
    """A DICOMweb base URL to store to by STOW-RS; ``where`` names it without a query string."""

    url: str
    where: str


def parse_send_target(url: str, auth: str = "none") -> DicomWebTarget | Peer:
    """What ``--send URL`` names, checked before any image is read: a DICOMweb base URL (``http(s)://``) or a DIMSE
    peer (``dimse://CALLED_AET@host:port``, ``?calling_aet=OURS`` optional; defaults as in a DIMSE pacs spec).

    Raises:
        InputError: another scheme, credentials in the URL, no port, a bad AE title, or ``auth`` with DIMSE.
    """
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
    if parts.scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise InputError(
                f"--send {shown}: give the DICOMweb base URL without credentials; set $MEDVISION_PACS_USER and "
                "$MEDVISION_PACS_PASSWORD instead"
            )
        return DicomWebTarget(url, f"{parts.scheme}://{parts.netloc}{parts.path}")
    if parts.scheme != "dimse":
        raise InputError(
            f"--send {shown}: give a DICOMweb base URL (http:// or https://, STOW-RS) or a DIMSE peer as "
            "dimse://CALLED_AET@host:port (C-STORE)"
        )
    return _dimse_peer(parts.netloc, parts.query, auth, shown)


def _dimse_peer(netloc: str, query: str, auth: str, shown: str) -> Peer:
    """The peer of a ``dimse://`` URL, validated by the DIMSE pacs spec itself (one vocabulary, one set of rules)."""
    called, _, hostport = netloc.rpartition("@")
    host, _, port = hostport.rpartition(":")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    problem = ""
    if ":" in called or auth != "none":
        problem = "DIMSE has no passwords: the PACS admits our AE title; drop the password and --send-auth"
    elif not host or not port.isdigit():
        problem = "give the peer as dimse://CALLED_AET@host:port"
    elif set(options) - {"calling_aet"}:
        problem = "the only option of a dimse:// URL is ?calling_aet=OUR_AE_TITLE"
    if problem:
        raise InputError(f"--send {shown}: {problem}")
    fields = {"called_aet": called} if called else {}
    try:
        spec = DimsePacs.model_validate(
            {"protocol": "dimse", "host": host, "port": int(port), "store": ".", "query": {"modality": ["SR"]}}
            | fields
            | options
        )
    except ValidationError as e:  # the AE titles (at most 16 characters) or the port
        bad = sorted({str(err["loc"][-1]) for err in e.errors()})
        raise InputError(
            f"--send {shown}: invalid {', '.join(bad)} (AE titles: 1-16 characters; port: 1-65535)"
        ) from None
    return Peer(spec.host, spec.port, spec.called_aet, spec.calling_aet, spec.timeout, spec.retries)


def send_reports(paths: Sequence[Path], url: str, *, auth: str = "none", timeout: float = 30.0) -> int:
    """Store every file of ``paths`` to the PACS ``url`` names (:func:`parse_send_target`): by STOW-RS in one
    request, or by C-STORE over one association.

    Returns:
        The number of instances the server stored.

    Raises:
        InputError: ``url`` is neither an http(s) base URL nor a ``dimse://`` peer, or holds credentials.
        PacsAuthError: the server refused the credentials (401/403) or our AE title, or none were given for ``auth``.
        PacsUnreachableError: no answer, or an error status.
        PacsError: the PACS refused some reports, or does not accept their SOP class.
    """
    target = parse_send_target(url, auth)
    if isinstance(target, Peer):
        return _c_store(paths, replace(target, timeout=timeout))
    return _stow(paths, target, auth, timeout)


def _stow(paths: Sequence[Path], target: DicomWebTarget, auth: str, timeout: float) -> int:
    """One STOW-RS request with the pull's credentials; the count the server says it stored."""
    where = target.where
    credentials = resolve_credentials(auth, None)
    session = requests.Session()
    if credentials.kind == "basic":
        session.auth = (credentials.user or "", credentials.secret or "")
    elif credentials.kind == "bearer":
        session.headers["Authorization"] = f"Bearer {credentials.secret}"
    client = DICOMwebClient(target.url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    datasets = [pydicom.dcmread(p) for p in paths]
    if not datasets:
        return 0
    try:
        answer = client.store_instances(datasets)
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            raise PacsAuthError(f"{where} refused the credentials (HTTP {status}) when storing the reports") from None
        raise PacsUnreachableError(f"{where} did not store the reports (HTTP {status})") from None
    except requests.RequestException as e:
        raise PacsUnreachableError(f"{where} cannot be reached to store the reports ({type(e).__name__})") from None
    failed = getattr(answer, "FailedSOPSequence", None)
    if failed:
        raise PacsUnreachableError(f"{where} refused {len(failed)} of {len(datasets)} report(s) (STOW-RS failures)")
    return len(getattr(answer, "ReferencedSOPSequence", []))


def _c_store(paths: Sequence[Path], peer: Peer) -> int:
    """Each report by C-STORE over one association, while every log line is scrubbed of the reports' patient and
    study identifiers (pynetdicom's own lines included), as during a pull."""
    datasets = [pydicom.dcmread(p) for p in paths]
    if not datasets:
        return 0
    values = [str(ds.get(k, "")) for ds in datasets for k in _IDENTIFYING]
    with scrubbed_output(Scrubber(identifiers=[v for v in values if v])), quiet_libraries():
        sender = _StoreSender(peer, datasets)
        try:
            codes = [sender.store(ds) for ds in datasets]
        finally:
            sender.close()
    refused = [c for c in codes if c not in _STORED]
    if refused:
        raise PacsError(
            f"the PACS at {peer.where} refused {len(refused)} of {len(datasets)} report(s) "
            f"(C-STORE status 0x{refused[0]:04X}); check that it accepts storage from our AE title"
        )
    return len(codes)


class _StoreSender:
    """One association proposing each object's SOP class (Comprehensive SR, Secondary Capture) in its own transfer
    syntax and the two uncompressed ones; each C-STORE is one attempt of the pull's retry loop, reopening a lost
    association."""

    def __init__(self, peer: Peer, datasets: Sequence[Dataset]) -> None:
        self.peer = peer
        self._contexts: dict[str, list[str]] = {}
        for ds in datasets:
            syntaxes = self._contexts.setdefault(str(ds.SOPClassUID), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            own = str(ds.file_meta.TransferSyntaxUID)
            if own not in syntaxes:
                syntaxes.insert(0, own)
        self._assoc: Association | None = None
        self._message_id = 0

    def _open(self) -> Association:
        """The association, opened on first use (and again after a lost one); refused SOP classes fail clearly."""
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        ae = self.peer.ae()
        for sop_class, syntaxes in self._contexts.items():
            ae.add_requested_context(sop_class, syntaxes)
        self._assoc = assoc = associate(self.peer, ae, lambda: self._message_id)
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        missing = sorted(set(self._contexts) - accepted)
        if missing:
            self.close()
            raise PacsError(
                f"the PACS at {self.peer.where} does not accept storage of SOP class {', '.join(missing)}; "
                "ask its administrator to allow Structured Reports (and Secondary Capture images, for --saliency)"
            )
        return assoc

    def store(self, ds: Dataset) -> int:
        """The C-STORE status of ``ds``, after at most ``peer.retries`` retries of a lost or unanswered request."""

        def once() -> int:
            assoc = self._open()
            self._message_id = self._message_id % 0xFFFF + 1
            status = assoc.send_c_store(ds, msg_id=self._message_id)
            if not status:  # no answer: the association timed out or was aborted
                self.close()
                raise Retriable(
                    PacsUnreachableError(
                        f"the PACS at {self.peer.where} stopped answering C-STORE after {self.peer.retries} retries"
                    )
                )
            return int(status.Status)

        return with_retries(once, self.peer.retries, "C-STORE")

    def close(self) -> None:
        """Release the association, if one is open."""
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None
