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
def list_names(
    offline: bool = typer.Option(False, "--offline", help="Only names whose pretrained weights load offline now."),
) -> None:
    """Print the backbone names medvision knows and whether their pretrained weights are available offline now.

    OFFLINE is where `weights: hub` would load them from without a network (an installed, hash-verified
    package or the local hub cache); `-` means not here yet, with what to run. Any timm model name works too.
    """
    from medvision.models import get_backbone_spec, list_backbones, offline_weights

    for name in list_backbones():
        source, note = offline_weights(name)
        if offline and source is None:
            continue
        spec = get_backbone_spec(name)
        typer.echo(f"{name:18s} {source or '-':52s} {spec.description}")
        if source is None and get_backbone_spec(name).package is not None:
            typer.echo(f"{'':18s} ({note})")
