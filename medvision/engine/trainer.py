"""The *how* of every training stage: a Lightning ``Trainer`` from :class:`~medvision.engine.config.TrainerConfig`.

Everything about devices, precision, distribution, checkpoints, early stopping and seeding lives
here, so a stage's LightningModule (fine-tuning, SimCLR) stays the same on one CPU and on
many GPUs:

* ``strategy: ddp`` runs one process per device (gloo on CPU, NCCL on GPU); ``fsdp`` shards
  parameters, gradients and optimiser state (GPU) and writes full, unsharded checkpoints;
* multi-node: start one process per device with ``torchrun`` or ``srun`` and set ``num_nodes``;
  Lightning reads ranks from their environment (``num_nodes: auto`` reads the node count too);
* checkpoints: ``<output_dir>/checkpoints/last.ckpt`` after every epoch, plus the best epoch by
  the monitored metric (``best-epoch=NNN.ckpt``); :func:`resume_checkpoint` picks what to resume;
* output: a progress bar on a terminal, else one line per epoch (:class:`~medvision.engine.epoch_lines.EpochLines`);
* determinism: per-epoch reseeding (:class:`~medvision.engine.seeding.EpochSeeding`) and, on
  CPU by default, deterministic kernels, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

from medvision._atomic import atomic_write_text
from medvision._documents import DocumentError
from medvision.engine.config import StageConfig, TrainerConfig
from medvision.engine.epoch_lines import EpochLines
from medvision.engine.identity import RUN_IDENTITY_FILE, RunIdentity
from medvision.engine.seeding import EpochSeeding
from medvision.errors import InputError

__all__ = [
    "FitOutcome",
    "ResumeMismatch",
    "build_trainer",
    "checkpoint_dir",
    "last_checkpoint_path",
    "resolve_num_nodes",
    "resume_checkpoint",
    "run_identity",
    "runs_on_cpu",
    "fit_stage",
]

LAST_CHECKPOINT = "last.ckpt"
#: In the output folder, beside ``checkpoints/``: what run they belong to (:class:`RunIdentity`), so
#: ``resume: auto`` never continues another run's checkpoint.
RUN_IDENTITY = RUN_IDENTITY_FILE
_PRECISION: dict[str, Literal["32-true", "bf16-mixed", "16-mixed"]] = {
    "32": "32-true",
    "bf16-mixed": "bf16-mixed",
    "16-mixed": "16-mixed",
}


def checkpoint_dir(config: StageConfig) -> Path:
    """Where a run's checkpoints go: ``<output_dir>/checkpoints``."""
    return Path(config.output_dir) / "checkpoints"


def last_checkpoint_path(config: StageConfig) -> Path:
    """The checkpoint rewritten after every epoch (what ``resume: auto`` continues from)."""
    return checkpoint_dir(config) / LAST_CHECKPOINT


def resume_checkpoint(config: StageConfig) -> Path | None:
    """The checkpoint to continue from, per ``config.resume``.

    ``auto``: ``last.ckpt`` in the output folder when there is one (else start afresh);
    ``never``: start afresh; anything else is a checkpoint path that must exist.

    Raises:
        FileNotFoundError: ``resume`` names a checkpoint that does not exist.
    """
    if config.resume == "never":
        return None
    if config.resume == "auto":
        last = last_checkpoint_path(config)
        return last if last.exists() else None
    path = Path(config.resume).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: {path} does not exist; give an existing .ckpt file, 'auto' (continue from "
            f"{checkpoint_dir(config) / 'last.ckpt'} if present) or 'never'"
        )
    return path


def runs_on_cpu(trainer_cfg: TrainerConfig) -> bool:
    """Whether the run will use the CPU (asked for, or ``auto`` with no GPU visible)."""
    return trainer_cfg.accelerator == "cpu" or (trainer_cfg.accelerator == "auto" and not torch.cuda.is_available())


