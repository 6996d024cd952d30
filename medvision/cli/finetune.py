"""``medvision finetune CONFIG.yaml --set key=value``: a thin face over :func:`medvision.training.finetune`.

The config is loaded and validated (overrides included) before anything heavy is imported or any
file is written, so a typo exits with code 2 and a message naming the key, in about a second.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medvision.cli._errors import run_guarded

__all__ = ["finetune_command"]


def finetune_command(
    config: Path = typer.Argument(..., help="A fine-tuning config (YAML; see medvision.training.FinetuneConfig)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config value, e.g. --set optim.lr=0.01 (repeatable; value parsed as YAML)."
    ),
) -> None:
    """Fine-tune a pretrained backbone on a built cohort; records one MLflow run with the best model."""
    from medvision.config import ConfigError, load_config
    from medvision.training.config import FinetuneConfig

    try:
        cfg = load_config(config, FinetuneConfig, set_ or [])
    except ConfigError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None

    def body() -> None:
        from medvision.training.finetune import finetune

        result = finetune(cfg)
        if result.run_id is not None:
            typer.echo(
                f"MLflow run {result.run_id}: model runs:/{result.run_id}/model, "
                f"backbone mlflow:runs:/{result.run_id}/backbone"
            )
        if result.best_checkpoint is not None:
            typer.echo(f"best checkpoint {result.best_checkpoint} ({cfg.monitor.metric} = {result.best_score})")
        for name, value in sorted(result.metrics.items()):
            typer.echo(f"  {name:<16} {value:.4f}")

    run_guarded(body)
