"""The pretraining stage end to end on a synthetic cohort: learning, MLflow hand-off, pool, resume, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.config import ConfigError, load_config
from medvision.knn import knn_accuracy
from medvision.models import create_backbone, save_backbone
from medvision.sources.synth import synthesize
from medvision.ssl import (
    PretrainConfig,
    PretrainDataModule,
    build_pretrain_module,
    pretrain,
)
from medvision.tracking.store import using_tracking_uri


@pytest.fixture(autouse=True)
def _one_thread():
    # Shared CI cores: oversubscribed threads make tiny models ~10x slower (and change float sums).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: A test-only pseudonym key, so building a cohort never writes a key into the home folder.
_TEST_KEY = "73736c2d746573742d6b65792d666f722d6d6564766973696f6e"


def _build(root: Path, kind: str, patients: int, seed: int) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_KEY)
        build_cohort(synthesize(root / "src", kind, patients=patients, seed=seed, size=32), root / "cohort")
    return root / "cohort"


@pytest.fixture(scope="module")
def derm_cohort(tmp_path_factory) -> Path:
    """160 synthetic derm patients at 32 px (about a third with 2-4 images: true MICLe pairs)."""
    return _build(tmp_path_factory.mktemp("derm"), "derm", patients=160, seed=1)


def _config(cohort: Path, out: Path, **changes) -> dict:
    cfg = {
        "data": {"cohort_dir": str(cohort), "batch_size": 16, "pool": "train"},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "ssl": {"mode": "micle", "temperature": 0.2},
        "optim": {"name": "lars", "lr": 1.0, "epochs": 6, "warmup_epochs": 1},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(out / "run"),
        "seed": 0,
        "tracking": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "ssl-test"},
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def _embed(backbone, cohort, splits) -> tuple[torch.Tensor, torch.Tensor]:
    m = cohort.manifest
    rows = m[m["split"].isin(splits) & (m["label_idx"] >= 0)]
    x = torch.stack([torch.from_numpy(cohort.cache.to_float(cohort.cache.get(k))) for k in rows["cache_key"]])
    backbone.eval()
    with torch.no_grad():
        return backbone(x), torch.tensor(rows["label_idx"].to_numpy())


@pytest.mark.slow
def test_pretrain_raises_knn_accuracy_and_logs_a_backbone_finetune_can_load(derm_cohort, tmp_path):
    # start from a saved backbone (file: source, as REMEDIS starts from BiT weights): here a random init
    torch.manual_seed(0)
    random_init = create_backbone("resnet-tiny", "none", in_chans=3)
    save_backbone(random_init, tmp_path / "init")
    backbone = {"name": "resnet-tiny", "weights": f"file:{tmp_path / 'init'}"}
    cfg = PretrainConfig.model_validate(_config(derm_cohort, tmp_path, backbone=backbone))
    result = pretrain(cfg)

    # the logged backbone is the kept (best kNN) epoch's, loadable as a fine-tuning weight source
    with using_tracking_uri(cfg.tracking.tracking_uri):  # put back afterwards: later tests keep their stores
        loaded = create_backbone("resnet-tiny", weights=result.backbone_uri, in_chans=3)
    kept = build_pretrain_module(cfg, in_chans=3)
    kept.load_state_dict(torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    x = torch.rand(5, 3, 32, 32)
    kept.backbone.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), kept.backbone(x), atol=1e-6)
    assert loaded.weights_record.source.startswith("mlflow:runs:/")

    # representation quality: 1-NN accuracy of held-back labelled images against the training images
    cohort = open_cohort(derm_cohort)
    before = knn_accuracy(*_embed(random_init, cohort, ["val", "test"]), *_embed(random_init, cohort, ["train"]))
    after = knn_accuracy(*_embed(loaded, cohort, ["val", "test"]), *_embed(loaded, cohort, ["train"]))
    assert after > before + 0.05, (before, after)

    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["medvision.stage"] == "pretrain"
    assert 0.0 < run.data.metrics["train/micle_multi_instance_share"] < 1.0  # true pairs and fall-backs
    assert "val/knn_acc" in run.data.metrics and "train/loss" in run.data.metrics
    assert run.data.params["augment.resolved_preset"] == "photo"  # the fine-tuning vocabulary


def test_pool_of_a_real_cohort_excludes_heldout_sites_and_conditions(derm_cohort):
    manifest = open_cohort(derm_cohort).manifest
    heldout = set(manifest.loc[manifest["split"].isin(["site_ood", "condition_ood"]), "image_id"])
    evaluation = set(manifest.loc[manifest["split"].isin(["val", "test"]), "image_id"])
    assert heldout and evaluation
    for pool in ("train", "train+unlabelled"):
        dm = PretrainDataModule(derm_cohort, pool=pool, mode="micle", batch_size=8)
        sampler = dm.train_dataloader().sampler
        used = {int(i) for key in sampler for i in key[:2]}  # image indices of one epoch's pairs
        used_ids = set(dm.pool_rows.loc[sorted(used), "image_id"])
        assert not used_ids & heldout and not used_ids & evaluation
        assert dm.pool_rows["split"].eq("train").all()
    opted = PretrainDataModule(derm_cohort, pool="train", include_heldout=True, batch_size=8)
    assert heldout <= set(opted.pool_rows["image_id"])
    with pytest.raises(ValueError, match="pool 'unlabelled' is empty"):
        PretrainDataModule(derm_cohort, pool="unlabelled")  # the synthetic cohort labels every image


def test_grayscale_cohort_gets_the_radiograph_preset_and_simclr_pairs(tmp_path):
    dm = PretrainDataModule(_build(tmp_path, "cxr", patients=40, seed=2), pool="train", mode="simclr", batch_size=4)
    assert dm.augment_preset == "radiograph" and dm.in_chans == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["view1"].shape == batch["view2"].shape == (4, 1, 32, 32)
    assert not torch.equal(batch["view1"], batch["view2"])
    assert batch["multi_instance"].sum() == 0  # simclr: two views of one image
    assert len(dm.train_dataloader()) == len(dm.pool_rows) // 4  # every image once per epoch


def test_knn_accuracy_against_reference_and_leave_one_out():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    ref = torch.tensor([[2.0, 0.1], [0.1, 3.0]])  # scale does not matter: cosine
    assert knn_accuracy(q, torch.tensor([0, 1, 1]), ref, torch.tensor([0, 1])) == pytest.approx(2 / 3)
    # leave-one-out: 0 and 2 are each other's nearest, 1's nearest (2) has another label
    assert knn_accuracy(q, torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="both"):
        knn_accuracy(q, torch.tensor([0, 1, 0]), ref)


_RUNNER = """
import sys, time, torch
from lightning.pytorch.callbacks import Callback
from medvision.config import load_config
from medvision.ssl import PretrainConfig, pretrain
torch.set_num_threads(1)

