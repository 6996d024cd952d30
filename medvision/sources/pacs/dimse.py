"""DIMSE transport: C-FIND (study root) and C-GET with ``pynetdicom``.

C-GET brings instances back on our own association, so nothing needs to reach us from the PACS (no
listening port, unlike C-MOVE). Each SOP class is proposed once per transfer syntax, so the PACS can
send every instance in the syntax it stores (an RLE instance stays RLE) instead of transcoding it.

Retries: opening the association, a search (lost association, or fewer answers than the level above announced)
and a C-GET are each one attempt, tried again by the pull's one retry helper (:mod:`medvision.sources.pacs.retry`),
so no request is ever retried by two nested loops.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association

# pynetdicom creates its SOP class names at import time (through globals()), so type checkers cannot see them.
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND_MODEL  # type: ignore[attr-defined]
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET_MODEL  # type: ignore[attr-defined]

from medvision.cohort.spec import DimsePacs
from medvision.sources.pacs.errors import InstanceFailedError, PacsAuthError, PacsError, PacsUnreachableError
from medvision.sources.pacs.retry import Retriable, with_retries
from medvision.sources.pacs.source import InstanceRef

__all__ = ["DimseSource", "Peer", "associate"]

log = logging.getLogger("medvision.sources.pacs")

_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
]
_MAX_CONTEXTS = 128


class DimseSource:
    """One association, opened on first use; ``storage_classes`` are the SOP classes C-GET may return."""

    def __init__(self, spec: DimsePacs, storage_classes: Iterable[str] = ()) -> None:
        self.spec = spec
        self.peer = Peer(spec.host, spec.port, spec.called_aet, spec.calling_aet, spec.timeout, spec.retries)
        self.where = self.peer.where
        self._classes = sorted({c for c in storage_classes if c})
        self._assoc: Association | None = None
        self._message_id = 0  # the ID of the request in flight; responses to any other are stale
        self._received: list[tuple[Dataset | None, str, str]] = []
        self._expected: dict[str, int | None] = {}  # UID -> number of children the PACS announced

    # --- association ---------------------------------------------------------------------------------

    def _ae(self) -> tuple[AE, list]:
        ae = self.peer.ae()
        ae.add_requested_context(FIND_MODEL)
        roles = []
        if self._classes:
            ae.add_requested_context(GET_MODEL)
            syntaxes = _SYNTAXES
            while len(self._classes) * len(syntaxes) > _MAX_CONTEXTS - 2 and len(syntaxes) > 3:
                syntaxes = syntaxes[:-1]
            if len(self._classes) * len(syntaxes) > _MAX_CONTEXTS - 2:
                raise PacsError(
                    f"the request spans {len(self._classes)} SOP classes, more than one DIMSE "
                    "association can carry; narrow the query (pacs.query.modality) or use DICOMweb"
                )
            for cls in self._classes:
                for ts in syntaxes:
                    ae.add_requested_context(cls, [ts])
                roles.append(build_role(cls, scp_role=True))
        return ae, roles

    def _open(self) -> Association:
        """The association, opened on first use: one attempt (the request that needs it is what is retried)."""
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        ae, roles = self._ae()
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        self._assoc = associate(self.peer, ae, lambda: self._message_id, ext_neg=roles, handlers=handlers)
        return self._assoc

    def _on_store(self, event) -> int:
        ts = str(event.context.transfer_syntax)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self._received.append((ds, ts, ""))
        except Exception as e:  # noqa: BLE001 - a payload that does not parse fails one instance only
            self._received.append((None, ts, f"not a readable DICOM instance ({type(e).__name__})"))
            return 0xC210
        return 0x0000

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def _abandon(self) -> None:
        """Abort mid-request: the answers still on their way must not meet a later request."""
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.abort()
        self._assoc = None

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1  # (0000,0110) is an unsigned short; 0 is not used
        return self._message_id

    # --- searches ------------------------------------------------------------------------------------

    def _find(self, identifier: Dataset, what: str) -> list[Dataset]:
        """One C-FIND; a lost association is worth another attempt."""
        assoc = self._open()
        found = []
        for status, ident in assoc.send_c_find(identifier, FIND_MODEL, msg_id=self._next_message_id()):
            if not status:  # no answer: the association timed out or was aborted
                self.close()
                raise Retriable(
                    PacsUnreachableError(
                        f"the PACS at {self.where} stopped answering the {what} after {self.spec.retries} retries"
                    )
                )
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if ident is None:  # a match we cannot read must not silently shrink the cohort
                    self._abandon()
                    raise PacsError(f"the PACS at {self.where} sent an unreadable {what} response")
                found.append(ident)
            elif code != 0x0000:
                self._abandon()
                raise PacsError(
                    f"the PACS at {self.where} refused the {what} (C-FIND status 0x{code:04X}); "
                    "check that it allows queries from our AE title"
                )
        return found

    def studies(self, filters: dict[str, str]) -> list[str]:
        q = _identifier("STUDY", {"StudyInstanceUID": "", "NumberOfStudyRelatedSeries": "", **filters})
        found = self._search(q, "study search", None)
        self._expected.update({str(d.StudyInstanceUID): _count(d, "NumberOfStudyRelatedSeries") for d in found})
        return [str(d.StudyInstanceUID) for d in found]

    def series(self, study: str, filters: dict[str, str]) -> list[tuple[str, str]]:
        q = _identifier(
            "SERIES",
            {
                "StudyInstanceUID": study,
                "SeriesInstanceUID": "",
                "Modality": "",
                "NumberOfSeriesRelatedInstances": "",
                **filters,
            },
        )
        found = self._search(q, "series search", None if filters else self._expected.get(study))
        self._expected.update({str(d.SeriesInstanceUID): _count(d, "NumberOfSeriesRelatedInstances") for d in found})
        return [(str(d.SeriesInstanceUID), str(d.get("Modality", ""))) for d in found]

    def instances(self, study: str, series: str) -> list[InstanceRef]:
        q = _identifier(
            "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": "", "SOPClassUID": ""}
        )
        found = self._search(q, "instance search", self._expected.get(series))
        return [InstanceRef(study, series, str(d.SOPInstanceUID), str(d.get("SOPClassUID", ""))) for d in found]

    def _search(self, identifier: Dataset, what: str, expected: int | None) -> list[Dataset]:
        """A search, each match once, whose answer count must reach what the level above announced.

        Short answers were seen under load before ``_leave_responses_to_requests`` (a dropped response). Asking
        again costs one search, and a pull that silently drops an instance would be worse than one that fails;
        a short answer and a lost association are retried by the same one loop.
        """
        level = str(identifier.QueryRetrieveLevel)
        key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]

        def once() -> list[Dataset]:
            found = list({str(d.get(key, "")): d for d in self._find(identifier, what)}.values())
            if expected is not None and len(found) < expected:
                log.debug("a %s came back with %d of %d announced matches; asking again", what, len(found), expected)
                raise Retriable(
                    PacsError(
                        f"the PACS at {self.where} answered the {what} with {len(found)} of the {expected} "
                        f"matches it announced, {self.spec.retries + 1} times; try again later"
                    )
                )
            return found

        return with_retries(once, self.spec.retries, what)

    # --- retrieval -----------------------------------------------------------------------------------

    def fetch(self, ref: InstanceRef) -> tuple[Dataset, str]:
        q = _identifier(
            "IMAGE", {"StudyInstanceUID": ref.study, "SeriesInstanceUID": ref.series, "SOPInstanceUID": ref.sop}
        )
        code = with_retries(lambda: self._get(q), self.spec.retries, "retrieve")
        for ds, ts, error in self._received:
            if ds is not None and str(ds.get("SOPInstanceUID", "")) == ref.sop:
                return ds, ts
            if error:
                raise InstanceFailedError(error)
        raise InstanceFailedError(f"C-GET returned no instance (status 0x{(code or 0):04X})")

    def _get(self, identifier: Dataset) -> int | None:
        """One C-GET; the instances arrive through :meth:`_on_store`. Returns the final status."""
        assoc = self._open()
        self._received = []
        code = None
        for status, _ in assoc.send_c_get(identifier, GET_MODEL, msg_id=self._next_message_id()):
            if not status:
                self.close()
                raise Retriable(
                    PacsUnreachableError(
                        f"the PACS at {self.where} stopped answering C-GET after {self.spec.retries} retries"
                    )
                )
            code = int(status.Status)
        return code


@dataclass(frozen=True)
class Peer:
    """A DIMSE peer named as a PACS spec names it (``pacs.host``, ``pacs.port``, ``pacs.called_aet``,
    ``pacs.calling_aet``, ``pacs.timeout``, ``pacs.retries``), so a pull and a ``predict --send dimse://`` open
    their associations the same way. ``where`` is how every message names the server (no identifier)."""

    host: str
    port: int
    called_aet: str
    calling_aet: str = "MEDVISION"
    timeout: float = 30.0
    retries: int = 3

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port} (AE title {self.called_aet})"

    def ae(self) -> AE:
        """Our application entity, with the peer's timeout on every wait (no request hangs for ever)."""
        ae = AE(ae_title=self.calling_aet)
        for t in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, t, self.timeout)
        return ae


