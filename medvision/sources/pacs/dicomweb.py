"""DICOMweb transport: QIDO-RS searches and WADO-RS instance retrieval with ``dicomweb-client``.

Retries: refused connections, timeouts and 408/429/5xx answers are tried again by the pull's one retry
helper (:mod:`medvision.sources.pacs.retry`); urllib3's and dicomweb-client's own retries are off, so each
request is attempted ``pacs.retries + 1`` times at most. Instances are asked for in the transfer syntax the
PACS stores (``transfer-syntax=*``), so nothing is transcoded on the way and a DICOMweb pull stores the same
bytes as a DIMSE pull.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from medvision.cohort.spec import DicomWebPacs
from medvision.sources.pacs.credentials import Credentials
from medvision.sources.pacs.errors import InstanceFailedError, PacsAuthError, PacsError, PacsUnreachableError
from medvision.sources.pacs.retry import Retriable, with_retries
from medvision.sources.pacs.source import InstanceRef

__all__ = ["DicomWebSource"]

T = TypeVar("T")
_PAGE = 1000
_RETRIABLE = (
    HTTPStatus.REQUEST_TIMEOUT,  # 408
    HTTPStatus.TOO_MANY_REQUESTS,  # 429
    HTTPStatus.INTERNAL_SERVER_ERROR,  # 500
    HTTPStatus.BAD_GATEWAY,  # 502
    HTTPStatus.SERVICE_UNAVAILABLE,  # 503
    HTTPStatus.GATEWAY_TIMEOUT,  # 504
)
_UID, _SERIES, _SOP, _CLASS, _MODALITY = "0020000D", "0020000E", "00080018", "00080016", "00080060"


def _value(item: dict, tag: str) -> str:
    vals = item.get(tag, {}).get("Value") or [""]
    return str(vals[0])


class DicomWebSource:
    def __init__(self, spec: DicomWebPacs, credentials: Credentials) -> None:
        parts = urlsplit(spec.url)
        #: How messages name the server: scheme, host, port and path; never a query string.
        self.where = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self.retries = spec.retries
        session = requests.Session()  # requests' default adapter: no retries of its own
        session.verify = str(spec.ca_bundle) if spec.ca_bundle else spec.verify_tls
        if credentials.kind == "basic":
            session.auth = (credentials.user or "", credentials.secret or "")
        elif credentials.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {credentials.secret}"
        self._session = session
        self.client = DICOMwebClient(spec.url, session=session, timeout=spec.timeout)
        self.client.set_http_retry_params(retry=False)  # retried by with_retries, once

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run a request, retrying what may pass; turn the library's exceptions (whose text quotes the URL) into
        ours."""
        return with_retries(lambda: self._once(fn, what), self.retries, what)

    def _once(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except requests.exceptions.SSLError:
            raise PacsError(
                f"TLS certificate verification failed for {self.where}; give the hospital's CA "
                "certificate as pacs.ca_bundle (keep pacs.verify_tls on)"
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            raise Retriable(
                PacsUnreachableError(
                    f"cannot reach the PACS at {self.where} ({what}: no connection or no answer "
                    f"after {self.retries} retries); check pacs.url and that the server runs "
                    "and is reachable from this machine"
                )
            ) from None
        except requests.exceptions.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status in (401, 403):
                raise PacsAuthError(
                    f"the PACS at {self.where} refused our credentials (HTTP {status}); check "
                    "$MEDVISION_PACS_USER/$MEDVISION_PACS_PASSWORD, $MEDVISION_PACS_TOKEN or "
                    "pacs.credentials_file, and that the account may search and retrieve"
                ) from None
            if status in _RETRIABLE:
                raise Retriable(_HTTPStatus(status)) from None
            raise _HTTPStatus(status) from None

    def studies(self, filters: dict[str, str]) -> list[str]:
        found = self._search(
            lambda lim, off: self.client.search_for_studies(
                search_filters=filters, fields=["StudyInstanceUID"], limit=lim, offset=off
            ),
            _UID,
            "study search",
        )
        return [_value(r, _UID) for r in found]

    def series(self, study: str, filters: dict[str, str]) -> list[tuple[str, str]]:
        found = self._search(
            lambda lim, off: self.client.search_for_series(
                study, search_filters=filters, fields=["Modality"], limit=lim, offset=off
            ),
            _SERIES,
            "series search",
        )
        return [(_value(r, _SERIES), _value(r, _MODALITY)) for r in found]

    def instances(self, study: str, series: str) -> list[InstanceRef]:
        found = self._search(
            lambda lim, off: self.client.search_for_instances(
                study, series, fields=["SOPClassUID"], limit=lim, offset=off
            ),
            _SOP,
            "instance search",
        )
        return [InstanceRef(study, series, _value(r, _SOP), _value(r, _CLASS)) for r in found]

    def _search(self, fn: Callable[[int, int], list], key: str, what: str) -> list:
        """Page through a QIDO-RS search. Paged by hand: dicomweb-client's ``get_remaining`` loops forever
        on servers that ignore ``offset`` for some filters (Orthanc 1.10 does), so a page that brings no new
        UID also ends the search."""
        seen: dict[str, dict] = {}
        while True:
            page = self._page(fn, len(seen), what)
            fresh = {_value(r, key): r for r in page if _value(r, key) not in seen}
            seen.update(fresh)
            if len(page) < _PAGE or not fresh:
                return list(seen.values())

    def _page(self, fn: Callable[[int, int], list], offset: int, what: str) -> list:
        try:
            return self._call(lambda: fn(_PAGE, offset), what)
        except _HTTPStatus as e:
            if e.status == 404:  # some servers answer a search with no match by 404
                return []
            raise PacsError(
                f"the PACS at {self.where} answered the {what} with HTTP {e.status}"
                f"{' after retries' if e.status in _RETRIABLE else ''}; check pacs.url "
                "(the DICOMweb base, e.g. https://host/dicom-web) and the server's log"
            ) from None

    def fetch(self, ref: InstanceRef) -> tuple[Dataset, str]:
        try:
            ds = self._call(
                lambda: self.client.retrieve_instance(
                    ref.study, ref.series, ref.sop, media_types=(("application/dicom", "*"),)
                ),
                "retrieve",
            )
        except _HTTPStatus as e:
            raise InstanceFailedError(f"retrieve failed (HTTP {e.status})") from None
        except PacsError:
            raise
        except Exception as e:  # noqa: BLE001 - a payload that does not parse fails one instance only
            raise InstanceFailedError(f"not a readable DICOM instance ({type(e).__name__})") from None
        return ds, str(ds.file_meta.TransferSyntaxUID)

    def close(self) -> None:
        self._session.close()


class _HTTPStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
