"""Keeping identifiers out of what libraries log: every log record and warning passes through one scrubber.

pydicom, Pillow, Lightning and MLflow log and warn on their own, and quote what they were handed: pydicom's
"End of file reached before delimiter ... in file /data/A002304/axial/19001231-077.dcm" copies a folder named after
a patient into the log even when the cohort withholds paths. Filters on named loggers miss child loggers and
handlers added later, so the scrubber sits where every record is made (the log record factory) and where every
warning is shown (``warnings.showwarning``): whatever logger or handler a library uses, the text is already clean.
HTTP libraries quote request URLs, in which a patient ID or a name is percent-encoded (``DOE%5EJANE``): text with
percent escapes is decoded before it is scrubbed, so an encoded identifier is found like a plain one.

Worker processes: a forked worker inherits the parent's scrubbing; a spawned or forkserver one starts without
it, so process pools pass :func:`scrub_worker` as (or call it from) their initializer.

Usage (the cohort build installs it around indexing and decoding; a run can install it around a whole stage)::

    scrubber = Scrubber(roots=[images_dir], withhold_paths=True)
    with scrubbed_output(scrubber):
        ...                                   # library logs and warnings come out scrubbed
        scrubber.add_identifiers({"a002304"})  # identifiers learnt on the way apply from then on
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import unquote

from medvision.cohort.identifiers import MIN_NAME_PART, TokenSet

__all__ = ["PATH_WITHHELD", "Scrubber", "scrub_worker", "scrubbed_output"]

#: What a withheld path reads as in a message.
PATH_WITHHELD = "<path withheld>"

#: A path under a root runs until whitespace, a quote or a closing bracket.
_PATH_TAIL = r"""[^\s'"()\[\]{}<>,;]*"""
#: A percent escape (``%5E``), as URLs carry characters outside their alphabet.
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


class Scrubber:
    """Text in, text out: known identifier tokens become ``[redacted]``; paths under the given roots become
    ``<images>/relative/path`` or, with ``withhold_paths``, ``<path withheld>``.

    Picklable (worker processes get a copy) and cheap to call on every log record.

    Args:
        identifiers: identifier tokens (patient IDs, name parts, accession numbers, UIDs, birth dates).
        roots: folders whose paths must not appear verbatim (the images folder; the labels CSV's folder).
        withhold_paths: replace every path under a root, not only the root (``record_paths: false``).
    """

    def __init__(
        self, identifiers: Iterable[str] = (), roots: Iterable[str | Path] = (), withhold_paths: bool = False
    ) -> None:
        self.withhold_paths = withhold_paths
        self._identifiers = TokenSet(min_length=MIN_NAME_PART)
        self._roots = sorted({str(Path(r)) for r in roots} | {str(Path(r).resolve()) for r in roots}, key=len)[::-1]
        self._roots_re = (
            re.compile(
                "(" + "|".join(re.escape(r) for r in self._roots) + r")(?![^/\s'\"()\[\]{}<>,;])(/" + _PATH_TAIL + ")?"
            )
            if self._roots
            else None
        )
        self.add_identifiers(identifiers)

    def add_identifiers(self, identifiers: Iterable[str]) -> None:
        """Scrub these too from now on (indexing learns identifiers as it reads headers).

        A value with spaces is also known with ``+`` between its words, as a URL's query string writes it.
        """
        values = [str(v) for v in identifiers]
        self._identifiers.update([*values, *(v.replace(" ", "+") for v in values if " " in v)])

    def __call__(self, text: str) -> str:
        if (self._roots_re is not None or self._identifiers) and _ESCAPE.search(text):
            text = _unescaped(text)
        if self._roots_re is not None:
            text = self._roots_re.sub(self._path, text)
        if self._identifiers:
            text = self._identifiers.sub("[redacted]", text)
        return text

    def _path(self, match: re.Match[str]) -> str:
        if self.withhold_paths:
            return PATH_WITHHELD
        return "<images>" + (match.group(2) or "")


def _unescaped(text: str) -> str:
    """Percent escapes decoded, repeatedly (a URL quoted twice), so identifiers show in their plain spelling."""
    for _ in range(3):
        plain = unquote(text, errors="replace")
        if plain == text:
            break
        text = plain
    return text


_LOCK = threading.Lock()


@contextmanager
def scrubbed_output(scrubber: Scrubber) -> Iterator[Scrubber]:
    """Scrub every log record made and every warning shown inside the block (all loggers, all handlers).

    Nested blocks compose (each scrubber applies). Records are rewritten when they are made: the message is
    formatted once, scrubbed, and stored without arguments; a traceback attached to the record is formatted and
    scrubbed too. Warnings keep their category and location; only their text is scrubbed.
    """
    with _LOCK:
        previous_factory = logging.getLogRecordFactory()
        previous_show = warnings.showwarning

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous_factory(*args, **kwargs)
        return _scrub_record(record, scrubber)

    factory.scrubs = True  # type: ignore[attr-defined]  # how scrub_worker tells a forked worker

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' own signature
        previous_show(scrubber(str(message)), category, filename, lineno, file, line)

    with _LOCK:
        logging.setLogRecordFactory(factory)
        warnings.showwarning = show
    try:
        yield scrubber
    finally:
        with _LOCK:
            if logging.getLogRecordFactory() is factory:
                logging.setLogRecordFactory(previous_factory)
            if warnings.showwarning is show:
                warnings.showwarning = previous_show


_WORKER_SCRUB = ExitStack()


def scrub_worker(scrubber: Scrubber | None) -> None:
    """Install ``scrubber`` for the rest of a pool worker's life, unless the worker already scrubs (a forked worker
    inherits its parent's record factory). Use as, or call from, a ``ProcessPoolExecutor`` initializer."""
    if scrubber is None or multiprocessing.parent_process() is None:
        return  # not a worker: the caller's own scrubbed_output block applies
    if not getattr(logging.getLogRecordFactory(), "scrubs", False):
        _WORKER_SCRUB.enter_context(scrubbed_output(scrubber))


def _scrub_record(record: logging.LogRecord, scrubber: Scrubber) -> logging.LogRecord:
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string must not hide the scrubbing; keep the template only
        text = str(record.msg)
    record.msg, record.args = scrubber(text), ()
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = scrubber(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None  # formatters would format the raw traceback again
    if record.stack_info:
        record.stack_info = scrubber(record.stack_info)
    return record
