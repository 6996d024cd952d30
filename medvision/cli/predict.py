"""``medvision predict MODEL --images DIR | --cohort DIR --out DIR``: a trained model on new, unlabelled cases."""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded

#: Quarantined files listed on the terminal (all of them are in quarantine.csv).
_SHOWN = 10


def predict_command(
    model: str = typer.Argument(
        ..., help="A fine-tuning run (run id, runs:/RUN_ID), models:/NAME/VERSION, models:/NAME@ALIAS, or a folder."
    ),
    images: Path | None = typer.Option(None, help="A folder of DICOM files or photos (no labels needed)."),
    cohort: Path | None = typer.Option(None, help="A cohort built by `medvision cohort build` (every image)."),
    out: Path = typer.Option(..., help="Folder for predictions.parquet/.csv, quarantine.csv (and cohort/)."),
    batch_size: int = typer.Option(64, min=1, help="Images per forward pass."),
    evaluation: Path | None = typer.Option(
        None,
        help="The model's `medvision evaluate` folder: apply its operating point, conformal sets and referral rule "
        "(columns positive, conformal_set, ood_flag, refer).",
    ),
    dicom_results: bool = typer.Option(
        False, help="Also write one DICOM Structured Report per study (TID 1500) into OUT/dicom, pseudonymous."
    ),
    for_source_pacs: bool = typer.Option(
        False,
        help="The DICOM reports carry the source's patient, study and instance identifiers, to be stored back in "
        "the PACS the images came from (implies --dicom-results; the files are owner-only).",
    ),
    send: str | None = typer.Option(
        None,
        help="Store the DICOM reports by STOW-RS to this DICOMweb base URL, the source PACS (implies "
        "--for-source-pacs).",
    ),
    send_auth: str = typer.Option(
        "none",
        help="How --send authenticates: none, basic ($MEDVISION_PACS_USER/$MEDVISION_PACS_PASSWORD) or bearer "
        "($MEDVISION_PACS_TOKEN).",
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."
    ),
) -> None:
    """Class probabilities (p:<class>) and the head's OOD score for every image, keyed by pseudonymous ids.

    Images are read, quarantined, pseudonymised and cached as a cohort build does, with the preprocessing recipe
    recorded in the model's card; each prediction is an MLflow run (experiment "predict")."""

    def body() -> None:
        from medvision.engine.config import TrackingConfig, resolve_tracking_uri
        from medvision.errors import InputError
        from medvision.serving import predict
        from medvision.tracking.model_ref import ModelRefError
        from medvision.tracking.uri import redact_uri

        uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))
        try:
            result = predict(
                model,
                out,
                images=images,
                cohort=cohort,
                tracking_uri=uri,
                batch_size=batch_size,
                dicom_results=dicom_results,
                for_source_pacs=for_source_pacs,
                send=send,
                send_auth=send_auth,
                evaluation=evaluation,
            )
        except ModelRefError as e:
            raise InputError(str(e)) from None
        q = result.quarantine
        typer.echo(f"{len(result.predictions)} image(s) predicted: {result.out / 'predictions.parquet'} (and .csv)")
        if len(q):
            typer.echo(f"{len(q)} file(s) quarantined, not predicted (all in {result.out / 'quarantine.csv'}):")
            for r in q.head(_SHOWN).itertuples(index=False):
                typer.echo(f"  {r.relpath}: {r.reason}")
        if result.dicom:
            typer.echo(
                f"{len(result.dicom)} DICOM report(s) ({result.dicom_identifiers} identifiers) "
                f"in {result.out / 'dicom'}"
            )
        if send is not None:
            typer.echo(f"{result.sent} report(s) stored to the PACS")
        typer.echo(f"MLflow run {result.run_id} (experiment predict) in {redact_uri(uri)}")

    run_guarded(body)
