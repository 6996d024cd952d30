"""What can go wrong talking to a PACS, as errors whose messages say what to do.

Messages name the server (URL without its query string, or host:port) and never a query value, a
credential, or a library's own exception text (which may quote a request URL holding query values).
"""

from __future__ import annotations

from medvision.errors import MedvisionError

__all__ = ["InstanceFailedError", "PacsAuthError", "PacsError", "PacsNoMatchError", "PacsUnreachableError"]


class PacsError(MedvisionError, RuntimeError):
    """A pull cannot go on; the message says why and what to check."""


class PacsUnreachableError(PacsError):
    """No connection to the PACS (after the configured retries)."""


class PacsAuthError(PacsError):
    """The PACS refused our credentials or our AE title."""


class PacsNoMatchError(PacsError):
    """The query and request list match no instance on the PACS."""


class InstanceFailedError(Exception):
    """One instance could not be retrieved or read; it is quarantined and the pull goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
