"""The one retry policy of a PACS pull: a failure worth another attempt is tried again, with exponential back-off,
``pacs.retries`` times, and then the error it names is raised.

Why one helper: retries had been written four ways (urllib3's adapter, dicomweb-client's own, three hand loops in
the DIMSE transport, and a retrying completeness check over a retrying search, which multiplied the attempts). A
request is now attempted by exactly one loop, and each transport only says which failures are worth another try
and what to tell the user when none is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["BACKOFF_SECONDS", "Retriable", "with_retries"]

log = logging.getLogger("medvision.sources.pacs")

T = TypeVar("T")

#: The wait before the first retry; each further retry waits twice as long as the one before.
BACKOFF_SECONDS = 0.25


class Retriable(Exception):
    """A failure worth another attempt (a refused or lost connection, a timeout, an overloaded server, an
    incomplete answer). ``final`` is what to raise when no attempt is left: it says what failed and what to check.
    """

    def __init__(self, final: Exception) -> None:
        super().__init__(str(final))
        self.final = final


def with_retries(attempt: Callable[[], T], retries: int, what: str = "request") -> T:
    """``attempt()``, tried again up to ``retries`` times while it raises :class:`Retriable`.

    Any other exception passes through at once (wrong credentials do not get better by asking again).

    Args:
        attempt: one try; raises :class:`Retriable` for a failure worth another.
        retries: attempts after the first (``pacs.retries``).
        what: names the request in the debug log line of each retry.

    Raises:
        The last failure's ``final`` error, once ``retries`` retries have failed too.

    Example::

        >>> tries = []
        >>> def flaky():
        ...     tries.append(1)
        ...     if len(tries) < 3:
        ...         raise Retriable(TimeoutError("no answer"))
        ...     return "ok"
        >>> with_retries(flaky, retries=3), len(tries)
        ('ok', 3)
    """
    for n in range(retries + 1):
        try:
            return attempt()
        except Retriable as failure:
            if n == retries:
                raise failure.final from None
            log.debug("%s failed (attempt %d of %d); retrying", what, n + 1, retries + 1)
            time.sleep(BACKOFF_SECONDS * 2**n)
    raise AssertionError("unreachable")  # the loop returns or raises
