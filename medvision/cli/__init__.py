"""The ``medvision`` command: a thin face over the Python API.

Exit codes: 0 success, 1 the work failed, 2 the input (config, spec, paths) is wrong - said
before any work starts. Heavy imports happen inside commands so ``--help`` stays instant.
"""

from __future__ import annotations

import typer

from medvision.cli._errors import run_guarded
from medvision.cli.cohort import app as cohort_app
from medvision.cli.weights import app as weights_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="medvision",
    help="Turn pretrained vision backbones into medical-imaging models you can audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(cohort_app, name="cohort")
app.add_typer(weights_app, name="weights")


@app.command("demo")
def demo(
    out: str = typer.Option("demo-output", help="Folder for the demo's cohort, runs and report."),
    patients: int = typer.Option(120, help="Synthetic patients to generate."),
    seed: int = typer.Option(0, help="Seed of the synthetic cohort."),
) -> None:
    """Run the main job end to end on a synthetic DICOM cohort (CPU, SQLite MLflow, no network)."""
    from medvision.demo import run_demo

    run_guarded(lambda: run_demo(out, patients=patients, seed=seed))


def main() -> None:
    app()