def associate(
    peer: Peer,
    ae: AE,
    current: Callable[[], int],
    *,
    ext_neg: Sequence[Any] = (),
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> Association:
    """One attempt at an association with ``peer`` for the contexts ``ae`` requests; the request that needs it is
    what :func:`~medvision.sources.pacs.retry.with_retries` tries again, so no association is retried by two loops.

    ``current()`` is the Message ID of the request in flight (see :func:`_leave_responses_to_requests`).

    Raises:
        PacsAuthError: the peer rejected the association (our AE title, or its own, is wrong): not worth retrying.
        Retriable: no answer (the final error names the server and what to check).
    """
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.called_aet, ext_neg=list(ext_neg), evt_handlers=list(handlers)
    )
    if assoc.is_established:
        # A DIMSE message goes out as several small PDUs; with Nagle on, each waits for the peer's
        # delayed ACK (about 40 ms), which would cap a pull at a few instances per second.
        raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if raw is not None:  # always set once the association is established
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _leave_responses_to_requests(assoc, current)
        return assoc
    if assoc.is_rejected:
        raise PacsAuthError(
            f"the PACS at {peer.where} rejected the association: it must list our AE "
            f"title {peer.calling_aet!r} (pacs.calling_aet) and this host as a "
            "known modality, and pacs.called_aet must be its AE title"
        )
    raise Retriable(
        PacsUnreachableError(
            f"cannot reach the PACS at {peer.where} after {peer.retries} retries; "
            "check pacs.host, pacs.port and that the server runs"
        )
    )