class Slow(Callback):  # gives the test time to kill the run between two epochs
    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(2)

pretrain(load_config(sys.argv[1], PretrainConfig), callbacks=[Slow()])
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(derm_cohort, tmp_path):
    changes = {
        "optim.epochs": 3,
        "optim.name": "adamw",
        "optim.lr": 1e-3,
        "data.batch_size": 16,
        "backbone": {"name": "bit-tiny", "weights": "none"},
    }
    interrupted = _config(derm_cohort, tmp_path / "a", **changes)
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(interrupted))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_RUNNER))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last = Path(interrupted["output_dir"]) / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let the checkpoint file be complete (written atomically by Lightning)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]  # killed, not finished
    first_epoch = torch.load(last, map_location="cpu", weights_only=False)
    assert first_epoch["epoch"] < 2

    cfg = load_config(path, PretrainConfig)  # resume: auto (the default) continues from last.ckpt
    resumed = pretrain(cfg)
    reference = pretrain(
        PretrainConfig.model_validate(_config(derm_cohort, tmp_path / "b", **{**changes, "resume": "never"}))
    )

    a = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=False)
    b = torch.load(reference.last_checkpoint, map_location="cpu", weights_only=False)
    manifest = open_cohort(derm_cohort).manifest
    steps = manifest.loc[manifest["split"] == "train", "patient_id"].nunique() // 16  # MICLe: a pair per patient
    assert a["global_step"] == b["global_step"] == 3 * steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert not torch.equal(
        first_epoch["state_dict"]["backbone.model.stem.conv.weight"], a["state_dict"]["backbone.model.stem.conv.weight"]
    )  # it did train on after resuming
    # the resumed run continued the killed run's MLflow run
    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(resumed.run_id)
    assert run.data.params["seed"] == "0" and run.info.status == "FINISHED"


def test_config_is_validated_before_any_work_and_cli_names_the_key(derm_cohort, tmp_path):
    from medvision.cli.pretrain import pretrain_command

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_config(derm_cohort, tmp_path)))
    with pytest.raises(ConfigError, match="ssl.temprature"):
        load_config(path, PretrainConfig, ["ssl.temprature=0.5"])
    app = typer.Typer()
    app.command()(pretrain_command)
    result = CliRunner().invoke(app, [str(path), "--set", "optim.name=sgd"])
    assert result.exit_code == 2 and "optim.name" in result.output
    result = CliRunner().invoke(app, [str(path), "--set", "data.batch_size=4096"])
    assert result.exit_code == 2 and "global batch" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()
