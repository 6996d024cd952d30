"""One place that turns the library's errors into messages and exit codes."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

import typer

T = TypeVar("T")


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body; user errors exit 2 with their message, failures exit 1."""
    from pydantic import ValidationError

    from medvision._atomic import DiskFullError
    from medvision.cohort.build import CohortBuildError
    from medvision.cohort.spec import SpecError
    from medvision.sources.pacs.errors import PacsError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download floods logs
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Lightning prints through its own handler; propagating too would print each line twice.
    logging.getLogger("lightning.pytorch").propagate = False
    # Store migrations, and MLflow's "Validating input example against model signature" once per logged model.
    for noisy in ("mlflow.store.db.utils", "alembic", "mlflow.pyfunc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_third_party_advice()
    try:
        return fn()
    except (SpecError, ValidationError, FileNotFoundError, FileExistsError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except PacsError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except (CohortBuildError, DiskFullError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


#: Advice meant for the authors of the libraries we call, not for a medvision user (each has no action for them).
_ADVICE = (
    r".*LeafSpec",  # Lightning, on torch's pytree API
    r".*An input example was not provided",  # MLflow, when a model has no input shape to give an example of
    r".*Add type hints to the `predict` method",  # MLflow on PythonModel subclasses
    r".*Passing a Python object as python_model",  # MLflow on pickled models (we log ours from code)
    r".*cloudpickle",
)


def _quiet_third_party_advice() -> None:
    """Keep third-party deprecation notices and advice out of the user's terminal; ours still show."""
    for pattern in _ADVICE:
        warnings.filterwarnings("ignore", message=pattern)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!medvision)")
