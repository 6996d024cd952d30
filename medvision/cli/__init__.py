"""The ``medvision`` command: a thin face over the Python API.

Exit codes: 0 success; 2 the input (config, spec, paths) is wrong - said before any work starts;
1 the work failed for a reason the message gives, or a bug in medvision (the message says so and where its
traceback is); 143 stopped by SIGTERM (a re-run resumes). Each comes from the error's class
(:mod:`medvision.errors`). Heavy imports happen inside commands so ``--help`` stays instant.
"""

from __future__ import annotations

import typer

from medvision.cli._errors import run_guarded
from medvision.cli.cohort import app as cohort_app
from medvision.cli.evaluate import evaluate_command, report_command
from medvision.cli.export import export_command
from medvision.cli.finetune import finetune_command
from medvision.cli.predict import predict_command
from medvision.cli.pretrain import pretrain_command
from medvision.cli.run import run_command
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
app.command("finetune")(finetune_command)
app.command("pretrain")(pretrain_command)
app.command("run")(run_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)
app.command("export")(export_command)
app.command("predict")(predict_command)


@app.command("demo")
def demo(
    out: str = typer.Option("demo-output", help="Folder for the demo's cohort, runs and report."),
    set_: list[str] = typer.Option(None, "--set", help="Override a key of pipelines/demo.yaml (params.patients=80)."),
) -> None:
    """Run pipelines/demo.yaml end to end: synthetic DICOM cohort → MICLe → HOD → evaluation → report (CPU, offline)."""
    from medvision.demo import run_demo

    run_guarded(lambda: run_demo(out, set_ or []))


def main() -> None:
    app()
