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

Whole epochs are too coarse when one epoch is a large share of the budget (all the labels of a cohort on a CPU):
planned after it, "one epoch" has already run on the long schedule, its learning rate never decayed. So while no
plan exists, each training step projects the epoch's end (from the steps after the first, whose one-time costs
would mislead); when the budget will not hold one more whole epoch after it, the plan is made in steps there and
then: the cosine is shortened to the steps that fit (a validation pass counted at a third of a training step per
batch) and the run stops at its last step, validating first (``budget/steps``).
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
        planned_steps: the optimiser step the run stops at, when the plan was made in steps (``None`` otherwise).
        spent: seconds used so far, across resumptions.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.clock = clock
        self.planned_epochs: int | None = None
        self.planned_steps: int | None = None
        self.spent = 0.0
        self._t0 = clock()
        self._spent_at_start = 0.0
        self._epoch_t0 = self._t0
        self._after_first_step: tuple[float, int] | None = None  # (clock, batches) at the end of an epoch's first

    def state_dict(self) -> dict[str, Any]:
        return {"planned_epochs": self.planned_epochs, "planned_steps": self.planned_steps, "spent": self._now_spent()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_epochs = state_dict.get("planned_epochs")
        self.planned_steps = state_dict.get("planned_steps")
        self.spent = float(state_dict.get("spent", 0.0))

    def _now_spent(self) -> float:
        return self._spent_at_start + (self.clock() - self._t0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self.clock()
        self._spent_at_start = self.spent
        if self.planned_epochs is not None and self.planned_epochs < (trainer.max_epochs or 0):
            trainer.fit_loop.max_epochs = self.planned_epochs  # the scheduler's length came back with its state
        finished = self.planned_steps is not None and trainer.global_step >= self.planned_steps
        if self.spent >= self.seconds or finished:  # resumed after the run had stopped: nothing left to train
            trainer.fit_loop.max_epochs = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_t0 = self.clock()
        self._after_first_step = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.planned_steps is not None:
            spent = _agreed(trainer, self._now_spent() >= self.seconds)
            if trainer.global_step >= self.planned_steps or spent:
                trainer.should_stop = True  # Lightning validates at this step, then stops (slower steps: a cap)
            return
        if self.planned_epochs is not None:
            return
        now = self.clock()
        if self._after_first_step is None:
            self._after_first_step = (now, batch_idx)
            return
        since, first = self._after_first_step
        if batch_idx - first < 2:  # two steps at least: one step's time is too noisy to plan a run on
            return
        planned = _agreed(trainer, self._steps_that_fit(trainer, (now - since) / (batch_idx - first), batch_idx))
        if planned is not None:
            self._adopt_steps(trainer, planned)

    def _steps_that_fit(self, trainer: L.Trainer, per_batch: float, batch_idx: int) -> int | None:
        """The optimiser step to stop at, when the budget will not hold one more whole epoch after this one (see
        the module); ``None`` while whole epochs still fit."""
        batches = int(trainer.num_training_batches) if math.isfinite(trainer.num_training_batches) else 0
        val_batches = sum(n for n in (trainer.num_val_batches or []) if math.isfinite(n))
        validation = per_batch * val_batches / 3.0  # a forward pass: about a third of a training step
        epoch = per_batch * batches + validation
        spent = self._now_spent()
        left_in_epoch = batches - batch_idx - 1
        epoch_end = spent + per_batch * left_in_epoch + validation
        max_epochs = int(trainer.max_epochs or trainer.current_epoch + 1)
        last_epoch = trainer.current_epoch + 1 >= max_epochs
        if batches == 0 or epoch_end + epoch <= self.seconds or (last_epoch and epoch_end <= self.seconds):
            return None
        more_batches = max(0, math.floor((self.seconds - spent - validation) / max(per_batch, 1e-9)))
        if more_batches > left_in_epoch:  # each epoch end crossed validates once more
            crossed = math.ceil((more_batches - left_in_epoch) / batches)
            more_batches = max(
                0, math.floor((self.seconds - spent - validation * (1 + crossed)) / max(per_batch, 1e-9))
            )
        return int(trainer.global_step + more_batches // max(1, int(trainer.accumulate_grad_batches)))

    def _adopt_steps(self, trainer: L.Trainer, planned: int) -> None:
        """Stop at step ``planned``: the epochs it reaches, and the cosine ending there."""
        self.planned_steps = planned
        batches = int(trainer.num_training_batches)
        steps_per_epoch = max(1, batches // max(1, int(trainer.accumulate_grad_batches)))
        wanted = max(trainer.current_epoch + 1, math.ceil(planned / steps_per_epoch))
        self.planned_epochs = min(int(trainer.max_epochs or wanted), wanted)
        trainer.fit_loop.max_epochs = self.planned_epochs
        _fit_schedule(trainer, max(planned, trainer.global_step + 1))
        if trainer.global_step >= planned:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.spent = self._now_spent()
        done = trainer.current_epoch + 1
        per_epoch = self.clock() - self._epoch_t0  # this epoch alone (training and validation)
        max_epochs = int(trainer.max_epochs or done)
        first_is_short = done == 1 and self.spent < 0.25 * self.seconds and max_epochs > 2
        plan, stop = self.planned_epochs, False
        if plan is None and not first_is_short:
            affordable = done + math.floor(max(0.0, self.seconds - self.spent) / max(per_epoch, 1e-9))
            plan = max(done, min(max_epochs, affordable))
        elif plan is not None and self.spent >= self.seconds and done < max_epochs:
            stop = True  # slower than planned: the budget is a cap
        plan, stop = _agreed(trainer, (plan, stop))
        if self.planned_epochs is None and plan is not None:
            self.planned_epochs = plan
            if plan < max_epochs:
                _shrink(trainer, plan, trainer.global_step / done)
        if stop:
            trainer.should_stop = True
        planned = self.planned_epochs if self.planned_epochs is not None else max_epochs
        pl_module.log("budget/epochs", float(planned), logger=False, on_epoch=True)
        if self.planned_steps is not None:
            pl_module.log("budget/steps", float(self.planned_steps), logger=False, on_epoch=True)


def _agreed(trainer: L.Trainer, value: Any) -> Any:
    """Rank 0's ``value`` on every rank. Each rank's own clock would plan, and stop, at its own step, and a rank that
    stops alone leaves the others waiting in their next all-reduce (a hung DDP run). One process: ``value``."""
    return trainer.strategy.broadcast(value, src=0)


def _shrink(trainer: L.Trainer, epochs: int, steps_per_epoch: float) -> None:
    """Fewer epochs, and the warm-up + cosine schedule rescaled to end with them."""
    trainer.fit_loop.max_epochs = epochs
    _fit_schedule(trainer, max(1, round(steps_per_epoch * epochs)))


def _fit_schedule(trainer: L.Trainer, total: int) -> None:
    """The warm-up + cosine schedule rescaled to end at optimiser step ``total`` (when that is sooner)."""
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
