"""``medvision evaluate`` and ``medvision report``: trained runs → metrics → a report a clinician can read."""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded
from medvision.evaluation.settings import EvaluationSettings

_DEFAULTS = EvaluationSettings()  # the evaluate defaults, declared once in the evaluation layer


def evaluate_command(
    runs: list[str] = typer.Argument(..., help="MLflow run id(s) of fine-tuning runs; several are also ensembled."),
    sets: str = typer.Option(",".join(_DEFAULTS.sets), help="Comma-separated cohort sets to evaluate."),
    out: Path = typer.Option(Path("evaluation"), help="Folder for predictions/, metrics.json and saliency/."),
    cohort: Path | None = typer.Option(None, help="Cohort folder; default: the one the first run trained on."),
    subgroups: str = typer.Option(",".join(_DEFAULTS.subgroups), help="Subgroup columns; a*b adds an intersection."),
    bootstrap: int = typer.Option(_DEFAULTS.bootstrap, help="Patient-level bootstrap resamples for the CIs."),
    min_patients: int = typer.Option(
        _DEFAULTS.min_patients, help="Groups with fewer patients are flagged and get no metric."
    ),
    positive_class: str | None = typer.Option(None, help="Class for sensitivity/specificity and subgroup AUROC."),
    saliency: int = typer.Option(_DEFAULTS.saliency, help="Saliency cases per category (0: none)."),
    outlier_sets: str = typer.Option(
        ",".join(_DEFAULTS.outlier_sets), help="Comma-separated sets screened as out-of-distribution."
    ),
) -> None:
    """Predict with RUNS on the cohort's evaluation sets; write and log predictions and metrics.json."""

    def body() -> None:
        from mlflow import MlflowClient

        from medvision.engine.config import TrackingConfig, resolve_tracking_uri
        from medvision.evaluation.stage import EvaluationRequest, evaluate_models
        from medvision.tracking.uri import redact_uri

        uri = resolve_tracking_uri(TrackingConfig())
        client = MlflowClient(uri)
        models = []
        for run_id in runs:
            try:
                run = client.get_run(run_id)
            except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run
                raise ValueError(
                    f"run {run_id!r} not found in {redact_uri(uri)} ({type(e).__name__}); pass the run id of a "
                    "fine-tuning run (see `mlflow ui`), or set MLFLOW_TRACKING_URI"
                ) from None
            p = run.data.params
            name = (run.info.run_name or "model").split("/")
            models.append(
                {
                    "run_id": run_id,
                    "stage": name[0],
                    "member": name[-1] if len(name) > 1 else run_id[:8],
                    "backbone": p.get("backbone.name"),
                    "weights": p.get("backbone.weights"),
                    "head": p.get("head.name"),
                    "label_fraction": float(p.get("data.label_fraction", 1.0)),
                    "seed": int(p.get("seed", 0)),
                }
            )
        cohort_dir = cohort or Path(client.get_run(runs[0]).data.params.get("data.cohort_dir", ""))
        if not (cohort_dir / "cohort.json").exists():
            raise ValueError(f"cohort folder {cohort_dir} not found; pass --cohort DIR (a built cohort)")
        import json

        built = json.loads((cohort_dir / "cohort.json").read_text())["manifest_sha256"]
        for run_id in runs:
            trained = client.get_run(run_id).data.tags.get("cohort.manifest_sha256")
            if trained and trained != built:
                raise ValueError(
                    f"run {run_id} was trained on cohort manifest {trained[:12]} but {cohort_dir} holds "
                    f"manifest {built[:12]} (rebuilt or another cohort): its test set may overlap the "
                    "training patients. Evaluate on the cohort the run was trained on"
                )
        request = EvaluationRequest(
            cohort_dir=cohort_dir,
            models=models,
            sets=[s for s in sets.split(",") if s],
            subgroups=[s for s in subgroups.split(",") if s],
            bootstrap=bootstrap,
            min_patients=min_patients,
            ensemble=len(models) > 1,
            saliency=saliency,
            tracking_uri=uri,
            positive_class=positive_class,
            outlier_sets=[s for s in outlier_sets.split(",") if s],
        )
        headline = evaluate_models(request, out)
        for run_id in runs:
            client.log_artifacts(run_id, str(out), "evaluation")
        for key, value in sorted(headline.items()):
            typer.echo(f"{key:50s} {value:.3f}")
        typer.echo(f"wrote {out / 'metrics.json'}; render it with: medvision report {out}")

    run_guarded(body)


def report_command(
    evaluation: Path = typer.Argument(..., help="An evaluation folder (from `medvision evaluate` or a pipeline)."),
    out: Path = typer.Option(Path("reports/generated/report.html"), help="The HTML file to write."),
    title: str = typer.Option("medvision evaluation report", help="Report title."),
) -> None:
    """Render the self-contained HTML report of an evaluation (opens offline in any browser)."""

    def body() -> None:
        from medvision.report.build import report_from_evaluation

        if not (evaluation / "metrics.json").exists():
            raise ValueError(f"{evaluation} holds no metrics.json; run `medvision evaluate RUN --out {evaluation}`")
        path = report_from_evaluation(evaluation, out, title=title)
        typer.echo(f"report: {path.resolve()}")

    run_guarded(body)
