"""Optimiser parameter groups and the warm-up + cosine learning-rate schedule, shared by every training stage.

Fine-tuning (SGD/AdamW, method spec §1) and SimCLR (LARS/AdamW, §2) differ in the optimiser, not in how parameters
are grouped or how the rate moves, so both build those two things here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import nn

__all__ = ["WarmupCosine", "decay_groups", "warmup_cosine"]


class WarmupCosine:
    """Learning-rate multiplier per optimiser step: linear warm-up to 1, then cosine decay to 0.

    A plain object (not a closure) so the scheduler's state, saved in checkpoints, restores it.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(self.warmup_steps + 1, int(total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def decay_groups(params: Iterable[nn.Parameter], weight_decay: float, **tags: Any) -> list[dict[str, Any]]:
    """Trainable parameters split into weight matrices/kernels (decayed) and biases/norm scales (never decayed:
    shrinking those toward 0 only hurts). ``tags`` are set on the decayed group and negated (``not v``) on the
    other, e.g. ``lars=True`` for LARS's trust ratio. Empty groups are dropped."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, **tags},
        {"params": no_decay, "weight_decay": 0.0, **{k: not v for k, v in tags.items()}},
    ]
    return [g for g in groups if g["params"]]


def warmup_cosine(optimizer: torch.optim.Optimizer, trainer: L.Trainer, warmup_epochs: float, epochs: int) -> dict:
    """Lightning's ``configure_optimizers`` answer: ``optimizer`` with a per-step :class:`WarmupCosine`."""
    total = int(trainer.estimated_stepping_batches)
    steps_per_epoch = total / max(1, trainer.max_epochs or epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(round(warmup_epochs * steps_per_epoch), total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
