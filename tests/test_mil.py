"""The bag head: Ilse et al.'s (gated) attention computed by hand, masks that make padding invisible, the poolings
MONAI's MILModel shares reproduced, and the seeded instance cap of training bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import MILModel

from medvision.data.bags import collate_bags, sample_instances
from medvision.heads import MILHead, create_head


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_gated_attention_is_ilse_eq_9_computed_by_hand():
    torch.manual_seed(0)
    head = MILHead(6, 3, pooling="gated_attention", attention_dim=4)
    h = torch.randn(2, 5, 6)
    z, w = head.pool(h)
    V, U = _np(head.pooling.V.weight), _np(head.pooling.U.weight)
    bv, bu = _np(head.pooling.V.bias), _np(head.pooling.U.bias)
    wv, wb = _np(head.pooling.w.weight)[0], _np(head.pooling.w.bias)[0]
    for b in range(2):
        x = _np(h[b])
        gate = np.tanh(x @ V.T + bv) * (1 / (1 + np.exp(-(x @ U.T + bu))))
        score = gate @ wv + wb
        a = np.exp(score - score.max()) / np.exp(score - score.max()).sum()
        assert np.allclose(_np(w[b]), a, atol=1e-6)
        assert np.allclose(_np(z[b]), a @ x, atol=1e-5)
    logits = _np(z) @ _np(head.fc.weight).T + _np(head.fc.bias)
    assert np.allclose(_np(head(h).logits), logits, atol=1e-5)


@pytest.mark.parametrize("pooling", ["gated_attention", "attention", "mean", "max", "middle"])
def test_padding_never_changes_a_bags_output_or_gets_weight(pooling):
    torch.manual_seed(1)
    head = create_head("mil", 8, 2, pooling=pooling, attention_dim=5).eval()
    short, long = torch.randn(3, 8), torch.randn(7, 8)
    batch = collate_bags([{"features": short}, {"features": long}])
    out = head(batch["features"], batch["mask"])
    alone = head(short.unsqueeze(0))
    assert torch.allclose(out.logits[0], alone.logits[0], atol=1e-6)
    # even huge values in the padded slots change nothing
    poisoned = batch["features"].clone()
    poisoned[0, 3:] = 1e4
    assert torch.allclose(head(poisoned, batch["mask"]).logits, out.logits, atol=1e-5)
    _, w = head.pool(batch["features"], batch["mask"])
    assert torch.allclose(w.sum(1), torch.ones(2), atol=1e-6) and (w[0, 3:] == 0).all()


@pytest.mark.parametrize("pooling", ["gated_attention", "attention", "mean", "max"])
def test_pooling_is_permutation_invariant(pooling):
    torch.manual_seed(2)
    head = create_head("mil", 8, 3, pooling=pooling).eval()
    h = torch.randn(4, 9, 8)
    perm = torch.randperm(9)
    assert torch.allclose(head(h).logits, head(h[:, perm]).logits, atol=1e-5)


def test_middle_pooling_reads_the_middle_real_instance_only():
    head = create_head("mil", 2, 2, pooling="middle")
    h = torch.arange(10.0).reshape(1, 5, 2)
    z, w = head.pool(h, torch.tensor([[True, True, True, True, False]]))
    assert z.tolist() == [[2.0, 3.0]] and w.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]


def test_a_bag_of_one_equals_the_plain_feature_input():
    head = create_head("mil", 6, 2).eval()
    x = torch.randn(4, 6)
    assert torch.allclose(head(x).logits, head(x.unsqueeze(1), torch.ones(4, 1, dtype=torch.bool)).logits)


def test_bad_bags_are_refused_with_the_expected_shape():
    head = create_head("mil", 6, 2)
    with pytest.raises(ValueError, match=r"\(B, N, 6\)"):
        head(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="at least one instance"):
        head(torch.randn(2, 3, 6), torch.tensor([[True, False, False], [False, False, False]]))


@pytest.mark.parametrize(("ours", "monai"), [("mean", "mean"), ("attention", "att")])
def test_monai_milmodel_calc_head_is_reproduced_on_full_bags(ours, monai):
    """MONAI pools its instance logits for "mean" (equal to classifying the mean embedding: the layer is linear)
    and uses the ungated tanh attention with a 2048-wide hidden layer for "att"."""
    torch.manual_seed(3)
    dim = 16
    ref = MILModel(
        num_classes=3, mil_mode=monai, pretrained=False, backbone=torch.nn.Identity(), backbone_num_features=dim
    )
    head = MILHead(dim, 3, pooling=ours, attention_dim=2048)
    with torch.no_grad():
        head.fc.load_state_dict(ref.myfc.state_dict())
        if ours == "attention":
            head.pooling.V.load_state_dict(ref.attention[0].state_dict())
            head.pooling.w.load_state_dict(ref.attention[2].state_dict())
    h = torch.randn(4, 11, dim)
    assert torch.allclose(head(h).logits, ref.calc_head(h), atol=1e-5)


def test_the_instance_cap_is_seeded_ordered_and_never_applied_without_a_seed():
    a, b = sample_instances(200, 16, 5), sample_instances(200, 16, 5)
    assert (a == b).all() and len(a) == 16 and (np.diff(a) > 0).all()
    assert not (sample_instances(200, 16, 6) == a).all()
    assert len(sample_instances(200, 16, None)) == 200  # evaluation: every instance
    assert len(sample_instances(10, 16, 5)) == 10
