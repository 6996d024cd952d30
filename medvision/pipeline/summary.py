"""The table a pipeline ends with, and where to look next."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medvision.pipeline.run import PipelineResult

__all__ = ["print_summary"]


def print_summary(result: PipelineResult, console: Console | None = None) -> None:
    """Print one row per stage (member): status, MLflow run, headline result; then the report and ``mlflow ui``."""
    console = console or Console()
    table = Table(title="Pipeline summary")
    for col in ("stage", "kind", "member", "status", "seconds", "MLflow run", "result"):
        table.add_column(col)
    for row in result.rows:
        table.add_row(
            row["stage"],
            row["kind"],
            str(row["member"]),
            row["status"],
            f"{row['seconds']:.0f}",
            row["run_id"][:12],
            str(row["result"]),
        )
    console.print(table)
    if result.report_path is not None:
        console.print(f"report: {result.report_path}")
    console.print(f"MLflow parent run: {result.parent_run_id}")
    if result.tracking_uri.startswith("sqlite:"):
        # the mlflow next to this Python, by absolute path: the hint must work from the user's own folder
        mlflow = Path(sys.executable).parent / "mlflow"
        command = str(mlflow) if mlflow.exists() else "mlflow"
        console.print(f"browse the runs: {command} ui --backend-store-uri {result.tracking_uri}", markup=False)
    else:
        console.print(f"browse the runs at {result.tracking_uri}")
