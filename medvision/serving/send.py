"""Results back to the PACS: the DICOM reports of ``predict`` stored by STOW-RS (DICOMweb).

Why STOW-RS through dicomweb-client: the same client and credentials (``$MEDVISION_PACS_USER`` /
``$MEDVISION_PACS_PASSWORD`` or ``$MEDVISION_PACS_TOKEN``) as a DICOMweb pull, so a site that pulls a cohort can
send its results back with nothing new to configure. Messages name the server by scheme, host and path only (never
a query string or credentials), and never an identifier from a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from medvision.errors import InputError
from medvision.sources.pacs.credentials import resolve_credentials
from medvision.sources.pacs.errors import PacsAuthError, PacsUnreachableError

__all__ = ["send_reports"]


def send_reports(paths: Sequence[Path], url: str, *, auth: str = "none", timeout: float = 30.0) -> int:
    """Store every file of ``paths`` to the DICOMweb server at ``url`` (its base URL) in one STOW-RS request.

    Returns:
        The number of instances the server stored.

    Raises:
        InputError: ``url`` is not an http(s) base URL, or holds credentials.
        PacsAuthError: the server refused the credentials (401/403), or none were given for ``auth``.
        PacsUnreachableError: no answer, or an error status.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" in parts.netloc:
        raise InputError(
            f"--send {parts.scheme}://{parts.hostname or ''}{parts.path}: give the DICOMweb base URL (http:// or "
            "https://) without credentials; set $MEDVISION_PACS_USER and $MEDVISION_PACS_PASSWORD instead"
        )
    where = f"{parts.scheme}://{parts.netloc}{parts.path}"
    credentials = resolve_credentials(auth, None)
    session = requests.Session()
    if credentials.kind == "basic":
        session.auth = (credentials.user or "", credentials.secret or "")
    elif credentials.kind == "bearer":
        session.headers["Authorization"] = f"Bearer {credentials.secret}"
    client = DICOMwebClient(url, session=session, timeout=timeout)
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
