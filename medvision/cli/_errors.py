"""One place that turns the library's errors into messages and exit codes.

What an error means is decided where it is raised (:mod:`medvision.errors`): a :class:`MedvisionError` ends the
command with its one-line message and its ``exit_code`` (2: the user's input; 1: the work failed for a reason the
message gives; 143: stopped by SIGTERM). Anything else is a bug in medvision: exit code 1, one line that says so,
and the traceback written to a private file whose path that line gives (a ``ValueError`` from deep inside pandas
is not "your input is wrong").
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import click
import typer

from medvision._atomic import atomic_write_text
from medvision.errors import MedvisionError

T = TypeVar("T")

__all__ = ["run_guarded"]


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body: extensions loaded first, every error ended as one line with its exit code."""
    from medvision.plugins import load_all

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download floods logs
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Lightning prints through its own handler; propagating too would print each line twice.
    logging.getLogger("lightning.pytorch").propagate = False
    # Store migrations, MLflow's "Validating input example against model signature" once per logged model, and
    # highdicom's "copy attributes of module ..." a few dozen times per DICOM result.
    for noisy in ("mlflow.store.db.utils", "alembic", "mlflow.pyfunc", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_third_party_advice()
    try:
        load_all()  # a broken plugin fails here, by name, before any work
        return fn()
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # the command's own exit, or typer's usage errors
    except MedvisionError as e:
        _fail(" ".join([str(e), *getattr(e, "__notes__", [])]), e.exit_code)
    except (FileNotFoundError, FileExistsError) as e:  # a path the user named: the message says which
        _fail(str(e), 2)
    except Exception as e:  # noqa: BLE001 - whatever is left is medvision's bug, and is reported as one
        _bug(e)


def _fail(message: str, code: int) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code) from None


def _bug(error: Exception) -> NoReturn:
    """Exit 1 with one line saying this is a bug, and where its traceback is (a private 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="medvision-bug-"))
    path = folder / "traceback.txt"
    atomic_write_text(path, "".join(traceback.format_exception(error)))
    first = (str(error).splitlines() or [""])[0]
    _fail(
        f"a bug in medvision ({type(error).__name__}: {first}). The traceback is in {path}; please attach it to an "
        "issue",
        1,
    )


#: Advice meant for the authors of the libraries we call, not for a medvision user (each has no action for them).
_ADVICE = (
    r".*LeafSpec",  # Lightning, on torch's pytree API
    r".*An input example was not provided",  # MLflow, when a model has no input shape to give an example of
    r".*Add type hints to the `predict` method",  # MLflow on PythonModel subclasses
    r".*Passing a Python object as python_model",  # MLflow on pickled models (we log ours from code)
    r".*cloudpickle",
    # Lightning, when a resumed run finds its own checkpoints (a different run in that folder is refused first)
    r".*Checkpoint directory .* exists and is not empty",
)


def _quiet_third_party_advice() -> None:
    """Keep third-party deprecation notices and advice out of the user's terminal; ours still show."""
    for pattern in _ADVICE:
        warnings.filterwarnings("ignore", message=pattern)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!medvision)")
