"""The BiT-HyperRule (Kolesnikov et al. 2020, "Big Transfer"): fine-tuning settings from the data set alone.

BiT's point is that transfer needs no per-task hyper-parameter search: the schedule length follows the number of
labelled training images, the resolution follows the images' size, and MixUp is used only when there are many
images. Small medical cohorts fall in the first bracket, where BiT trains 500 steps at batch 512; medvision keeps
the number of *images seen* (steps x 512) and converts it to epochs of the run's own batch, so the rule means the
same on a laptop batch of 32 as on a cluster's 512.

==========================  ==========  ==========  ======
labelled training images    steps       warm-up     MixUp
==========================  ==========  ==========  ======
< 20,000                    500         100         0
20,000 - 500,000            10,000      500         0.1
> 500,000                   20,000      500         0.1
==========================  ==========  ==========  ======

Resolution: images smaller than 96 x 96 px are resized to 160 and cropped to 128; larger ones to 512, cropped to
480. That is a cohort setting (``preprocess.size``), so :func:`bit_hyperrule` reports it for the cohort spec rather
than changing a built cohort.

Two readings of the table: :func:`hyperrule_epochs` keeps the *images seen* (steps x 512, whatever the run's
batch), :func:`hyperrule_steps` keeps the *optimiser steps* at the run's own batch. The second is the step-based
schedule (``schedule: steps``): a label fraction keeps its step count instead of its epoch count, so 10% of a small
cohort is not a couple of dozen steps (what an epoch-based schedule gives it), and a wall-clock budget
(:class:`medvision.engine.budget.TimeBudget`) caps it where CPU time is short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BIT_BATCH", "HyperRule", "StepSchedule", "bit_hyperrule", "hyperrule_epochs", "hyperrule_steps"]

#: The batch size the HyperRule's step counts assume.
BIT_BATCH = 512


@dataclass(frozen=True)
class HyperRule:
    """What the HyperRule says for one data set (steps at batch :data:`BIT_BATCH`)."""

    steps: int
    warmup_steps: int
    mixup_alpha: float
    resize: int
    crop: int


def bit_hyperrule(num_train_images: int, image_side: int) -> HyperRule:
    """The BiT-HyperRule for ``num_train_images`` labelled images of about ``image_side`` px (the short side)."""
    if num_train_images < 1:
        raise ValueError(f"the HyperRule needs at least one training image, got {num_train_images}")
    if num_train_images < 20_000:
        steps, warmup = 500, 100
    elif num_train_images <= 500_000:
        steps, warmup = 10_000, 500
    else:
        steps, warmup = 20_000, 500
    resize, crop = (160, 128) if image_side * image_side < 96 * 96 else (512, 480)
    return HyperRule(steps, warmup, 0.0 if num_train_images < 20_000 else 0.1, resize, crop)


def hyperrule_epochs(num_train_images: int, image_side: int) -> tuple[int, float]:
    """``(epochs, warm-up epochs)`` that show the model as many images as the HyperRule does at batch 512
    (whatever the run's own batch: only the number of images seen is kept).

    Args:
        num_train_images: labelled training images of the run (after the label fraction).
        image_side: the cohort's image side (the resolution part of the rule; the length does not use it).
    """
    rule = bit_hyperrule(num_train_images, image_side)
    epochs = max(2, math.ceil(rule.steps * BIT_BATCH / num_train_images))
    warmup = min(epochs - 1, rule.warmup_steps * BIT_BATCH / num_train_images)
    return epochs, round(warmup, 3)


@dataclass(frozen=True)
class StepSchedule:
    """The step-based schedule of one run: the HyperRule's step count at the run's batch, as whole epochs."""

    steps: int
    warmup_steps: int
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float


def hyperrule_steps(
    num_train_images: int, batch_size: int, image_side: int, accumulate_grad_batches: int = 1
) -> StepSchedule:
    """The HyperRule's optimiser steps (500 / 10,000 / 20,000 by labelled-set size, warm-up 100 / 500) at the run's
    own batch, rounded up to whole epochs (checkpoints, validation and the sampler work per epoch).

    Args:
        num_train_images: labelled training images of the run (after the label fraction).
        batch_size: images per step (the last partial batch is dropped when there is more than one batch).
        image_side: the cohort's image side (passed on to the rule; the length does not use it).
        accumulate_grad_batches: batches per optimiser step.

    Example:
        >>> s = hyperrule_steps(42, 16, 96)
        >>> s.steps_per_epoch, s.epochs, s.steps
        (2, 250, 500)
    """
    rule = bit_hyperrule(num_train_images, image_side)
    batches = num_train_images // batch_size if num_train_images > batch_size else 1
    per_epoch = max(1, batches // max(1, accumulate_grad_batches))
    epochs = max(2, math.ceil(rule.steps / per_epoch))
    warmup = min(epochs - 1, rule.warmup_steps / per_epoch)
    return StepSchedule(epochs * per_epoch, rule.warmup_steps, per_epoch, epochs, round(warmup, 3))
