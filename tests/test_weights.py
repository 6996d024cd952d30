"""Weight sources: files in every supported wrapping, saved backbone folders, MLflow artifacts, and the hub's
fail-fast offline path. Every "pretrained" checkpoint here is written by the test itself; nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from medvision.models import (
    Backbone,
    HubUnavailableError,
    WeightsError,
    create_backbone,
    fetch_weights,
    load_backbone_dir,
    save_backbone,
    upcycle,
)


def _assert_same_outputs(a: Backbone, b: Backbone, in_chans: int | None = None) -> None:
    a.eval()
    b.eval()
    c = in_chans or a.weights_record.in_chans
    x = torch.rand(2, c, *a.weights_record.input_size[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _random(name: str, seed: int, **kwargs) -> Backbone:
    torch.manual_seed(seed)
    return create_backbone(name, **kwargs)


# --- file: ---------------------------------------------------------------------------------------------------


def test_pth_state_dict_loads_identically_and_records_sha256(tmp_path):
    src = _random("bit-tiny", seed=0)
    path = tmp_path / "bit.pth"
    torch.save(src.model.state_dict(), path)
    loaded = _random("bit-tiny", seed=1, weights=f"file:{path}")
    _assert_same_outputs(src, loaded)
    assert loaded.weights_record.sha256 == _sha256(path)
    assert loaded.weights_record.source == f"file:{path}"


def test_safetensors_loads_identically(tmp_path):
    src = _random("vit-tiny", seed=0)
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(src.model.state_dict(), str(path))
    loaded = _random("vit-tiny", seed=1, weights=f"file:{path}")
    _assert_same_outputs(src, loaded)
    assert loaded.weights_record.sha256 == _sha256(path)


def test_classifier_head_in_checkpoint_is_dropped(tmp_path):
    torch.manual_seed(0)
    upstream = timm.create_model(
        "vit_tiny_patch16_224", num_classes=7, img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2
    )
    path = tmp_path / "with_head.pt"
    torch.save(upstream.state_dict(), path)
    assert "head.weight" in torch.load(path)
    loaded = _random("vit-tiny", seed=1, weights=f"file:{path}")
    assert loaded.weights_record.num_classes_upstream == 7
    upstream.reset_classifier(0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), upstream.eval()((x - 0.5) / 0.5))


def test_wrapped_and_prefixed_checkpoint_loads(tmp_path):
    # A Lightning-style checkpoint: nested under "state_dict", keys prefixed by the module that held the
    # backbone, a task head beside it, and bookkeeping entries.
    src = _random("resnet-tiny", seed=0)
    state = {f"backbone.model.{k}": v for k, v in src.model.state_dict().items()}
    state["head.linear.weight"] = torch.zeros(3, src.num_features)
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 30}, path)
    loaded = _random("resnet-tiny", seed=1, weights=f"file:{path}")
    _assert_same_outputs(src, loaded)


def test_wrong_checkpoint_names_the_keys(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(_random("vit-tiny", seed=0).model.state_dict(), path)
    with pytest.raises(WeightsError, match=r"vit\.pth does not fit backbone 'bit-tiny'.*missing.*stem\.conv\.weight"):
        create_backbone("bit-tiny", weights=f"file:{path}")
    with pytest.raises(WeightsError, match=r"shape mismatch \(e\.g\. cls_token"):
        create_backbone("vit-tiny", weights=f"file:{path}", embed_dim=48)


def test_dense_checkpoint_into_moe_model_says_to_upcycle(tmp_path):
    path = tmp_path / "dense.safetensors"
    safetensors.torch.save_file(_random("vit-tiny", seed=0).model.state_dict(), str(path))
    with pytest.raises(WeightsError, match="upcycle"):
        create_backbone("vmoe-vit-tiny", weights=f"file:{path}")


def test_unreadable_and_missing_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("vit-tiny", weights=f"file:{tmp_path / 'nope.pth'}")
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(WeightsError, match="unsupported weights format '.txt'"):
        create_backbone("vit-tiny", weights=f"file:{bad}")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a pickle")
    with pytest.raises(WeightsError, match="garbage.pth"):
        create_backbone("vit-tiny", weights=f"file:{garbage}")


def test_one_channel_stem_sums_the_rgb_filters(tmp_path):
    # With equal per-channel statistics (0.5) and a plain conv stem, a grey image through the adapted
    # one-channel stem equals the same image copied into R, G and B through the original three-channel stem.
    # (BiT's weight-standardised stem re-standardises the summed filter, so there it is only close.)
    src = _random("vit-tiny", seed=0).eval()
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(src.model.state_dict(), str(path))
    grey = create_backbone("vit-tiny", weights=f"file:{path}", in_chans=1).eval()
    assert grey.weights_record.mean == (0.5,) and grey.weights_record.input_size[0] == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), src(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def _write_bit_npz(model: torch.nn.Module, path: Path, num_classes: int) -> None:
    """The layout of Google's original BiT release (HWIO kernels under ``resnet/``)."""

    def hwio(w: torch.Tensor) -> np.ndarray:
        return w.detach().permute(2, 3, 1, 0).numpy()

    arrays = {
        "resnet/root_block/standardized_conv2d/kernel": hwio(model.stem.conv.weight),
        "resnet/group_norm/gamma": model.norm.weight.detach().numpy(),
        "resnet/group_norm/beta": model.norm.bias.detach().numpy(),
        "resnet/head/conv2d/kernel": np.ones((1, 1, model.num_features, num_classes), np.float32),
        "resnet/head/conv2d/bias": np.zeros(num_classes, np.float32),
    }
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            unit = f"resnet/block{i + 1}/unit{j + 1:02d}/"
            for part, conv, norm in (
                ("a", block.conv1, block.norm1),
                ("b", block.conv2, block.norm2),
                ("c", block.conv3, block.norm3),
            ):
                arrays[f"{unit}{part}/standardized_conv2d/kernel"] = hwio(conv.weight)
                arrays[f"{unit}{part}/group_norm/gamma"] = norm.weight.detach().numpy()
                arrays[f"{unit}{part}/group_norm/beta"] = norm.bias.detach().numpy()
            if block.downsample is not None:
                arrays[f"{unit}a/proj/standardized_conv2d/kernel"] = hwio(block.downsample.conv.weight)
    np.savez(path, **arrays)


