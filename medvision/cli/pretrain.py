"""``medvision pretrain CONFIG.yaml [--set key=value ...]``: self-supervised in-domain pretraining."""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded

__all__ = ["pretrain_command"]


def pretrain_command(
    config: Path = typer.Argument(..., help="A pretraining config (YAML, see medvision.ssl.PretrainConfig)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key: section.key=value (repeatable)."),
) -> None:
    """SimCLR / MICLe pretraining on a cohort's unlabelled pool; logs the backbone to MLflow.

    The config is validated before any work starts (exit code 2 names the bad key). The result loads in a
    fine-tuning config as ``backbone.weights: mlflow:runs:/RUN_ID/backbone``.
    """

    def body() -> None:
        from medvision.config import load_config
        from medvision.ssl import PretrainConfig, pretrain

        cfg = load_config(config, PretrainConfig, set_ or [])
        result = pretrain(cfg)
        shown = {k: round(v, 4) for k, v in sorted(result.metrics.items())}
        typer.echo(f"pretraining finished: {shown}")
        if result.backbone_uri:
            typer.echo(f"backbone: {result.backbone_uri}")

    run_guarded(body)
