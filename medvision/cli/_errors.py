"""One place that turns the library's errors into messages and exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

T = TypeVar("T")


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body; user errors exit 2 with their message, failures exit 1."""
    from pydantic import ValidationError

    from medvision.cohort.build import CohortBuildError
    from medvision.cohort.pacs.errors import PacsError
    from medvision.cohort.spec import SpecError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download floods logs
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Lightning prints through its own handler; propagating too would print each line twice.
    logging.getLogger("lightning.pytorch").propagate = False
    for noisy in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return fn()
    except (SpecError, ValidationError, FileNotFoundError, FileExistsError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except PacsError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except CohortBuildError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