def _leave_responses_to_requests(assoc: Association, current: Callable[[], int]) -> None:
    """Hand each DIMSE response to the request that asked for it, and to no one else.

    pynetdicom pauses the association's reactor thread before each request with a check-then-act on a flag, and
    the thread can slip through between the two: it then takes the first response of the request just sent and
    drops it ("Received unexpected C-FIND service message", pydicom/pynetdicom#875). Under CPU load that silently
    cut one match from a search every few hundred searches, or left the request waiting out its timeout. We only
    ever act as the requestor (C-FIND, and C-GET whose C-STORE sub-operations its own response loop serves), so
    nothing on this association is for the reactor to serve: its non-blocking polls now see an empty queue.

    And pynetdicom's response loops take whatever response comes next, whatever request it answers. A late answer
    to an earlier request (one abandoned after a timeout) would become the first answer to the next one, shifting
    every answer after it; so a response whose Message ID Being Responded To is not ``current()`` is dropped.
    """
    take = assoc.dimse.get_msg

    def get_msg(block: bool = False):
        if not block and threading.current_thread() is assoc:
            return None, None
        while True:
            context_id, msg = take(block)
            answers = getattr(msg, "MessageIDBeingRespondedTo", None)  # None on requests (C-STORE sub-operations)
            if answers is None or answers == current():
                return context_id, msg
            log.debug("dropped a DIMSE response to request %s while request %s is in flight", answers, current())

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


def _count(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds
