"""Turning the MLPs of a timm ViT into mixture-of-experts layers, from scratch or by sparse upcycling.

Sparse upcycling (Komatsuzaki et al., "Sparse Upcycling: Training Mixture-of-Experts from Dense
Checkpoints", 2023; see the method spec §8) reuses a dense checkpoint: every dense weight is copied, each MLP
that becomes an MoE layer is tiled into all its experts, and only the routers start fresh. With top-1 routing,
normalised gates and no overflow, the upcycled model computes exactly what the dense one did, so training
starts from the dense model's quality instead of from scratch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

from torch import nn

from medvision.models.backbone import Backbone
from medvision.models.moe import MoEConfig, MoELayer, SoftMoE, SparseMoE

__all__ = ["apply_moe", "moe_block_indices", "upcycle"]


def moe_block_indices(depth: int, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Blocks to convert: ``layers`` (negative counts from the end) or, when ``None``, the last half."""
    if layers is None:
        return tuple(range(depth // 2, depth))
    resolved = []
    for i in layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"MoE layer index {i} is outside the model's {depth} blocks (0..{depth - 1})")
        resolved.append(j)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"MoE layer indices {list(layers)} name a block twice")
    return tuple(sorted(resolved))


def apply_moe(model: nn.Module, config: MoEConfig, *, copy_dense: bool) -> nn.Module:
    """Replace ``block.mlp`` of the chosen blocks of a timm ViT by MoE layers, in place.

    Args:
        model: a timm ViT-like module with ``blocks[i].mlp`` being timm's two-layer ``Mlp``.
        config: where and how (see :class:`MoEConfig`).
        copy_dense: tile each dense MLP into every expert (upcycling); otherwise experts start fresh.

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: the model has no ``blocks``, a chosen MLP is not a plain two-layer MLP, or it is already MoE.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(
            f"mixture-of-experts layers replace ViT block MLPs, but {type(model).__name__} has no `blocks`; "
            "use a ViT backbone (e.g. vit-b16, siglip-b16)"
        )
    for i in moe_block_indices(len(blocks), config.layers):
        blocks[i].mlp = _moe_from_mlp(blocks[i].mlp, config, copy_dense=copy_dense, where=f"blocks[{i}].mlp")
    return model


def upcycle(
    dense_vit: Backbone,
    num_experts: int,
    layers: Sequence[int] | None = None,
    kind: Literal["vmoe", "softmoe"] = "vmoe",
    top_k: Literal[1, 2] = 1,
    *,
    capacity_factor: float = 1.05,
    slots_per_expert: int = 1,
    normalize_gates: bool = True,
) -> Backbone:
    """Sparse-upcycle a dense ViT backbone into an MoE backbone (see the method spec §8).

    The input is left untouched; the result copies every weight of it, tiles each converted MLP into
    ``num_experts`` experts and gives each MoE layer a fresh router (V-MoE) or fresh slot parameters (Soft MoE).

    Args:
        dense_vit: a dense ViT backbone from :func:`create_backbone`.
        num_experts: experts per MoE layer.
        layers: blocks to convert; ``None`` is the last half.
        kind: ``vmoe`` (sparse top-k) or ``softmoe``.
        top_k: experts per token for ``vmoe``.
        capacity_factor: V-MoE capacity factor C; raise it to avoid dropping tokens.
        slots_per_expert: Soft MoE slots per expert.
        normalize_gates: for ``vmoe``, rescale the top-k gates to sum to one. On by default because it is what
            makes the upcycled model reproduce the dense one at the start; note that with ``top_k=1`` the gate
            is then always 1, so the router learns only from the auxiliary losses.

    Returns:
        A new :class:`Backbone` with the same weights record and a ``build_spec`` that rebuilds the MoE layout.

    Example:
        >>> from medvision.models import create_backbone
        >>> moe = upcycle(create_backbone("vit-tiny"), num_experts=4)
        >>> len(moe.moe_layers())
        2
    """
    if dense_vit.moe_layers():
        raise ValueError(f"backbone {dense_vit.weights_record.name!r} already has MoE layers; upcycle a dense one")
    config = MoEConfig(
        kind=kind,
        num_experts=num_experts,
        layers=None if layers is None else tuple(layers),
        top_k=top_k if kind == "vmoe" else 1,
        capacity_factor=capacity_factor,
        slots_per_expert=slots_per_expert if kind == "softmoe" else 1,
        normalize_gates=normalize_gates if kind == "vmoe" else False,
    )
    model = apply_moe(copy.deepcopy(dense_vit.model), config, copy_dense=True)
    build_spec = copy.deepcopy(dense_vit.build_spec)
    build_spec.setdefault("model_kwargs", {})["moe"] = config.model_dump(mode="json")
    upcycled = Backbone(model, dense_vit.weights_record, build_spec)
    return upcycled.to(dense_vit.mean.device).train(dense_vit.training)


def _moe_from_mlp(mlp: nn.Module, config: MoEConfig, *, copy_dense: bool, where: str) -> MoELayer:
    if isinstance(mlp, MoELayer):
        raise ValueError(f"{where} is already a mixture-of-experts layer")
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    norm = getattr(mlp, "norm", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)) or not isinstance(
        norm, (nn.Identity, type(None))
    ):
        raise ValueError(
            f"{where} is a {type(mlp).__name__}, not a plain fc1-act-fc2 MLP; only timm's Mlp can become MoE"
        )
    act = copy.deepcopy(getattr(mlp, "act", None)) or nn.GELU()
    drop = float(getattr(getattr(mlp, "drop1", None), "p", 0.0))
    dim, hidden = fc1.in_features, fc1.out_features
    layer: MoELayer
    if config.kind == "softmoe":
        layer = SoftMoE(dim, hidden, config.num_experts, config.slots_per_expert, act=act, drop=drop)
    else:
        layer = SparseMoE(
            dim,
            hidden,
            config.num_experts,
            top_k=config.top_k,
            capacity_factor=config.capacity_factor,
            aux_weight=config.aux_weight,
            normalize_gates=config.normalize_gates,
            act=act,
            drop=drop,
        )
    if copy_dense:
        layer.experts.copy_from_dense(fc1, fc2)
    return layer.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
