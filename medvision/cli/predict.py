"""``medvision predict MODEL [MODEL ...] --images DIR | --cohort DIR | --pacs SPEC --out DIR``: a trained model (or
a seed ensemble of several) on new, unlabelled cases."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medvision.cli._errors import run_guarded

if TYPE_CHECKING:
    from medvision.serving import PredictionResult

#: Quarantined files listed on the terminal (all of them are in quarantine.csv).
_SHOWN = 10

# The options of ``medvision predict``, declared once here so the command's signature reads as its list of inputs.
_Models = Annotated[
    list[str],
    typer.Argument(
        help="A fine-tuning run (run id, runs:/RUN_ID), models:/NAME/VERSION, models:/NAME@ALIAS, or a folder; "
        "several (runs of one recipe, e.g. its seeds) are one seed ensemble, averaged as `medvision evaluate "
        "--seed-ensemble` averages them.",
    ),
]
_Images = Annotated[Path | None, typer.Option(help="A folder of DICOM files or photos (no labels needed).")]
_Cohort = Annotated[Path | None, typer.Option(help="A cohort built by `medvision cohort build` (every image).")]
_Pacs = Annotated[
    Path | None,
    typer.Option(
        help="A YAML PACS request (a cohort spec's pacs: section): its instances are pulled into its store "
        "(resumable) and predicted as --images.",
    ),
]
_Out = Annotated[Path, typer.Option(help="Folder for predictions.parquet/.csv, quarantine.csv (and cohort/).")]
_BatchSize = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
_Evaluation = Annotated[
    Path | None,
    typer.Option(
        help="The model's `medvision evaluate` folder: apply its operating point, conformal sets and referral rule "
        "(columns positive, conformal_set, ood_flag, refer).",
    ),
]
_Tta = Annotated[
    str | None,
    typer.Option(
        help="Test-time augmentation, as `medvision evaluate --tta`: none, auto, photo (flips) or radiograph "
        "(crops, never mirrored); probabilities averaged over the views. Default: the --evaluation's own, else none.",
    ),
]
_DicomResults = Annotated[
    bool,
    typer.Option(help="Also write one DICOM Structured Report per study (TID 1500) into OUT/dicom, pseudonymous."),
]
_ForSourcePacs = Annotated[
    bool,
    typer.Option(
        help="The DICOM reports carry the source's patient, study and instance identifiers, to be stored back in "
        "the PACS the images came from (implies --dicom-results; the files are owner-only).",
    ),
]
_Send = Annotated[
    str | None,
    typer.Option(
        help="Store the DICOM reports in the source PACS: by STOW-RS to a DICOMweb base URL (http[s]://...) or by "
        "C-STORE to dimse://CALLED_AET@host:port[?calling_aet=OURS] (implies --for-source-pacs).",
    ),
]
_SendAuth = Annotated[
    str,
    typer.Option(
        help="How --send authenticates to DICOMweb: none, basic ($MEDVISION_PACS_USER/$MEDVISION_PACS_PASSWORD) or "
        "bearer ($MEDVISION_PACS_TOKEN); DIMSE has none.",
    ),
]
_Saliency = Annotated[
    bool,
    typer.Option(
        help="Also write each DICOM image's saliency map (Grad-CAM of the predicted class over the model's input "
        "image) as a Secondary Capture into OUT/dicom/saliency, a new series of its study, marked research only, "
        "not for diagnosis (implies --dicom-results; identifiers as the reports'; sent with them by --send).",
    ),
]
_TrackingUri = Annotated[
    str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
]


def predict_command(
    models: _Models,
    *,
    images: _Images = None,
    cohort: _Cohort = None,
    pacs: _Pacs = None,
    out: _Out,
    batch_size: _BatchSize = 64,
    evaluation: _Evaluation = None,
    tta: _Tta = None,
    dicom_results: _DicomResults = False,
    for_source_pacs: _ForSourcePacs = False,
    send: _Send = None,
    send_auth: _SendAuth = "none",
    saliency: _Saliency = False,
    tracking_uri: _TrackingUri = None,
) -> None:
    """Class probabilities (p:<class>) and the head's OOD score for every image, keyed by pseudonymous ids.

    Images are read, quarantined, pseudonymised and cached as a cohort build does, with the preprocessing recipe
    recorded in the model's card; each prediction is an MLflow run (experiment "predict"). Several MODELs are one
    seed ensemble; with --evaluation they must be a model that evaluation evaluated, and its test-time augmentation
    is applied (its thresholds were certified on those probabilities)."""

    def body() -> None:
        from medvision.engine.config import TrackingConfig, resolve_tracking_uri
        from medvision.errors import InputError
        from medvision.serving import predict
        from medvision.tracking.model_ref import ModelRefError

        uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))
        try:
            result = predict(
                models,
                out,
                images=images,
                cohort=cohort,
                pacs=pacs,
                tracking_uri=uri,
                batch_size=batch_size,
                dicom_results=dicom_results,
                for_source_pacs=for_source_pacs,
                send=send,
                send_auth=send_auth,
                evaluation=evaluation,
                tta=tta,
                saliency=saliency,
            )
        except ModelRefError as e:
            raise InputError(str(e)) from None
        _echo_result(result, sent=send is not None, uri=uri)

    run_guarded(body)


def _echo_result(result: PredictionResult, *, sent: bool, uri: str) -> None:
    """What a prediction wrote, on the terminal: the tables, the first quarantined files, the DICOM reports and
    saliency images (and how many the PACS stored when ``sent``) and the MLflow run."""
    from medvision.tracking.uri import redact_uri

    q, pulled = result.quarantine, result.pulled
    if pulled is not None:
        typer.echo(
            f"{pulled.matched} instance(s) matched on the PACS: {pulled.retrieved} pulled, {pulled.skipped} already "
            f"in {pulled.store}, {pulled.quarantined} quarantined (see {pulled.store}/quarantine.jsonl)"
        )
    typer.echo(f"{len(result.predictions)} image(s) predicted: {result.out / 'predictions.parquet'} (and .csv)")
    _echo_model(result)
    for note in result.notes:
        typer.echo(note)
    if len(q):
        typer.echo(f"{len(q)} file(s) quarantined, not predicted (all in {result.out / 'quarantine.csv'}):")
        for r in q.head(_SHOWN).itertuples(index=False):
            typer.echo(f"  {r.relpath}: {r.reason}")
    if result.dicom:
        typer.echo(
            f"{len(result.dicom)} DICOM report(s) ({result.dicom_identifiers} identifiers) in {result.out / 'dicom'}"
        )
    if result.saliency:
        typer.echo(
            f"{len(result.saliency)} saliency image(s), research only, not for diagnosis, in "
            f"{result.out / 'dicom' / 'saliency'}"
        )
    if sent:
        what = "DICOM object(s) (reports and saliency images)" if result.saliency else "report(s)"
        typer.echo(f"{result.sent} {what} stored to the PACS")
    typer.echo(f"MLflow run {result.run_id} (experiment predict) in {redact_uri(uri)}")


def _echo_model(result: PredictionResult) -> None:
    """How the probabilities were made, when not by one model on the plain image: the ensemble and the views."""
    members, views = result.members, result.tta
    if len(members) > 1:
        typer.echo(f"probabilities: the mean of a seed ensemble of {len(members)} runs ({', '.join(members)})")
    if views is not None and views.active:
        typer.echo(f"test-time augmentation: {views.preset}, averaged over {len(views.views)} views")
