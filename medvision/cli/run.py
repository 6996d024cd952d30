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
    """Validate PIPELINE (every stage, every sweep member) and run it; finished identical stages are reused."""

    def body() -> None:
        from medvision.pipeline import load_pipeline, print_summary, run_pipeline
        from medvision.pipeline.run import PipelineInterrupted
        from medvision.pipeline.study import check_study

        spec = load_pipeline(pipeline, set_ or [])
        if check:
            typer.echo(f"{pipeline}: valid ({len(spec.stages)} stages: {', '.join(spec.stages)})")
            for note in check_study(spec, str(pipeline)):
                typer.echo(f"  {note}")
            return
        try:
            result = run_pipeline(spec, echo=typer.echo)
        except PipelineInterrupted as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(e.exit_code) from None
        print_summary(result)

    run_guarded(body)
