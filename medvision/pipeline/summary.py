"""The table a pipeline ends with, and where to look next."""

from __future__ import annotations

import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medvision.pipeline.kinds import stage_kind
from medvision.pipeline.run import PipelineResult
from medvision.tracking.uri import redact_uri

__all__ = ["print_summary"]


def print_summary(result: PipelineResult, console: Console | None = None) -> None:
    """Print one row per stage (member): status, MLflow run, headline result; then the report and ``mlflow ui``.

    Sized for an 80-column terminal: the fixed columns are short and never wrap, the result column takes the
    rest and wraps between metrics (``val/auroc=0.73,`` stays whole); every cell is user text and escaped.
    """
    console = console or Console()
    table = Table(title="Pipeline summary", box=box.SIMPLE_HEAD)
    table.add_column("stage", overflow="fold", max_width=14)
    table.add_column("member", overflow="fold", max_width=14)
    table.add_column("status", no_wrap=True)
    table.add_column("s", no_wrap=True, justify="right")
    table.add_column("run", no_wrap=True)
    table.add_column("result", overflow="fold", ratio=1, min_width=28)
    for row in result.rows:
        outcome = str(row["result"])
        if stage_kind(row["kind"]).opens_file:
            outcome = Path(outcome).name  # the full path is printed below the table
        table.add_row(
            escape(row["stage"]),
            escape(str(row["member"])),
            row["status"],
            f"{row['seconds']:.0f}",
            row["run_id"][:8],
            escape(outcome),
        )
    console.print(table)
    for kind, path in result.files:
        console.print(f"{kind}: {escape(str(path))}", soft_wrap=True)  # soft: paths copy whole
    console.print(f"MLflow parent run: {result.parent_run_id}")
    if result.tracking_uri.startswith("sqlite:"):
        # the mlflow next to this Python, by absolute path: the hint must work from the user's own folder
        mlflow = Path(sys.executable).parent / "mlflow"
        command = str(mlflow) if mlflow.exists() else "mlflow"
        console.print(
            f"browse the runs: {command} ui --backend-store-uri {redact_uri(result.tracking_uri)}",
            markup=False,
            soft_wrap=True,
        )
    else:
        console.print(f"browse the runs at {redact_uri(result.tracking_uri)}", soft_wrap=True)
