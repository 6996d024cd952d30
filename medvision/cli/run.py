"""``medvision run PIPELINE.yaml``: a whole study from one declarative file."""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded


def run_command(
    pipeline: Path = typer.Argument(..., help="A pipeline YAML (see pipelines/)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a key, e.g. stages.finetune.config.optim.epochs=2"),
    check: bool = typer.Option(False, "--check", help="Validate the pipeline and stop (nothing runs)."),
) -> None:
    """Validate PIPELINE (every stage, every sweep member) and run it; finished identical stages are reused.

    SIGTERM (a scheduler's time limit) stops it with exit code 143 and one line; a re-run resumes.
    """

    def body() -> None:
        from medvision.pipeline import load_pipeline, print_summary, run_pipeline
        from medvision.pipeline.study import check_study

        spec = load_pipeline(pipeline, set_ or [])
        if check:
            typer.echo(f"{pipeline}: valid ({len(spec.stages)} stages: {', '.join(spec.stages)})")
            for note in check_study(spec, str(pipeline)):
                typer.echo(f"  {note}")
            return
        print_summary(run_pipeline(spec, echo=typer.echo, source=str(pipeline)))

    run_guarded(body)