def test_bit_npz_loads_through_timms_loader(tmp_path):
    src = _random("bit-tiny", seed=0)
    path = tmp_path / "BiT-tiny.npz"
    _write_bit_npz(src.model, path, num_classes=5)
    loaded = _random("bit-tiny", seed=1, weights=f"file:{path}")
    _assert_same_outputs(src, loaded)
    assert loaded.weights_record.sha256 == _sha256(path)
    assert loaded.weights_record.num_classes_upstream == 5
    with pytest.raises(WeightsError, match="npz"):
        create_backbone("vit-tiny", weights=f"file:{path}")


# --- save_backbone / load_backbone_dir -----------------------------------------------------------------------


def test_saved_folder_round_trips_with_record(tmp_path):
    src = _random("vit-tiny", seed=0, in_chans=1)
    folder = save_backbone(src, tmp_path / "bb")
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.safetensors", "weights_record.json"]
    saved = json.loads((folder / "weights_record.json").read_text())
    assert saved["weights_record"]["sha256"] == _sha256(folder / "backbone.safetensors")

    loaded = load_backbone_dir(folder)
    _assert_same_outputs(src, loaded)
    assert loaded.weights_record.in_chans == 1 and loaded.weights_record.mean == src.weights_record.mean
    assert loaded.weights_record.sha256 == saved["weights_record"]["sha256"]
    # file:DIR is the same thing through create_backbone
    _assert_same_outputs(src, create_backbone("vit-tiny", weights=f"file:{folder}", in_chans=1))


def test_saved_moe_and_upcycled_backbones_rebuild_their_layout(tmp_path):
    moe = _random("vmoe-vit-tiny", seed=0)
    _assert_same_outputs(moe, load_backbone_dir(save_backbone(moe, tmp_path / "moe")))
    up = upcycle(_random("vit-tiny", seed=0, img_size=48), num_experts=3, layers=[1], kind="softmoe")
    reloaded = load_backbone_dir(save_backbone(up, tmp_path / "up"))
    assert [type(m).__name__ for m in reloaded.moe_layers()] == ["SoftMoE"]
    assert reloaded.weights_record.input_size == (3, 48, 48)
    _assert_same_outputs(up, reloaded)


