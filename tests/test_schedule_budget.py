"""Step-based schedules and the time budget: the HyperRule's steps at the run's batch, a budget that shortens the
schedule (cosine included) instead of cutting it off, a hard stop when epochs slow down, and layer-wise LR decay
groups that follow timm's layers."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medvision.engine.budget import TimeBudget
from medvision.engine.hyperrule import hyperrule_steps
from medvision.engine.schedule import WarmupCosine, layer_decay_groups, warmup_cosine
from medvision.models import create_backbone


def test_step_schedule_keeps_the_hyperrule_step_count_at_the_runs_batch():
    small = hyperrule_steps(42, 16, 96)  # 10% of a small cohort: 2 batches per epoch
    assert (small.steps_per_epoch, small.epochs, small.steps, small.warmup_steps) == (2, 250, 500, 100)
    assert small.warmup_epochs == 50
    odd = hyperrule_steps(100, 16, 96)  # 6 full batches: 84 epochs make 504 steps, at least the rule's 500
    assert odd.epochs * odd.steps_per_epoch == odd.steps >= 500 and (odd.epochs - 1) * 6 < 500
    big = hyperrule_steps(30_000, 512, 224, accumulate_grad_batches=2)
    assert big.steps_per_epoch == 29 and big.steps >= 10_000 and big.warmup_steps == 500
    tiny = hyperrule_steps(5, 16, 32)  # fewer images than a batch: one (short) batch per epoch
    assert tiny.steps_per_epoch == 1 and tiny.epochs == 500


class _Clock:
    """A clock the steps advance: each step "takes" what the test says, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Timed(L.LightningModule):
    """A one-parameter model whose steps take ``cost(epoch)`` seconds on ``clock``."""

    def __init__(self, clock: _Clock, cost, epochs: int, warmup_epochs: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.clock, self.cost, self.epochs, self.warmup_epochs = clock, cost, epochs, warmup_epochs

    def training_step(self, batch, batch_idx):
        self.clock.now += self.cost(self.current_epoch)
        return (self.w - batch[0].mean()) ** 2

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return warmup_cosine(opt, self.trainer, warmup_epochs=self.warmup_epochs, epochs=self.epochs)


def _fit(
    cost, epochs: int, budget: float, warmup_epochs: float = 1, ckpt_path: Path | None = None
) -> tuple[L.Trainer, TimeBudget]:
    """Train a :class:`_Timed` model on a fresh clock under a ``budget``-second :class:`TimeBudget` (resuming from
    ``ckpt_path`` when given); the model, and so its clock, is ``trainer.lightning_module``."""
    data = DataLoader(TensorDataset(torch.randn(8, 1)), batch_size=1)  # 8 steps per epoch
    clock = _Clock()
    callback = TimeBudget(budget, clock=clock)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(_Timed(clock, cost, epochs, warmup_epochs), train_dataloaders=data, ckpt_path=ckpt_path)
    return trainer, callback


def test_a_budget_shortens_the_schedule_and_the_cosine_still_ends_at_zero():
    trainer, budget = _fit(lambda epoch: 0.25, epochs=60, budget=30)  # 2 s an epoch: 15 of the 60 fit
    assert budget.planned_epochs == 15
    assert trainer.current_epoch == 15  # ran exactly the planned epochs
    sched = trainer.lr_scheduler_configs[0].scheduler
    rule = sched.lr_lambdas[0]
    assert isinstance(rule, WarmupCosine) and rule.total_steps == 8 * 15 and rule.warmup_steps == 8
    assert trainer.global_step == rule.total_steps
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # decayed all the way, not cut mid-cosine
    assert trainer.callback_metrics["budget/epochs"] == 15
    assert budget.spent == pytest.approx(30.0)


def test_a_budget_cut_during_the_warm_up_keeps_the_warm_ups_share():
    # warm-up: 10 of 40 epochs (80 of 320 steps); the plan after the first epoch is 4 epochs (32 steps), a quarter
    # of which warm up: 8 steps, but at least one more than the 8 already taken
    trainer, budget = _fit(lambda epoch: 1.0, epochs=40, budget=32, warmup_epochs=10)
    assert budget.planned_epochs == 4
    rule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert (rule.warmup_steps, rule.total_steps) == (9, 32)
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)


