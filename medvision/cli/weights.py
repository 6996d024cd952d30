"""``medvision weights ...``: prepare pretrained weights for machines that cannot reach the hub."""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded

app = typer.Typer(
    help="Pretrained weights: list backbone names, fetch hub weights for an offline machine.", no_args_is_help=True
)


@app.command("fetch")
def fetch(
    name: str = typer.Argument(..., help="A backbone name (see `medvision weights list`), e.g. bit-m-r50x1."),
    to: Path = typer.Option(..., "--to", help="Folder to write NAME.safetensors and NAME.json into."),
) -> None:
    """Download NAME's hub weights here, to copy to an air-gapped machine and load with `file:`."""

    def body() -> None:
        from medvision.models import fetch_weights

        path = fetch_weights(name, to)
        typer.echo(f"wrote {path}; on the offline machine use  backbone.weights: file:{path}")

    run_guarded(body)


@app.command("list")
def list_names() -> None:
    """Print the backbone names medvision knows (any timm model name works as well)."""
    from medvision.models import get_backbone_spec, list_backbones

    for name in list_backbones():
        spec = get_backbone_spec(name)
        typer.echo(f"{name:20s} {spec.description}")
