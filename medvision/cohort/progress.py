"""Progress with counts for the long steps of a cohort build (indexing, decoding), on a terminal only.

A person watching a 50,000-file build wants to see it move; a log file or a CI transcript wants nothing (a redrawn
bar becomes thousands of lines there). So the bar exists only when standard error is a terminal, and it is
transient: once the step ends, the card says what happened.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["counting"]


@contextmanager
def counting(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; on a terminal it moves a bar "label ━━━━ n/total 0:00:03", elsewhere it does nothing."""
    if total <= 0 or not sys.stderr.isatty():
        yield _nothing
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


def _nothing(n: int = 1) -> None:
    """Not a terminal: nothing to draw."""