def test_a_budget_that_fits_changes_nothing():
    trainer, budget = _fit(lambda epoch: 0.0, epochs=3, budget=600)
    assert budget.planned_epochs == 3 and trainer.current_epoch == 3
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 24


def test_epochs_that_slow_down_after_the_plan_stop_at_the_budget():
    # the first two epochs are fast, so the plan is long; the later ones are 10x slower and hit the cap
    trainer, budget = _fit(lambda epoch: 0.1 if epoch < 2 else 1.0, epochs=40, budget=30)
    assert budget.planned_epochs == 37  # 1.6 s for two epochs, 0.8 s each: 35 more of those would fit
    assert trainer.current_epoch == 6  # 1.6 + 4 x 8 = 33.6 s >= 30: stopped after the sixth epoch
    assert budget.spent >= 30


def test_a_run_the_budget_stopped_trains_no_more_when_resumed(tmp_path):
    """A pipeline rerun resumes each member from its last checkpoint; one the budget had stopped is finished, so it
    must not get one more epoch (and a second budget) from the resumption."""
    trainer, budget = _fit(lambda epoch: 0.1 if epoch < 2 else 1.0, epochs=40, budget=30)
    assert trainer.current_epoch == 6 and trainer.should_stop  # stopped by the budget, below its planned 37
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed, again = _fit(lambda epoch: 1.0, epochs=40, budget=30, ckpt_path=tmp_path / "last.ckpt")
    assert again.spent >= 30 and (resumed.current_epoch, resumed.global_step) == (6, trainer.global_step)
    assert resumed.lightning_module.clock.now == 0.0  # not one training step taken


def test_the_plan_times_the_second_epoch_not_the_first_ones_start_up_costs():
    # epoch 0 pays a one-time 3 s (its first step); steady epochs take 0.8 s: planning from epoch 0 would allow
    # 1 + (30 - 3.7) / 3.7 = 8 epochs, the steady epoch allows 2 + (30 - 4.5) / 0.8 = 33
    clock = {"first": True}

    def cost(epoch: int) -> float:
        if clock["first"]:
            clock["first"] = False
            return 3.0
        return 0.1

    trainer, budget = _fit(cost, epochs=60, budget=30)
    assert budget.planned_epochs == 33 and trainer.current_epoch == 33


def test_a_nonpositive_budget_is_refused():
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0)


