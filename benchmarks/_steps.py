"""What the Lightning-vs-bare-loop step benchmarks share: in-memory batches, and the Lightning side's timed fit.

Why shared: ``train_step.py``, ``gpu_throughput.py`` and ``pretrain_step.py`` each set medvision's module under
``lightning.Trainer`` against the loop a careful PyTorch user writes, and their ratios only mean the same thing if
the Lightning side is timed the same way in all of them: a Trainer stripped of the once-per-epoch work (validation,
checkpoints, logger, progress bar, model summary), timed from the start of batch ``warmup`` (the first batches pay
for allocator and kernel warm-up) to the end of the last batch. On CUDA the clock synchronises the device at both
ends, so queued kernels are counted, and nowhere in between, so the Lightning side pays for no host sync the bare
loops do not. Each benchmark passes its own Trainer options (accelerator, precision, clipping) and turns the
seconds into its own rate.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

__all__ = ["RandomBatches", "StepClock", "sync", "timed_fit"]


def sync() -> None:
    """Wait for queued CUDA work, so that a clock read next counts it (nothing to wait for without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class RandomBatches(Dataset):
    """``length`` labelled random images (``{"image", "label"}``) cycling over ``distinct`` of them (all by default).

    Why cycle: at 224 px and hundreds of steps, distinct images would hold gigabytes for no change in the step's cost.
    """

    def __init__(self, length: int, chans: int, size: int, classes: int, distinct: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        count = length if distinct is None else distinct
        self.x = torch.rand(count, chans, size, size, generator=g)
        self.y = torch.randint(0, classes, (count,), generator=g)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i % len(self.x)], "label": self.y[i % len(self.y)]}


class StepClock(Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch (the device synchronised on CUDA)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self._sync(pl_module)
            self.end = time.perf_counter()

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        # The module's device, not "is CUDA visible": a CPU run on a GPU machine must not start a CUDA context.
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def timed_fit(module: L.LightningModule, loader: DataLoader, warmup: int, **trainer_options: Any) -> float:
    """Fit ``module`` for one epoch of ``loader`` on one device; seconds from batch ``warmup`` to the last batch's end.

    ``trainer_options`` go to ``lightning.Trainer`` as they are (accelerator, precision, gradient clipping,
    ``limit_train_batches``, ...).
    """
    clock = StepClock(warmup)
    trainer = L.Trainer(
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
        **trainer_options,
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.seconds
