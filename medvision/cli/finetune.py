"""``medvision finetune CONFIG.yaml --set key=value``: a thin face over :func:`medvision.recipes.fit`.

The config is loaded and validated (overrides included) before anything heavy is imported or any
file is written, so a typo exits with code 2 and a message naming the key, in about a second.
A config that names no ``recipe`` (and keeps ``mode: full``) runs ``recipe: auto`` here when it is one process:
the command a new user types should give the transfer recipe that wins on their cohort, not one fixed guess. A
distributed launch (several devices, torchrun, SLURM) keeps the plain fine-tune: auto's probe and choice are
single-process work.
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
    """Transfer a pretrained backbone to a built cohort (recipe: auto unless the config names one); records the model as
    an MLflow run."""
    from medvision.config import ConfigError, load_config
    from medvision.training.config import FinetuneConfig

    try:
        cfg = load_config(config, FinetuneConfig, set_ or [])
    except ConfigError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    from medvision.engine.config import single_process

    if "recipe" not in cfg.model_fields_set and cfg.mode == "full" and single_process(cfg.trainer):
        cfg = cfg.model_copy(update={"recipe": "auto"})
        typer.echo("recipe: auto (the config names none; --set recipe=finetune for one plain fine-tune)")

    def body() -> None:
        from medvision.recipes import AutoResult, fit

        result = fit(cfg)
        if isinstance(result, AutoResult) and result.decision is not None:
            d = result.decision
            typer.echo(
                f"recipe: {d.winner} chosen among {', '.join(c.recipe for c in d.candidates)} ({d.candidates_rule})"
            )
            for c in d.candidates:
                line = f"  {c.recipe:<13} val AUROC {_interval(c.val_auroc, '.3f')}"
                if c.difference is not None:
                    line += f", vs {c.versus} {_interval(c.difference, '+.3f')}"
                typer.echo(line)
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


def _interval(i, fmt: str) -> str:
    """``point (low to high)``, or ``n/a`` where the AUROC is undefined (one class in the validation set)."""
    if i.point is None:
        return "n/a"
    bounds = f" ({i.low:{fmt}} to {i.high:{fmt}})" if i.low is not None and i.high is not None else ""
    return f"{i.point:{fmt}}{bounds}"