def test_layer_decay_scales_each_timm_layer_by_its_depth_below_the_top():
    backbone = create_backbone("vit-tiny", weights="none", in_chans=1)
    head = torch.nn.Linear(backbone.num_features, 3)
    groups = layer_decay_groups(backbone.model, head.parameters(), weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    # timm's layers: stem 0, blocks 1..depth (the final norm joins the last block); the head is layer depth + 1
    depth = len(backbone.model.blocks)
    named = dict(backbone.model.named_parameters())
    assert scale[id(named["patch_embed.proj.weight"])] == pytest.approx(0.5 ** (depth + 1))
    assert scale[id(named["cls_token"])] == pytest.approx(0.5 ** (depth + 1))
    for i in range(depth):
        assert scale[id(named[f"blocks.{i}.attn.qkv.weight"])] == pytest.approx(0.5 ** (depth - i))
    assert scale[id(named["norm.weight"])] == pytest.approx(0.5)
    assert scale[id(head.weight)] == scale[id(head.bias)] == 1.0  # the head sits on top
    assert decay[id(head.weight)] == 0.05 and decay[id(head.bias)] == 0.0  # matrices decay, biases never
    assert decay[id(named["blocks.0.norm1.weight"])] == 0.0
    every = {id(p) for p in [*backbone.model.parameters(), *head.parameters()]}
    assert set(scale) == every  # every parameter in exactly one group
    assert sum(len(g["params"]) for g in groups) == len(every)


def test_an_epoch_longer_than_the_budget_is_planned_in_steps_and_its_cosine_still_ends_at_zero():
    """One epoch (8 s) is most of the 12 s budget: planned after it, its learning rate would never have decayed.
    Steps 2 and 3 time the run (1 s each; the first step's start-up excluded), so at step 3 the plan is 12 steps:
    the cosine ends there, in the second epoch, and the run stops at it."""
    trainer, budget = _fit(lambda epoch: 1.0, epochs=40, budget=12)
    assert budget.planned_steps == 12 and budget.planned_epochs == 2
    assert trainer.global_step == 12 and budget.spent == pytest.approx(12.0)
    rule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert (rule.warmup_steps, rule.total_steps) == (4, 12)  # the warm-up keeps its share, one past the steps taken
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    assert trainer.callback_metrics["budget/steps"] == 12


def test_a_budget_shorter_than_one_epoch_stops_inside_it_with_the_cosine_at_zero(tmp_path):
    trainer, budget = _fit(lambda epoch: 1.0, epochs=40, budget=5)
    assert (budget.planned_steps, trainer.global_step, trainer.current_epoch) == (5, 5, 1)
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    trainer.save_checkpoint(tmp_path / "last.ckpt")  # a rerun resumes it: finished, it trains no more
    resumed, again = _fit(lambda epoch: 1.0, epochs=40, budget=5, ckpt_path=tmp_path / "last.ckpt")
    assert again.planned_steps == 5 and resumed.global_step == 5 and resumed.lightning_module.clock.now == 0.0


def test_an_epoch_well_inside_the_budget_is_not_planned_in_steps():
    trainer, budget = _fit(lambda epoch: 1.0, epochs=40, budget=32, warmup_epochs=10)  # 8 s epochs: 4 fit
    assert budget.planned_steps is None and budget.planned_epochs == 4 and trainer.global_step == 32


def test_a_last_epoch_that_fits_is_not_planned_in_steps():
    """One 8 s epoch allowed, 12 s of budget: nothing to shorten, and nothing planned or logged as if a second epoch
    were coming."""
    trainer, budget = _fit(lambda epoch: 1.0, epochs=1, budget=12)
    assert budget.planned_steps is None and trainer.global_step == 8
    assert trainer.callback_metrics["budget/epochs"] == 1 and "budget/steps" not in trainer.callback_metrics


_DDP_SCRIPT = """
import json, os
import lightning as L, torch
from torch.utils.data import DataLoader, TensorDataset
from medvision.engine.budget import TimeBudget
from medvision.engine.schedule import warmup_cosine

rank = int(os.environ.get("LOCAL_RANK", "0"))


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


clock = Clock()


class Timed(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        clock.now += 1.0 if rank == 0 else 1.5  # rank 1's steps look slower: alone it would plan 8 steps, not 12
        return (self.w - batch[0].mean()) ** 2

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return warmup_cosine(opt, self.trainer, warmup_epochs=1, epochs=40)


budget = TimeBudget(12, clock=clock)
trainer = L.Trainer(
    max_epochs=40, accelerator="cpu", devices=2, strategy="ddp", callbacks=[budget], logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
)
trainer.fit(Timed(), DataLoader(TensorDataset(torch.randn(16, 1)), batch_size=1))  # 8 steps per rank and epoch
with open(f"result-{rank}.json", "w") as out:
    json.dump({"rank": rank, "steps": trainer.global_step, "planned": budget.planned_steps}, out)
"""


@pytest.mark.slow
def test_ranks_whose_clocks_differ_follow_rank_0s_plan_instead_of_hanging(tmp_path):
    """Two DDP processes on CPU whose steps take 1 s and 1.5 s on their own clocks: each would plan its own stop
    (12 and 8 steps), and the rank stopping first would leave the other waiting in an all-reduce for ever. Both
    follow rank 0's plan."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp_budget.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("result-*.json"))]
    assert sorted(r["rank"] for r in results) == [0, 1], done.stderr[-3000:]
    assert [(r["steps"], r["planned"]) for r in results] == [(12, 12), (12, 12)]
