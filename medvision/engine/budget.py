"""A wall-clock budget for a training loop: the schedule shrinks to fit it instead of being cut off mid-decay.

A step-based schedule (``schedule: steps``) can ask for more steps than a CPU affords: 500 HyperRule steps of an
EfficientNet at 96 px take minutes per run on two cores. Stopping at the deadline would leave the learning rate high
(a cosine cut in the middle), so :class:`TimeBudget` times an epoch (validation included), then lowers the epoch
count *and* the cosine's length to what fits: the run still warms up, decays to zero and keeps its best validation
epoch. The epoch it times is the second one: the first also pays one-time costs (opening the MLflow run, the first
allocations), which would make a short epoch look several times longer than it is; only a first epoch that already
takes a quarter of the budget is planned from directly. If later epochs turn out slower (a shared machine), it stops
once the budget is spent. What it decided is logged as ``budget/epochs`` every epoch and travels in checkpoints, so a
resumed run keeps its plan and its remaining time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.optim.lr_scheduler import LambdaLR

from medvision.engine.schedule import WarmupCosine

__all__ = ["TimeBudget"]


class TimeBudget(Callback):
    """Fit the remaining epochs (and the warm-up + cosine schedule) into ``seconds`` of training-loop time.

    Args:
        seconds: the budget for ``fit`` (training and validation epochs; start-up before the first epoch excluded).
        clock: seconds from an arbitrary start (``time.monotonic``; tests pass their own).

    Attributes:
        planned_epochs: the epoch count chosen after the first epoch (``None`` before).
        spent: seconds used so far, across resumptions.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.clock = clock
        self.planned_epochs: int | None = None
        self.spent = 0.0
        self._t0 = clock()
        self._spent_at_start = 0.0
        self._epoch_t0 = self._t0

    def state_dict(self) -> dict[str, Any]:
        return {"planned_epochs": self.planned_epochs, "spent": self._now_spent()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_epochs = state_dict.get("planned_epochs")
        self.spent = float(state_dict.get("spent", 0.0))

    def _now_spent(self) -> float:
        return self._spent_at_start + (self.clock() - self._t0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self.clock()
        self._spent_at_start = self.spent
        if self.planned_epochs is not None and self.planned_epochs < (trainer.max_epochs or 0):
            trainer.fit_loop.max_epochs = self.planned_epochs  # the scheduler's length came back with its state
        if self.spent >= self.seconds:  # resumed after the budget ran out (the run had stopped): nothing left to train
            trainer.fit_loop.max_epochs = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_t0 = self.clock()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.spent = self._now_spent()
        done = trainer.current_epoch + 1
        per_epoch = self.clock() - self._epoch_t0  # this epoch alone (training and validation)
        max_epochs = int(trainer.max_epochs or done)
        first_is_short = done == 1 and self.spent < 0.25 * self.seconds and max_epochs > 2
        if self.planned_epochs is None and not first_is_short:
            affordable = done + math.floor(max(0.0, self.seconds - self.spent) / max(per_epoch, 1e-9))
            self.planned_epochs = max(done, min(max_epochs, affordable))
            if self.planned_epochs < max_epochs:
                _shrink(trainer, self.planned_epochs, trainer.global_step / done)
        elif self.planned_epochs is not None and self.spent >= self.seconds and done < max_epochs:
            trainer.should_stop = True  # slower than planned: the budget is a cap
        planned = self.planned_epochs if self.planned_epochs is not None else max_epochs
        pl_module.log("budget/epochs", float(planned), logger=False, on_epoch=True)


def _shrink(trainer: L.Trainer, epochs: int, steps_per_epoch: float) -> None:
    """Fewer epochs, and the warm-up + cosine schedule rescaled to end with them."""
    trainer.fit_loop.max_epochs = epochs
    total = max(1, round(steps_per_epoch * epochs))
    step = trainer.global_step
    for config in trainer.lr_scheduler_configs:
        sched = config.scheduler
        if not isinstance(sched, LambdaLR):
            continue
        for rule in sched.lr_lambdas:
            if isinstance(rule, WarmupCosine) and total < rule.total_steps:
                if step < rule.warmup_steps:  # still warming up: keep the warm-up's share of the schedule
                    rule.warmup_steps = max(step + 1, round(rule.warmup_steps * total / rule.total_steps))
                rule.total_steps = max(rule.warmup_steps + 1, total)
