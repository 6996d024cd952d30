"""One error base, whose subclasses carry the exit code the command line ends with.

What a failure means is known where it is raised, not where it is caught: a config key that does not exist is the
user's to fix (exit code 2), a full disk is a failure the message explains (exit code 1), and anything that is not
a :class:`MedvisionError` is a bug in medvision (exit code 1, with the traceback kept for the bug report). The
command line (``medvision.cli._errors``) reads ``exit_code`` and prints the message as one line; it no longer
guesses from the exception's type, so a ``ValueError`` from deep inside pandas is never reported as "your input is
wrong".

Example:
    >>> class NoSuchStudy(InputError):
    ...     '''A study the user named does not exist.'''
    >>> NoSuchStudy("study 'x' not found; see `medvision studies`").exit_code
    2
    >>> isinstance(NoSuchStudy("..."), ValueError)  # input errors stay ValueErrors for library callers
    True
"""

from __future__ import annotations

__all__ = ["InputError", "MedvisionError"]


class MedvisionError(Exception):
    """Base of every error medvision raises on purpose; its message says what went wrong and what to do.

    Attributes:
        exit_code: what ``medvision`` exits with when this error ends a command. 1: the work failed for a reason
            the message explains (a full disk, an unreachable PACS); subclasses for the user's input use 2.
    """

    exit_code: int = 1


class InputError(MedvisionError, ValueError):
    """The user's input (a config, a cohort spec, a path, an option) is wrong; the message names it and the fix.

    Exit code 2. Also a ``ValueError``, so library callers that caught ``ValueError`` before keep working.
    """

    exit_code: int = 2
