"""One plain line per epoch for a training run whose output goes to a log file or a pipe, not a terminal.

The progress bar is drawn only on a terminal (``trainer.progress_bar: auto``); without it a run printed nothing
from its first batch to its last, so a 39-minute fine-tune written to a log looked hung the whole time (issue 21).
:class:`EpochLines` takes the bar's place there: at the end of every training epoch (after its validation) rank 0
logs ``epoch 3/10: train/loss 0.412, val/auroc 0.783, 12.4 s`` to the ``medvision.engine.epoch_lines`` logger at
INFO, the path every medvision command's messages take (the CLI sends INFO to stderr; a notebook or script sees the
lines once it configures logging, e.g. ``logging.basicConfig(level=logging.INFO)``).

Example:
    >>> EpochLines("val/auroc").monitor
    'val/auroc'
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["EpochLines"]

log = logging.getLogger(__name__)

#: What every training stage logs per epoch (the fine-tuning and self-supervised modules both do).
TRAIN_LOSS = "train/loss"


class EpochLines(Callback):
    """Log ``epoch n/N: train/loss x, <monitor> y, s s`` once per training epoch, on rank 0.

    Args:
        monitor: the metric the checkpoints are kept by (``monitor.metric``: ``val/auroc``, ``val/loss``, ...); shown
            beside the training loss. A metric the epoch did not log is left out of the line, not invented.
        label: what is training, put before ``epoch`` (the recipe: ``recipe: auto`` trains several candidates one
            after another, and without it their ``epoch 1/N`` lines read as one run restarting).
    """

    def __init__(self, monitor: str, label: str | None = None) -> None:
        self.monitor = monitor
        self.label = label
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [
            f"{name} {_value(metrics[name])}" for name in dict.fromkeys((TRAIN_LOSS, self.monitor)) if name in metrics
        ]
        seconds = time.monotonic() - self._started if self._started is not None else math.nan
        total = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else "?"
        prefix = f"{self.label} " if self.label else ""
        log.info(
            "%sepoch %d/%s: %s, %.1f s",
            prefix,
            trainer.current_epoch + 1,
            total,
            ", ".join(shown) or "no metrics",
            seconds,
        )


def _value(v: object) -> str:
    try:
        x = float(v)  # type: ignore[arg-type]  # a 0-d tensor or a number
    except (TypeError, ValueError):
        return str(v)
    return "nan" if math.isnan(x) else f"{x:.4f}"
