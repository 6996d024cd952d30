"""The fine-tuning engine: it learns, it resumes exactly after a hard kill, it runs under DDP."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch.utils.data import DataLoader, Dataset

from medvision.config import parse_config
from medvision.data.dataset import CohortDataModule
from medvision.engine.config import OptimConfig
from medvision.engine.schedule import WarmupCosine
from medvision.engine.trainer import build_trainer, last_checkpoint_path, resume_checkpoint
from medvision.heads import create_head
from medvision.training import Classifier, FinetuneConfig, FinetuneModule, build_classifier, finetune

# A driver script run in a fresh interpreter: fine-tune from a YAML, optionally SIGKILL itself when
# the global step reaches N (a hard crash: no exception handler, no checkpoint on the way out).
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from medvision.config import load_config
    from medvision.training import FinetuneConfig, finetune

    class KillAt(Callback):
        def __init__(self, step):
            self.step = step
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = load_config(sys.argv[1], FinetuneConfig)
    kill = int(sys.argv[2]) if len(sys.argv) > 2 else -1
    finetune(cfg, callbacks=[KillAt(kill)] if kill >= 0 else [])
    """
)


def _config(cohort: Path, tmp_path: Path, name: str, **sections) -> dict:
    raw = {
        "data": {"cohort_dir": str(cohort), "batch_size": 16},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"name": "sgd", "lr": 0.01, "epochs": 2, "warmup_epochs": 0.5},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp_path / name),
        "seed": 3,
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-finetune"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def _run_driver(tmp_path: Path, raw: dict, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cfg_path = tmp_path / f"{Path(raw['output_dir']).name}.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, str(script), str(cfg_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


# -- the full engine on a synthetic cohort -------------------------------------------------------


def test_short_finetune_lifts_val_auroc_well_above_chance(synth_cxr_cohort, tmp_path):
    raw = _config(
        synth_cxr_cohort,
        tmp_path,
        "learn",
        data={"batch_size": 32},
        optim={"name": "adamw", "lr": 0.01, "epochs": 8, "warmup_epochs": 1},
        resume="never",
    )
    result = finetune(parse_config(raw, FinetuneConfig))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = [m.value for m in sorted(client.get_metric_history(result.run_id, "val/auroc"), key=lambda m: m.step)]
    assert len(history) == 8
    assert history[0] < 0.75  # starts near chance (random init) ...
    assert result.best_score is not None and result.best_score > 0.85  # ... and learns the planted patterns
    assert result.metrics["val/auroc"] > 0.8
    losses = [m.value for m in sorted(client.get_metric_history(result.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses[-1] < 0.8 * losses[0]
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert (tmp_path / "learn" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_hard_kill_then_resume_auto_equals_an_uninterrupted_run(synth_cxr_cohort, tmp_path):
    # HET draws Monte-Carlo noise every step: only per-epoch reseeding makes the resumed run match. Augmentation
    # (the radiograph preset here) draws its seeds from (seed, epoch, position): the resumed views match too.
    het = {"name": "het", "options": {"num_samples": 8, "eval_samples": 8}}
    common = {
        "data": {"label_fraction": 0.1, "batch_size": 8},
        "head": het,
        "optim": {"epochs": 3, "warmup_epochs": 1},
        "augment": {"preset": "auto"},
    }
    killed = _config(synth_cxr_cohort, tmp_path, "killed", **common)
    n_train = len(CohortDataModule(synth_cxr_cohort, label_fraction=0.1).dataset("train"))
    steps_per_epoch = n_train // 8  # the last partial batch is dropped
    assert steps_per_epoch >= 2
    proc = _run_driver(tmp_path, killed, str(steps_per_epoch + 1))  # mid-epoch 2, after epoch 1's checkpoint
    assert proc.returncode == -9, proc.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == steps_per_epoch and state["epoch"] == 0  # only epoch 1 completed

    cfg = parse_config(killed, FinetuneConfig)
    assert resume_checkpoint(cfg) == last
    resumed = finetune(cfg)
    straight = finetune(parse_config(_config(synth_cxr_cohort, tmp_path, "straight", **common), FinetuneConfig))

    a = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=False)
    b = torch.load(straight.last_checkpoint, map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 3 * steps_per_epoch  # every epoch rewrote last.ckpt
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # the resumed process continued the killed process's MLflow run; the metrics carry epochs 0..2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(resumed.run_id, "train/loss")) == [0, 1, 2]
    assert resumed.run_id != straight.run_id


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_and_logs_exactly_one_run(synth_cxr_cohort, tmp_path):
    raw = _config(
        synth_cxr_cohort,
        tmp_path,
        "ddp",
        data={"label_fraction": 0.1, "batch_size": 4},
        trainer={"strategy": "ddp", "devices": 2},
        resume="never",
    )
    proc = _run_driver(tmp_path, raw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test-finetune")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.strategy"] == "ddp" and run.data.params["trainer.devices"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")) == [0, 1]
    assert "model" in {f.path for f in client.list_artifacts(run.info.run_id)}


def test_resume_from_a_missing_checkpoint_fails_naming_it(synth_cxr_cohort, tmp_path):
    cfg = parse_config(_config(synth_cxr_cohort, tmp_path, "x", resume=str(tmp_path / "nope.ckpt")), FinetuneConfig)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        finetune(cfg)


# -- the module and its modes on a tiny in-memory data module -------------------------------------


class _Blobs(Dataset):
    """Grey 16 px images whose class is the brightness of the left half: learnable in a few steps."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.rand(n, 1, 16, 16, generator=g) * 0.5
        self.x[:, :, :, :8] += 0.5 * self.y.view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


class _ToyData(L.LightningDataModule):
    classes = ["a", "b"]
    num_inlier_classes, num_outlier_classes, in_chans, manifest_sha256 = 2, 0, 1, "toy"

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Blobs(64, 0), batch_size=16, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Blobs(32, 1), batch_size=16)


@pytest.mark.parametrize("mode", ["linear", "locked"])
def test_linear_and_locked_modes_train_only_head_and_adapter(tmp_path, mode):
    raw = _config(
        Path("unused"),
        tmp_path,
        mode,
        mode=mode,
        adapter_hidden=8 if mode == "locked" else 0,
        optim={"lr": 0.1, "epochs": 2},
        resume="never",
    )
    cfg = parse_config(raw, FinetuneConfig)
    data = _ToyData()
    clf = build_classifier(cfg, data)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(FinetuneModule(clf, cfg.optim), datamodule=data)
    after = clf.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(k.startswith(("head.", "adapter.")) for k in changed), sorted(changed)
    assert any(k.startswith("adapter.") for k in changed) == (mode == "locked")


def test_a_frozen_backbone_trains_without_lightnings_eval_mode_warning(tmp_path):
    # The frozen backbone is in eval mode on purpose; Lightning's warning about it has nothing for the user to do.
    raw = _config(Path("unused"), tmp_path, "frozen", mode="linear", optim={"lr": 0.1, "epochs": 1}, resume="never")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(parse_config(raw, FinetuneConfig), datamodule=_ToyData())
    assert not [str(w.message) for w in caught if "eval mode" in str(w.message)]


@pytest.mark.slow
def test_trainer_stops_early_and_rewrites_last_checkpoint_every_epoch(tmp_path):
    # monitor val/loss with mode max: the loss falls, so no epoch after the first is "better" and
    # patience 1 stops at epoch 2; last.ckpt must still hold epoch 2 while the best stays epoch 1
    raw = _config(
        Path("unused"),
        tmp_path,
        "early",
        optim={"lr": 0.05, "epochs": 10},
        monitor={"metric": "val/loss", "mode": "max", "patience": 1},
        resume="never",
    )
    cfg = parse_config(raw, FinetuneConfig)
    data = _ToyData()
    trainer = build_trainer(cfg)
    trainer.fit(FinetuneModule(build_classifier(cfg, data), cfg.optim), datamodule=data)
    assert trainer.current_epoch == 2 and trainer.global_step == 8  # 2 epochs x 4 batches, not 10 epochs
    last = torch.load(last_checkpoint_path(cfg), map_location="cpu", weights_only=False)
    assert last["global_step"] == 8
    assert Path(trainer.checkpoint_callback.best_model_path).name == "best-epoch=000.ckpt"


def test_hod_validation_reports_ood_auroc_over_outlier_conditions():
    head = create_head("hod", 4, 2, num_outlier_classes=1)
    clf = Classifier(_FlatBackbone(), head, ["a", "b"])
    module = FinetuneModule(clf, OptimConfig())
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    ood = torch.tensor([0.1, 0.2, 0.9, 0.7])
    y = torch.tensor([0, 1, 2, -1])  # two inliers, a training outlier condition, an unseen one
    m = module.epoch_metrics(probs, ood, y)
    assert m["val/acc"] == 1.0 and m["val/auroc"] == 1.0 and m["val/ood_auroc"] == 1.0
    m = module.epoch_metrics(probs, torch.tensor([0.9, 0.8, 0.1, 0.2]), y)
    assert m["val/ood_auroc"] == 0.0
    assert "val/ood_auroc" not in module.epoch_metrics(probs[:2], ood[:2], y[:2])  # no outliers: undefined


class _FlatBackbone(torch.nn.Module):
    num_features = 4

    def forward(self, x):
        return x.flatten(1)[:, :4]

    def aux_loss(self):
        return 0.0


def test_warmup_then_cosine_schedule_per_step():
    s = WarmupCosine(warmup_steps=4, total_steps=12)
    values = [s(i) for i in range(12)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0 and all(a > b for a, b in zip(values[4:], values[5:]))
    assert math.isclose(s(12), 0.0, abs_tol=1e-12) and np.isclose(s(8), 0.5)


@pytest.mark.slow
def test_a_second_different_finetune_in_the_same_folder_refuses_to_resume_the_first(synth_cxr_cohort, tmp_path):
    from medvision.engine.identity import RunIdentity
    from medvision.engine.trainer import ResumeMismatch

    first = parse_config(_config(synth_cxr_cohort, tmp_path, "runs-finetune", optim={"epochs": 1}), FinetuneConfig)
    done = finetune(first)
    again = finetune(first)  # the same run, already finished: resumes, trains nothing, fails nothing
    assert again.run_id == done.run_id
    other = _config(synth_cxr_cohort, tmp_path, "runs-finetune", optim={"epochs": 1, "lr": 0.02})
    with pytest.raises(ResumeMismatch, match=r"optim\.lr: 0\.01 there, 0\.02 now.*resume=never"):
        finetune(parse_config(other, FinetuneConfig))
    # another cohort (a different manifest) is another run too, whatever the config says
    identity = RunIdentity.read(tmp_path / "runs-finetune" / "run-identity.json")
    identity.model_copy(update={"manifest_sha256": "0" * 64}).write(tmp_path / "runs-finetune" / "run-identity.json")
    with pytest.raises(ResumeMismatch, match=r"manifest_sha256: '0000"):
        finetune(first)
    fresh = finetune(parse_config({**other, "resume": "never"}, FinetuneConfig))
    assert fresh.metrics and fresh.run_id is not None


# -- what a run writing to a log shows ----------------------------------------------------------------


def test_a_finetune_writing_to_a_log_prints_one_line_per_epoch(synth_cxr_cohort, tmp_path):
    """Issue 21: a training run whose output went to a log (not a terminal) printed nothing for 39 minutes. Run the
    CLI as a user would with `> run.log 2>&1`: stdout and stderr a pipe, progress_bar left at auto."""
    raw = _config(synth_cxr_cohort, tmp_path, "logged", data={"batch_size": 64}, optim={"epochs": 2}, resume="never")
    raw["trainer"] = {"accelerator": "cpu"}  # progress_bar: auto, decided by the (piped) stderr
    raw["recipe"] = "finetune"  # one run (auto trains several candidates, each line then led by its recipe)
    cfg = tmp_path / "logged.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "medvision", "finetune", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one log
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    line = re.compile(r"finetune epoch (\d+)/2: train/loss (\d+\.\d{4}), val/auroc (\d+\.\d{4}|nan), (\d+\.\d) s$")
    found = [m for m in map(line.search, done.stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in found] == [1, 2], done.stdout[-3000:]
    assert all(float(m.group(2)) > 0 and float(m.group(4)) > 0 for m in found)
    # the last line's monitored value is the run's last val/auroc, as the command's own summary prints it
    last = re.search(r"val/auroc\s+(\d+\.\d{4})", done.stdout.split(found[-1].group(0))[-1])
    assert last is not None and last.group(1) == found[-1].group(3)
    assert "━" not in done.stdout  # no progress bar redrawn into the log


def test_a_terminal_keeps_the_progress_bar_and_gets_no_epoch_lines(tmp_path):
    from lightning.pytorch.callbacks import RichProgressBar

    from medvision.engine.epoch_lines import EpochLines

    def kinds(progress_bar) -> set[type]:
        raw = _config(Path("unused"), tmp_path, "bar", trainer={"progress_bar": progress_bar})
        return {type(c) for c in build_trainer(parse_config(raw, FinetuneConfig)).callbacks}

    assert RichProgressBar in kinds(True) and EpochLines not in kinds(True)  # what a terminal gets under auto
    assert EpochLines in kinds(False) and RichProgressBar not in kinds(False)
    assert EpochLines in kinds("auto")  # pytest's stderr is not a terminal
