"""Pretrained vision backbones behind one contract (see the method spec §1, §8, §9).

``create_backbone(name, weights)`` returns a :class:`Backbone`: images ``(B, C, H, W)`` in ``[0, 1]`` in, a pooled
``(B, num_features)`` embedding out, normalisation by the weights' own mean/std applied inside, and a frozen
:class:`WeightsRecord` saying where the weights came from. Mixture-of-experts ViTs (Soft MoE, V-MoE) and sparse
upcycling of dense ViTs live here too.

Example:
    >>> from medvision.models import create_backbone, list_backbones
    >>> "bit-m-r50x1" in list_backbones()
    True
    >>> bb = create_backbone("vit-tiny", weights="none", in_chans=1)
"""

# The zoo registers the named backbones (bit-*, vit-*, siglip-*, MoE variants) into the registry on import.
import medvision.models.zoo  # noqa: E402, F401, I001
from medvision.models.artifact import save_backbone
from medvision.models.backbone import Backbone
from medvision.models.errors import HubUnavailableError, UnknownBackboneError, WeightsError
from medvision.models.factory import create_backbone, fetch_weights, load_backbone_dir, offline_weights
from medvision.models.moe import MoEConfig, SoftMoE, SparseMoE
from medvision.models.record import WeightsRecord
from medvision.models.registry import BackboneSpec, get_backbone_spec, list_backbones, register_backbones
from medvision.models.upcycle import upcycle
from medvision.models.weights import parse_weights

__all__ = [
    "Backbone",
    "BackboneSpec",
    "HubUnavailableError",
    "MoEConfig",
    "SoftMoE",
    "SparseMoE",
    "UnknownBackboneError",
    "WeightsError",
    "WeightsRecord",
    "create_backbone",
    "fetch_weights",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone_dir",
    "offline_weights",
    "parse_weights",
    "register_backbones",
    "save_backbone",
    "upcycle",
]
