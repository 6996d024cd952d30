"""Mixture-of-experts layers and sparse upcycling (method spec §8), checked against the equations directly."""

from __future__ import annotations

import pydantic
import pytest
import torch
import torch.nn.functional as F

from medvision.models import MoEConfig, SoftMoE, SparseMoE, create_backbone, upcycle
from medvision.models.upcycle import moe_block_indices


def _dense(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("vit-tiny").eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


# --- sparse upcycling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_model_with_identical_experts_equals_the_dense_model(top_k):
    dense = _dense()
    before = dense(_images()).detach()
    # capacity_factor = E gives every expert room for every token, so nothing overflows.
    moe = upcycle(dense, num_experts=4, kind="vmoe", top_k=top_k, capacity_factor=4.0).eval()
    assert len(moe.moe_layers()) == 2  # last half of 4 blocks
    with torch.no_grad():
        torch.testing.assert_close(moe(_images()), dense(_images()), rtol=1e-5, atol=1e-5)
    # The dense input is left as it was.
    assert dense.moe_layers() == []
    torch.testing.assert_close(dense(_images()).detach(), before, rtol=0, atol=0)


def test_upcycled_block_equals_the_dense_block():
    dense = _dense()
    moe = upcycle(dense, num_experts=3, layers=[2], kind="vmoe", top_k=1, capacity_factor=3.0).eval()
    tokens = torch.randn(2, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(moe.model.blocks[2](tokens), dense.model.blocks[2](tokens), rtol=1e-5, atol=1e-5)
        # The same block with V-MoE's un-normalised gates scales the MLP by the gate: no longer equal.
        raw = upcycle(dense, num_experts=3, layers=[2], top_k=1, capacity_factor=3.0, normalize_gates=False)
        assert not torch.allclose(raw.eval().model.blocks[2](tokens), dense.model.blocks[2](tokens), atol=1e-4)


def test_upcycling_copies_weights_and_tiles_experts():
    dense = _dense()
    moe = upcycle(dense, num_experts=4, layers=[3], kind="softmoe", slots_per_expert=2)
    mlp = dense.model.blocks[3].mlp
    layer = moe.model.blocks[3].mlp
    assert isinstance(layer, SoftMoE)
    for e in range(4):
        torch.testing.assert_close(layer.experts.fc1_weight[e], mlp.fc1.weight)
        torch.testing.assert_close(layer.experts.fc2_bias[e], mlp.fc2.bias)
    torch.testing.assert_close(moe.model.blocks[3].attn.qkv.weight, dense.model.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(moe.model.patch_embed.proj.weight, dense.model.patch_embed.proj.weight)


def test_upcycle_refuses_non_vits_and_moe_inputs():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="blocks"):
        upcycle(create_backbone("bit-tiny"), num_experts=2)
    with pytest.raises(ValueError, match="already has MoE"):
        upcycle(create_backbone("vmoe-vit-tiny"), num_experts=2)


# --- Soft MoE ----------------------------------------------------------------------------------------------


def _soft_moe_by_the_equations(layer: SoftMoE, x: torch.Tensor) -> torch.Tensor:
    n, p = layer.num_experts, layer.slots_per_expert
    ex = layer.experts
    out = []
    for seq in x:  # one sequence X, m x d
        logits = layer.scale * F.normalize(seq, dim=1) @ F.normalize(layer.phi, dim=0)
        dispatch = logits.softmax(dim=0)  # over tokens, per slot
        combine = logits.softmax(dim=1)  # over slots, per token
        slots = dispatch.T @ seq
        ys = [
            F.linear(
                F.gelu(F.linear(slots[i * p : (i + 1) * p], ex.fc1_weight[i], ex.fc1_bias[i])),
                ex.fc2_weight[i],
                ex.fc2_bias[i],
            )
            for i in range(n)
        ]
        out.append(combine @ torch.cat(ys))
    return torch.stack(out)


def test_soft_moe_matches_its_equations():
    torch.manual_seed(0)
    layer = SoftMoE(dim=16, hidden_dim=24, num_experts=3, slots_per_expert=2)
    with torch.no_grad():
        layer.scale.fill_(2.5)
        for p in (layer.experts.fc1_bias, layer.experts.fc2_bias):
            p.normal_()
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(layer(x), _soft_moe_by_the_equations(layer, x), rtol=1e-5, atol=1e-5)
    assert float(layer.last_aux_loss) == 0.0


def test_soft_moe_gradients_reach_every_expert_the_slots_and_the_scale():
    torch.manual_seed(0)
    bb = create_backbone("softmoe-vit-tiny")
    bb(_images()).pow(2).mean().backward()
    layers = bb.moe_layers()
    assert len(layers) == 2
    for layer in layers:
        assert layer.phi.grad is not None and layer.phi.grad.abs().sum() > 0
        assert layer.scale.grad is not None and layer.scale.grad.abs() > 0
        for e in range(layer.num_experts):
            assert layer.experts.fc1_weight.grad[e].abs().sum() > 0, f"expert {e} got no gradient"
            assert layer.experts.fc2_weight.grad[e].abs().sum() > 0, f"expert {e} got no gradient"


# --- V-MoE -------------------------------------------------------------------------------------------------


def _route_by_feature0(layer: SparseMoE, strength: dict[int, float]) -> None:
    """Make expert e's logit ``strength[e] * x[..., 0]`` and every other logit 0."""
    with torch.no_grad():
        layer.router.weight.zero_()
        for e, s in strength.items():
            layer.router.weight[e, 0] = s


def test_capacity_drops_overflow_tokens_to_zero():
    torch.manual_seed(0)
    layer = SparseMoE(dim=8, hidden_dim=16, num_experts=4, top_k=1, capacity_factor=1.05).eval()
    _route_by_feature0(layer, {0: 20.0})  # everyone wants expert 0
    x = torch.randn(1, 12, 8)
    x[..., 0] = 1.0 + torch.rand(1, 12)
    assert layer.capacity(12) == 3  # round(1 * 12 * 1.05 / 4)
    y = layer(x)
    gates = (x @ layer.router.weight.T).softmax(-1)[..., 0]
    expert0 = layer.experts(x[0].expand(4, 12, 8))[0]
    torch.testing.assert_close(y[0, :3], gates[0, :3, None] * expert0[:3])  # first come, first served
    assert torch.count_nonzero(y[0, 3:]) == 0  # overflow: the residual carries them


def test_top2_serves_all_first_choices_before_any_second_choice():
    torch.manual_seed(0)
    layer = SparseMoE(dim=8, hidden_dim=16, num_experts=2, top_k=2, capacity_factor=0.5).eval()
    _route_by_feature0(layer, {0: 1.0, 1: -1.0})
    x = torch.randn(1, 8, 8)
    x[0, :4, 0], x[0, 4:, 0] = 1.0, -1.0  # tokens 0-3 prefer expert 0, tokens 4-7 expert 1
    assert layer.capacity(8) == 4
    y = layer(x)
    gates = (x @ layer.router.weight.T).softmax(-1)[0]
    outs = layer.experts(x[0].expand(2, 8, 8))
    first = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    expected = gates[torch.arange(8), first, None] * outs[first, torch.arange(8)]
    torch.testing.assert_close(y[0], expected)  # every second choice overflowed, no first choice did


def test_routing_noise_only_in_training():
    torch.manual_seed(0)
    layer = SparseMoE(dim=8, hidden_dim=16, num_experts=4, top_k=1)
    x = torch.randn(2, 16, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_aux_losses_are_finite_positive_and_train_the_router():
    torch.manual_seed(0)
    bb = create_backbone("vmoe-vit-tiny").train()
    bb(_images(4))
    aux = bb.aux_loss()
    assert torch.isfinite(aux) and aux > 0
    per_layer = [m.last_aux_loss for m in bb.moe_layers()]
    assert all(torch.isfinite(a) and a > 0 for a in per_layer)
    torch.testing.assert_close(aux, torch.stack(per_layer).sum())
    aux.backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in bb.moe_layers())
    dense = create_backbone("vit-tiny")
    dense(_images())
    assert float(dense.aux_loss()) == 0.0


# --- configuration -----------------------------------------------------------------------------------------


def test_moe_config_rejects_typos_and_contradictions():
    with pytest.raises(pydantic.ValidationError, match="num_expert"):
        MoEConfig(kind="vmoe", num_expert=4)
    with pytest.raises(pydantic.ValidationError):
        MoEConfig(kind="vmoe", num_experts=4, top_k=3)
    with pytest.raises(pydantic.ValidationError, match="only apply to kind='vmoe'"):
        MoEConfig(kind="softmoe", num_experts=4, top_k=2)
    with pytest.raises(pydantic.ValidationError, match="exceeds"):
        MoEConfig(kind="vmoe", num_experts=1, top_k=2)


def test_moe_layers_default_to_the_last_half():
    assert moe_block_indices(12, None) == tuple(range(6, 12))
    assert moe_block_indices(4, [-1, 0]) == (0, 3)
    with pytest.raises(ValueError, match="outside the model's 4 blocks"):
        moe_block_indices(4, [4])
