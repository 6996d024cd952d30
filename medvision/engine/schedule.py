"""Optimiser parameter groups and the warm-up + cosine learning-rate schedule, shared by every training stage.

Fine-tuning (SGD/AdamW, method spec §1) and SimCLR (LARS/AdamW, §2) differ in the optimiser, not in how parameters
are grouped or how the rate moves, so both build those two things here. Layer-wise learning-rate decay (BEiT, MAE)
groups a backbone by depth with timm's own grouping (each timm model declares its layers in ``group_matcher``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

__all__ = ["WarmupCosine", "decay_groups", "layer_decay_groups", "warmup_cosine"]


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


def layer_decay_groups(
    backbone: nn.Module, others: Iterable[nn.Parameter], weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise learning-rate decay: each group carries ``lr_scale`` = ``layer_decay ** d``,
    ``d`` the group's depth below the top of the backbone (Bao et al. 2022, BEiT §2.4; He et al. 2022, MAE §A.1).

    Lower layers hold the most general features, so they move least: a ViT-B fine-tunes with 0.65-0.75. The layers
    are timm's (:func:`timm.optim.param_groups_layer_decay`, from the model's ``group_matcher``: the stem, then each
    block, the final norm joining the last; a timm model without one falls back to timm's automatic grouping).
    ``others`` (the head, an adapter) form a layer of their own above the backbone with scale 1, as BEiT's head does,
    so the backbone's top layer gets ``layer_decay`` (timm, applied to a whole timm model, would put its head in the
    top backbone layer). Weight decay follows :func:`decay_groups` (matrices and kernels only), timm's rule too.

    Args:
        backbone: the timm model (``Backbone.model``), not the medvision wrapper, so timm's patterns match.
        others: every other trainable parameter (scale 1).
        weight_decay: for weight matrices and kernels.
        layer_decay: in ``(0, 1]``; 1 gives every layer the same rate.

    Returns:
        Optimiser groups; multiply each ``lr_scale`` by the peak rate to get its ``lr``.
    """
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=layer_decay)
    below_head = [{**g, "lr_scale": g["lr_scale"] * layer_decay} for g in groups]
    return below_head + [{**g, "lr_scale": 1.0} for g in decay_groups(others, weight_decay)]


def warmup_cosine(optimizer: torch.optim.Optimizer, trainer: L.Trainer, warmup_epochs: float, epochs: int) -> dict:
    """Lightning's ``configure_optimizers`` answer: ``optimizer`` with a per-step :class:`WarmupCosine`."""
    total = int(trainer.estimated_stepping_batches)
    steps_per_epoch = total / max(1, trainer.max_epochs or epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(round(warmup_epochs * steps_per_epoch), total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
