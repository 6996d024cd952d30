"""``medvision evaluate`` and ``medvision report``: trained runs → metrics → a report a clinician can read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medvision.cli._errors import run_guarded
from medvision.config import parse_config
from medvision.errors import InputError
from medvision.evaluation.settings import EvaluationSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

_DEFAULTS = EvaluationSettings()  # the evaluate defaults, declared once in the evaluation layer


# The options of ``medvision evaluate``, declared once here so the command's signature reads as its list of inputs
# (with their defaults, the evaluation layer's).
_Runs = Annotated[
    list[str],
    typer.Argument(help="Fine-tuning runs (run id, runs:/RUN_ID or models:/NAME/VERSION); several are also ensembled."),
]
_Sets = Annotated[str, typer.Option(help="Comma-separated cohort sets to evaluate.")]
_Out = Annotated[Path, typer.Option(help="Folder for predictions/, metrics.json and saliency/.")]
_Cohort = Annotated[Path | None, typer.Option(help="Cohort folder; default: the one the first run trained on.")]
_Subgroups = Annotated[str, typer.Option(help="Subgroup columns; a*b adds an intersection.")]
_Bootstrap = Annotated[int, typer.Option(help="Patient-level bootstrap resamples for the CIs.")]
_MinPatients = Annotated[int, typer.Option(help="Groups with fewer patients are flagged and get no metric.")]
_MinPositives = Annotated[
    int, typer.Option(help="Groups where fewer patients have a positive case are flagged: no metric or CI.")
]
_MinNegatives = Annotated[
    int, typer.Option(help="Groups where fewer patients have a negative case are flagged: no metric or CI.")
]
_PositiveClass = Annotated[str | None, typer.Option(help="Class for sensitivity/specificity and subgroup AUROC.")]
_Saliency = Annotated[int, typer.Option(help="Saliency cases per category (0: none).")]
_OutlierSets = Annotated[str, typer.Option(help="Comma-separated sets screened as out-of-distribution.")]
_Coverage = Annotated[
    float, typer.Option(help="Coverage the conformal prediction sets promise (calibrated on validation).")
]
_Mondrian = Annotated[str, typer.Option(help="Mondrian taxonomies: class, subgroup columns, a*b (e.g. class,site).")]
_Alpha = Annotated[float, typer.Option(help="Promised bound on the risk of the answered cases.")]
_AbstainOn = Annotated[
    str, typer.Option(help="Risk the referral rule controls: error (among answered) or miss (positive class).")
]
_AbstainOod = Annotated[
    str | None,
    typer.Option(help="Also refer what this OOD score flags (hod, msp, energy, mahalanobis, knn, ...)."),
]
_Trust = Annotated[bool, typer.Option(help="Fit the conformal sets and the referral rule (--no-trust: skip both).")]
_Tta = Annotated[
    str,
    typer.Option(
        help="Test-time augmentation: none, auto, photo (flips) or radiograph (crops, never mirrored); "
        "probabilities averaged over the views.",
    ),
]
_SeedEnsemble = Annotated[
    bool, typer.Option(help="Also evaluate runs of one recipe that differ only in seed as one ensemble.")
]


def evaluate_command(
    runs: _Runs,
    sets: _Sets = ",".join(_DEFAULTS.sets),
    out: _Out = Path("evaluation"),
    cohort: _Cohort = None,
    subgroups: _Subgroups = ",".join(_DEFAULTS.subgroups),
    bootstrap: _Bootstrap = _DEFAULTS.bootstrap,
    min_patients: _MinPatients = _DEFAULTS.min_patients,
    min_positives: _MinPositives = _DEFAULTS.min_positives,
    min_negatives: _MinNegatives = _DEFAULTS.min_negatives,
    positive_class: _PositiveClass = None,
    saliency: _Saliency = _DEFAULTS.saliency,
    outlier_sets: _OutlierSets = ",".join(_DEFAULTS.outlier_sets),
    coverage: _Coverage = _DEFAULTS.conformal.target,
    mondrian: _Mondrian = ",".join(_DEFAULTS.conformal.mondrian),
    alpha: _Alpha = _DEFAULTS.abstain.alpha,
    abstain_on: _AbstainOn = _DEFAULTS.abstain.on,
    abstain_ood: _AbstainOod = _DEFAULTS.abstain.ood,
    trust: _Trust = True,
    tta: _Tta = _DEFAULTS.tta.preset,
    seed_ensemble: _SeedEnsemble = _DEFAULTS.seed_ensemble,
) -> None:
    """Predict with RUNS on the cohort's evaluation sets; write and log predictions and metrics.json.

    Each model is named by its run's name and id (``finetune-lf1.0-0123abcd``), so two runs of one recipe never
    share a name (their predictions would overwrite each other)."""

    def body() -> None:
        settings = {
            "sets": [s for s in sets.split(",") if s],
            "subgroups": [s for s in subgroups.split(",") if s],
            "bootstrap": bootstrap,
            "min_patients": min_patients,
            "min_positives": min_positives,
            "min_negatives": min_negatives,
            "saliency": saliency,
            "positive_class": positive_class,
            "outlier_sets": [s for s in outlier_sets.split(",") if s],
            "conformal": {"enabled": trust, "target": coverage, "mondrian": [m for m in mondrian.split(",") if m]},
            "abstain": {"enabled": trust, "alpha": alpha, "on": abstain_on, "ood": abstain_ood},
            "tta": {"preset": tta},
            "seed_ensemble": seed_ensemble,
        }
        # a bad value fails here, naming the option's key, before any run is loaded
        parse_config(settings, EvaluationSettings, source="medvision evaluate options")
        _evaluate(runs, out, cohort, settings)

    run_guarded(body)


def _evaluate(runs: list[str], out: Path, cohort: Path | None, settings: dict[str, Any]) -> None:
    """Evaluate the runs (ensembled when several) on their cohort; log and print the headline metrics."""
    from mlflow import MlflowClient

    from medvision.engine.config import TrackingConfig, resolve_tracking_uri
    from medvision.evaluation.stage import EvaluationRequest, evaluate_models

    uri = resolve_tracking_uri(TrackingConfig())
    client = MlflowClient(uri)
    models = [_model_of(client, uri, ref) for ref in runs]
    run_ids = [m["run_id"] for m in models]
    cohort_dir = _trained_cohort(client, run_ids, cohort)
    request = EvaluationRequest(
        cohort_dir=cohort_dir, models=models, ensemble=len(models) > 1, tracking_uri=uri, **settings
    )
    headline = evaluate_models(request, out)
    for run_id in run_ids:
        client.log_artifacts(run_id, str(out), "evaluation")
    for key, value in sorted(headline.items()):
        typer.echo(f"{key:50s} {value:.3f}")
    typer.echo(f"wrote {out / 'metrics.json'}; render it with: medvision report {out}")


def _model_of(client: Any, uri: str, text: str) -> dict[str, Any]:
    """The evaluation's facts of one model reference: its run, a distinct stable name, and its training facts."""
    from medvision.tracking.model_ref import ModelRef
    from medvision.tracking.uri import redact_uri

    ref = ModelRef.parse(text)
    if ref.kind == "path":
        raise InputError(
            f"{text}: evaluate needs the MLflow run of a model (its cohort, params and learning curves); give a run "
            "id, runs:/RUN_ID or models:/NAME/VERSION"
        )
    try:
        if ref.kind == "registered":
            version = client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias else None
            version = version or client.get_model_version(ref.name, ref.version)
            ref = ModelRef(kind="run", run_id=version.run_id)
        run = client.get_run(ref.run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run or model
        raise InputError(
            f"run {text!r} not found in {redact_uri(uri)} ({type(e).__name__}); pass the run id of a "
            "fine-tuning run (see `mlflow ui`), or set MLFLOW_TRACKING_URI"
        ) from None
    p, run_id = run.data.params, run.info.run_id
    name = (run.info.run_name or "model").split("/")
    return {
        "run_id": run_id,
        # run names repeat across pipelines (two starts of one recipe): the id makes the name distinct
        "name": f"{'-'.join(name)}-{run_id[:8]}",
        "stage": name[0],
        "member": name[-1] if len(name) > 1 else run_id[:8],
        "backbone": p.get("backbone.name"),
        "weights": p.get("backbone.weights"),
        "head": p.get("head.name"),
        "label_fraction": float(p.get("data.label_fraction", 1.0)),
        "seed": int(p.get("seed", 0)),
    }


def _trained_cohort(client: MlflowClient, run_ids: list[str], cohort: Path | None) -> Path:
    """The cohort to evaluate on (``--cohort``, else the first run's), refused when a run trained on another
    manifest: its test set may overlap the training patients."""
    from medvision.cohort.card import CARD_FILE, CohortCard

    cohort_dir = cohort or Path(client.get_run(run_ids[0]).data.params.get("data.cohort_dir", ""))
    if not (cohort_dir / CARD_FILE).exists():
        raise InputError(f"cohort folder {cohort_dir} not found; pass --cohort DIR (a built cohort)")
    built = CohortCard.read(cohort_dir / CARD_FILE).manifest_sha256
    for run_id in run_ids:
        trained = client.get_run(run_id).data.tags.get("cohort.manifest_sha256")
        if trained and trained != built:
            raise InputError(
                f"run {run_id} was trained on cohort manifest {trained[:12]} but {cohort_dir} holds "
                f"manifest {built[:12]} (rebuilt or another cohort): its test set may overlap the "
                "training patients. Evaluate on the cohort the run was trained on"
            )
    return cohort_dir


def report_command(
    evaluation: Path = typer.Argument(..., help="An evaluation folder (from `medvision evaluate` or a pipeline)."),
    out: Path = typer.Option(Path("reports/generated/report.html"), help="The HTML file to write."),
    title: str = typer.Option("medvision evaluation report", help="Report title."),
    checklist: list[str] = typer.Option(
        None, help="Also write a publication checklist beside the report: tripod-ai, claim or model-card (repeatable)."
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."
    ),
) -> None:
    """Render the self-contained HTML report of an evaluation (opens offline in any browser).

    With --checklist, every item the run's records answer (cohort card, classifier card, training parameters,
    metrics.json) is filled in with its source, the rest listed as TODO; the report and the checklists are logged
    to the evaluated runs in MLflow when they are runs of that store."""

    def body() -> None:
        from medvision.report.build import report_from_evaluation
        from medvision.report.checklist import load_checklist_spec

        if not (evaluation / "metrics.json").exists():
            raise InputError(f"{evaluation} holds no metrics.json; run `medvision evaluate RUN --out {evaluation}`")
        for name in checklist or []:
            load_checklist_spec(name)  # a misspelt name fails before the report is written
        path = report_from_evaluation(evaluation, out, title=title)
        typer.echo(f"report: {path.resolve()}")
        if checklist:
            _checklists(evaluation, path, checklist, tracking_uri)

    run_guarded(body)


def _checklists(evaluation: Path, report: Path, names: list[str], tracking_uri: str | None) -> None:
    """Write each checklist beside the report; log them and the report to the evaluation's runs when they exist."""
    from medvision.engine.config import TrackingConfig, resolve_tracking_uri
    from medvision.report.build import evaluation_key
    from medvision.report.checklist import fill_checklist, records_of, write_checklist
    from medvision.tracking.uri import redact_uri

    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))
    records = records_of(evaluation, uri)
    written = []
    for name in names:
        filled = fill_checklist(name, records, evaluation_key(evaluation))
        written += write_checklist(filled, report.parent, Path(records.doc.cohort.dir))
        typer.echo(
            f"{filled.title}: {len(filled.items) - len(filled.todo)} of {len(filled.items)} items answered, "
            f"{len(filled.todo)} TODO: {written[-2].resolve()} (and .html)"
        )
    logged = _log_beside_report(uri, [m.run_id for m in records.doc.models], [report, *written])
    if logged:
        typer.echo(f"logged to run(s) {', '.join(r[:8] for r in logged)} (artifacts report/) in {redact_uri(uri)}")


def _log_beside_report(uri: str, run_ids: list[str], files: list[Path]) -> list[str]:
    """Log ``files`` under ``report/`` of each run of ``uri`` among ``run_ids``; runs of another store are skipped."""
    from mlflow import MlflowClient

    client, logged = MlflowClient(uri), []
    for run_id in dict.fromkeys(run_ids):
        try:
            client.get_run(run_id)
        except Exception:  # noqa: BLE001 - not a run of this store (an evaluation copied from elsewhere)
            continue
        for f in files:
            client.log_artifact(run_id, str(f), "report")
        logged.append(run_id)
    return logged