def resolve_num_nodes(trainer_cfg: TrainerConfig) -> int:
    """``num_nodes``, with ``auto`` read from torchrun (WORLD_SIZE / LOCAL_WORLD_SIZE) or SLURM
    (SLURM_NNODES); 1 when neither launched this process."""
    if trainer_cfg.num_nodes != "auto":
        return int(trainer_cfg.num_nodes)
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        return max(1, int(env["WORLD_SIZE"]) // int(env["LOCAL_WORLD_SIZE"]))
    if "SLURM_NNODES" in env:
        return int(env["SLURM_NNODES"])
    return 1


def _strategy(trainer_cfg: TrainerConfig):
    if trainer_cfg.strategy == "ddp":
        return DDPStrategy(find_unused_parameters=trainer_cfg.find_unused_parameters)
    if trainer_cfg.strategy == "fsdp":
        # Wrap every sub-module above ~1M parameters (transformer blocks, ResNet stages) as its
        # own shard unit; use_orig_params lets linear/locked modes freeze part of a unit.
        return FSDPStrategy(
            auto_wrap_policy=partial(size_based_auto_wrap_policy, min_num_params=1_000_000),
            use_orig_params=True,
            state_dict_type="full",
        )
    return "auto"


def build_trainer(config: StageConfig, callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """A Trainer for ``config`` with checkpointing, optional early stopping and epoch seeding.

    Args:
        config: the whole stage config (trainer, optimiser epochs/clipping/accumulation,
            monitor, output folder, seed are read).
        callbacks: extra callbacks (tracking, reports), run after the built-in ones.

    Returns:
        An unfitted :class:`lightning.Trainer`; ``trainer.checkpoint_callback`` is the
        :class:`ModelCheckpoint` that knows the best checkpoint after fitting, and
        :func:`last_checkpoint_path` names the per-epoch one.
    """
    tc = config.trainer
    deterministic = runs_on_cpu(tc) if tc.deterministic is None else tc.deterministic
    show = sys.stderr.isatty() if tc.progress_bar == "auto" else bool(tc.progress_bar)
    return L.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=resolve_num_nodes(tc),
        strategy=_strategy(tc),
        precision=_PRECISION[tc.precision],
        max_epochs=config.optim.epochs,
        accumulate_grad_batches=config.optim.accumulate_grad_batches,
        gradient_clip_val=config.optim.grad_clip,
        gradient_clip_algorithm="norm",
        deterministic=deterministic,
        callbacks=[*_builtin_callbacks(config, show), *callbacks],
        logger=False,  # tracking is a callback (medvision.tracking): one MLflow run, epoch steps
        enable_progress_bar=show,
        enable_model_summary=show,
        default_root_dir=str(config.output_dir),
    )


def _builtin_callbacks(config: StageConfig, show: bool) -> list[Callback]:
    """The callbacks every stage's Trainer has, in order: epoch seeding, the best and the last checkpoint, early
    stopping (when ``monitor.patience`` is set) and the progress display (the bar when ``show``)."""
    mon = config.monitor
    directory = checkpoint_dir(config)
    # Two checkpointers, because Lightning's ``save_last=True`` only rewrites last.ckpt in epochs that
    # also wrote a new best: ``best`` keeps the best epoch by the monitored metric (first, so it is
    # ``trainer.checkpoint_callback``), ``last`` (no monitor) rewrites last.ckpt after every epoch.
    best = ModelCheckpoint(
        dirpath=directory,
        filename="best-epoch={epoch:03d}",
        auto_insert_metric_name=False,
        monitor=mon.metric,
        mode=mon.mode,
        save_top_k=1,
        save_last=False,
    )
    last = ModelCheckpoint(
        dirpath=directory,
        filename=LAST_CHECKPOINT[: -len(".ckpt")],
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    built: list[Callback] = [EpochSeeding(config.seed), best, last]
    if mon.patience is not None:
        # check_finite=False: an undefined AUROC (one class in a tiny validation set) is not a
        # reason to stop; it simply does not count as an improvement.
        built.append(EarlyStopping(monitor=mon.metric, mode=mon.mode, patience=mon.patience, check_finite=False))
    # a terminal gets the bar; a log file or pipe one plain line per epoch (without either a run looks hung)
    recipe = getattr(config, "recipe", None)  # fine-tuning's; a self-supervised stage has none
    built.append(
        RichProgressBar() if show else EpochLines(mon.metric, label=recipe if isinstance(recipe, str) else None)
    )
    return built


class ResumeMismatch(InputError):
    """``resume: auto`` found a checkpoint of a different run in the output folder; the message names the
    differences and the two ways out."""


def run_identity(config: StageConfig, manifest_sha256: str | None = None) -> RunIdentity:
    """What makes two runs the same run (:class:`~medvision.engine.identity.RunIdentity`, the one definition the
    pipeline's stage keys use too)."""
    return RunIdentity.of(config, manifest_sha256=manifest_sha256)


def _check_same_run(config: StageConfig, identity: RunIdentity) -> None:
    """Refuse to resume ``last.ckpt`` of another run (another config, cohort or code version)."""
    path = Path(config.output_dir) / RUN_IDENTITY
    folder = Path(config.output_dir)
    way_out = (
        f"Give this run a folder of its own (--set output_dir={folder}-2, or any new folder) or start afresh in "
        f"this one (--set resume=never)"
    )
    if not path.exists():
        raise ResumeMismatch(
            f"{folder} holds a checkpoint ({LAST_CHECKPOINT}) that records no run identity (an older version made "
            f"it), so resuming it might continue another run. {way_out}"
        )
    try:
        saved = RunIdentity.read(path)
    except DocumentError as e:
        raise ResumeMismatch(
            f"{folder} holds a checkpoint ({LAST_CHECKPOINT}) whose run identity this medvision cannot read ({e}), "
            f"so resuming it might continue another run. {way_out}"
        ) from None
    diff = saved.differences(identity)
    if diff:
        shown = "; ".join(f"{k.removeprefix('config.')}: {a!r} there, {b!r} now" for k, a, b in diff[:8])
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ResumeMismatch(
            f"{folder} holds the checkpoint of a different run ({shown}{more}); resuming it would continue that "
            f"run, not start this one. {way_out}"
        )


@dataclass(frozen=True)
class FitOutcome:
    """The checkpoints a fitted stage left: the best by the monitored metric, and ``last.ckpt``."""

    best_checkpoint: Path | None
    best_score: float | None
    last_checkpoint: Path | None


def fit_stage(
    config: StageConfig,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    callbacks: Sequence[Callback],
    ckpt: Path | None,
    config_yaml: str,
    identity: RunIdentity | None = None,
) -> FitOutcome:
    """Build the trainer, record the resolved config (rank 0), fit (resuming from ``ckpt``), collect checkpoints.

    Shared by every training stage (fine-tuning, self-supervised pretraining) so that they resume, write their
    config and report checkpoints the same way. ``config`` may be any stage config with the same trainer,
    monitor, resume and output-dir fields. ``identity`` (:func:`run_identity`) is written beside the checkpoints,
    and ``resume: auto`` continues a checkpoint only when the identity recorded there is the same.

    Raises:
        ResumeMismatch: ``resume: auto`` found another run's checkpoint in the output folder.
    """

    identity = identity if identity is not None else run_identity(config)
    if ckpt is not None and config.resume == "auto":
        _check_same_run(config, identity)
    trainer = build_trainer(config, callbacks=callbacks)
    if trainer.is_global_zero:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config_yaml)
        identity.write(out / RUN_IDENTITY)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    cb = trainer.checkpoint_callback  # typed as the Checkpoint base; build_trainer put a ModelCheckpoint first
    best = Path(cb.best_model_path) if isinstance(cb, ModelCheckpoint) and cb.best_model_path else None
    score = float(cb.best_model_score) if isinstance(cb, ModelCheckpoint) and cb.best_model_score is not None else None
    last = last_checkpoint_path(config)
    return FitOutcome(
        best_checkpoint=best,
        best_score=score if score is None or math.isfinite(score) else None,
        last_checkpoint=last if last.exists() else None,
    )
