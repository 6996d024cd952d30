"""``medvision export MODEL --format monai-bundle --out DIR``: a trained classifier in a deployable format."""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded
from medvision.errors import InputError

FORMATS = ("monai-bundle",)


def export_command(
    model: str = typer.Argument(
        ..., help="A fine-tuning run (run id or runs:/RUN_ID), models:/NAME/VERSION, or a saved classifier's folder."
    ),
    format_: str = typer.Option("monai-bundle", "--format", help=f"Export format: {', '.join(FORMATS)}."),
    out: Path = typer.Option(..., help="Folder to write (must not exist or be empty)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow store (default: $MLFLOW_TRACKING_URI)."),
) -> None:
    """Export a run's classifier: a MONAI bundle (TorchScript network, metadata, inference config) that
    MONAI's own tools check and run offline."""

    def body() -> None:
        if format_ not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
        from medvision.export import export_monai_bundle

        path = export_monai_bundle(model, out, tracking_uri=tracking_uri)
        typer.echo(
            f"MONAI bundle written to {path}; run it with: python -m monai.bundle run --config_file "
            f"{path}/configs/inference.json --meta_file {path}/configs/metadata.json --bundle_root {path} "
            "--dataset_dir IMAGE_FOLDER (DICOM, PNG, JPEG, TIFF: prepared exactly as the training images)"
        )

    run_guarded(body)
