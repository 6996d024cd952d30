"""The contract both PACS transports meet: search studies -> series -> instances, then fetch one instance.

Filters are DICOM keyword -> value dicts; values are passed to the server and never logged. A source
raises :class:`~medvision.sources.pacs.errors.PacsError` subclasses for whole-pull failures and
:class:`~medvision.sources.pacs.errors.InstanceFailedError` for one instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset

__all__ = ["InstanceRef", "Source"]


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str
    sop_class: str = ""


class Source(Protocol):
    """One connection (an HTTP session or a DIMSE association); each pull thread opens its own."""

    def studies(self, filters: dict[str, str]) -> list[str]:
        """Study Instance UIDs matching study-level ``filters``."""
        ...

    def series(self, study: str, filters: dict[str, str]) -> list[tuple[str, str]]:
        """(Series Instance UID, Modality) of the study's series matching series-level ``filters``."""
        ...

    def instances(self, study: str, series: str) -> list[InstanceRef]:
        """Every instance of a series."""
        ...

    def fetch(self, ref: InstanceRef) -> tuple[Dataset, str]:
        """The instance and the transfer syntax the PACS sent it in (its stored one when offered)."""
        ...

    def close(self) -> None: ...