def test_modified_saved_weights_are_detected(tmp_path):
    folder = save_backbone(_random("vit-tiny", seed=0), tmp_path / "bb")
    weights = safetensors.torch.load_file(str(folder / "backbone.safetensors"))
    weights["cls_token"] = weights["cls_token"] + 1
    safetensors.torch.save_file(weights, str(folder / "backbone.safetensors"))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_backbone_dir(folder)


def test_saved_folder_refuses_another_backbone_name(tmp_path):
    folder = save_backbone(_random("bit-tiny", seed=0), tmp_path / "bb")
    with pytest.raises(WeightsError, match="saved for backbone 'bit-tiny', not 'vit-tiny'"):
        create_backbone("vit-tiny", weights=f"file:{folder}")
    with pytest.raises(WeightsError, match="not a saved backbone"):
        load_backbone_dir(tmp_path)


# --- mlflow: -------------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_experiment(tmp_path, monkeypatch):
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("backbones", artifact_location=(tmp_path / "artifacts").as_uri())
    yield experiment
    mlflow.set_tracking_uri(previous)


def test_mlflow_artifact_loads_identically(tmp_path, mlflow_experiment):
    src = _random("softmoe-vit-tiny", seed=0)
    with mlflow.start_run(experiment_id=mlflow_experiment) as run:
        mlflow.log_artifacts(str(save_backbone(src, tmp_path / "bb")), artifact_path="backbone")
    uri = f"mlflow:runs:/{run.info.run_id}/backbone"
    loaded = create_backbone("softmoe-vit-tiny", weights=uri)
    _assert_same_outputs(src, loaded)
    assert loaded.weights_record.source == uri
    assert loaded.weights_record.sha256 == _sha256(tmp_path / "bb" / "backbone.safetensors")
    with pytest.raises(WeightsError, match="could not download MLflow artifact"):
        create_backbone("softmoe-vit-tiny", weights="mlflow:runs:/0123456789abcdef0123456789abcdef/backbone")


# --- hub: ----------------------------------------------------------------------------------------------------


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.timeout(60)
def test_hub_offline_fails_fast_and_says_what_to_do(empty_hf_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        create_backbone("vit-b16", weights="hub")
    assert "file:" in str(err.value) and "medvision weights fetch vit-b16 --to DIR" in str(err.value)
    with pytest.raises(HubUnavailableError):
        fetch_weights("vit-b16", tmp_path / "out")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_fast(empty_hf_cache, monkeypatch):
    # A loopback port nobody listens on: the connection is refused at once, without leaving the machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="unavailable"):
        create_backbone("siglip-b16", weights="hub")
    assert time.monotonic() - start < 10


def test_cached_hub_weights_load_offline_and_fetch_to_a_file(empty_hf_cache, monkeypatch, tmp_path):
    # Put "hub" weights into a Hugging Face cache the way huggingface_hub lays it out, then go offline.
    name = "test_vit.r160_in1k"  # timm's own 0.3M-parameter test ViT, a real pretrained tag
    repo = empty_hf_cache / f"models--timm--{name}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(0)
    upstream = timm.create_model("test_vit", num_classes=1000)
    safetensors.torch.save_file(upstream.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    hub = create_backbone(name, weights="hub")
    record = hub.weights_record
    assert record.source == f"hub:{name}" and record.sha256 is None
    assert record.licence == "apache-2.0" and record.num_classes_upstream == 1000
    assert record.input_size == (3, 160, 160)
    upstream.reset_classifier(0)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(hub.eval()(x), upstream.eval()((x - 0.5) / 0.5))

    path = fetch_weights(name, tmp_path / "weights")
    assert path == tmp_path / "weights" / f"{name}.safetensors" and path.with_suffix(".json").is_file()
    local = create_backbone(name, weights=f"file:{path}")
    _assert_same_outputs(hub, local)
    assert local.weights_record.sha256 == _sha256(path)
    assert local.weights_record.licence == "apache-2.0"  # carried by the fetched record
