"""MICLe / SimCLR pairs and batches, the pretraining pool, and the seeded augmentations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from medvision.ssl.augment import AugmentConfig, TwoViewAugment, resolve_preset
from medvision.ssl.micle import PairDataset, PairSampler, plan_pairs


@st.composite
def patient_structures(draw):
    """Patients with 1-4 images each, images listed in a random order; a batch size and world size."""
    counts = draw(st.lists(st.integers(1, 4), min_size=1, max_size=30))
    ids = [f"P{p}" for p, c in enumerate(counts) for _ in range(c)]
    order = draw(st.permutations(range(len(ids))))
    return [ids[i] for i in order], draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(0, 50))


@settings(max_examples=150, deadline=None)
@given(patient_structures())
def test_micle_batches_hold_one_pair_per_patient_and_distinct_images_when_possible(structure):
    patients, batch, world, epoch = structure
    n_patients = len(set(patients))
    if n_patients < batch * world:
        with pytest.raises(ValueError, match="global batch"):
            PairSampler(patients, batch, "micle", seed=1, num_replicas=world, rank=0)
        return
    samplers = [PairSampler(patients, batch, "micle", seed=1, num_replicas=world, rank=r) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    per_rank = [s.batches() for s in samplers]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    images_of = Counter(patients)
    seen: set[str] = set()
    for step in range(len(per_rank[0])):
        global_batch = [key for rank_batches in per_rank for key in rank_batches[step]]
        assert all(len(rank_batches[step]) == batch for rank_batches in per_rank)
        owners = [patients[a] for a, _, _, _ in global_batch]
        assert len(owners) == len(set(owners)), "two pairs of one patient in a global batch"
        for a, b, _, _ in global_batch:
            assert patients[a] == patients[b], "a positive pair must come from one patient"
            assert (a != b) == (images_of[patients[a]] >= 2), "distinct images exactly when the patient has them"
        assert not seen & set(owners), "a patient came twice in one epoch"
        seen |= set(owners)
    assert len(seen) == (n_patients // (batch * world)) * batch * world  # only the incomplete last batch drops


@settings(max_examples=50, deadline=None)
@given(patient_structures())
def test_simclr_pairs_are_two_views_of_each_image_once(structure):
    patients, batch, _, epoch = structure
    keys = plan_pairs(patients, "simclr", seed=0, epoch=epoch)
    assert sorted(a for a, _, _, _ in keys) == list(range(len(patients)))
    assert all(a == b for a, b, _, _ in keys)
    assert all(sa != sb for _, _, sa, sb in keys)  # the two views of an image get different augmentations


def test_pairs_depend_only_on_seed_and_epoch_and_change_across_epochs():
    patients = [f"P{i // 3}" for i in range(60)]  # 20 patients x 3 images
    assert plan_pairs(patients, "micle", 5, 2) == plan_pairs(patients, "micle", 5, 2)
    assert plan_pairs(patients, "micle", 5, 2) != plan_pairs(patients, "micle", 5, 3)
    assert plan_pairs(patients, "micle", 5, 2) != plan_pairs(patients, "micle", 6, 2)
    with pytest.raises(ValueError, match="simclr"):
        plan_pairs(patients, "byol", 0, 0)  # type: ignore[arg-type]


def test_dataloader_batches_follow_the_sampler_and_views_are_seeded():
    rng = np.random.default_rng(0)
    images = rng.random((12, 3, 16, 16)).astype(np.float32)
    patients = ["A", "A", "B", "C", "C", "C", "D", "E", "F", "F", "G", "H"]
    sampler = PairSampler(patients, batch_size=4, mode="micle", seed=3)
    augment = TwoViewAugment("photo", 16, AugmentConfig())
    ds = PairDataset(lambda i: images[i], augment, len(images))
    loader = DataLoader(ds, sampler=sampler, batch_size=4, drop_last=True)
    sampler.set_epoch(1)
    first = list(loader)
    again = list(loader)
    assert len(first) == sampler.num_batches == 2
    for got, keys in zip(first, sampler.batches()):
        expected = torch.tensor([float(a != b) for a, b, _, _ in keys])
        assert torch.equal(got["multi_instance"], expected)
        assert got["view1"].shape == (4, 3, 16, 16)
    assert all(torch.equal(x["view1"], y["view1"]) for x, y in zip(first, again))  # same epoch, same views
    assert not torch.equal(first[0]["view1"], first[0]["view2"])  # two different views
    sampler.set_epoch(2)
    assert not torch.equal(next(iter(loader))["view1"], first[0]["view1"])


def test_augment_preset_resolution_and_channels():
    assert resolve_preset("auto", 1) == "radiograph"
    assert resolve_preset("auto", 3, "DX") == "radiograph"
    assert resolve_preset("auto", 3, "XC") == "photo"
    assert resolve_preset("photo", 1) == "photo"  # asked for by name: not second-guessed
    gray = TwoViewAugment("radiograph", 24, AugmentConfig())
    x = np.random.default_rng(1).random((1, 24, 24)).astype(np.float32)
    out = gray(x, 7)
    assert out.shape == (1, 24, 24) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, gray(x, 7)) and not torch.equal(out, gray(x, 8))
    with pytest.raises(ValueError, match="3-channel"):
        TwoViewAugment("photo", 24, AugmentConfig())(x, 0)


# -- the pool ---------------------------------------------------------------------------------------------------


def _manifest() -> pd.DataFrame:
    rows = []
    for split, labelled in (
        ("train", True),
        ("train", False),
        ("val", True),
        ("test", True),
        ("site_ood", True),
        ("condition_ood", True),
        ("unlabelled", False),
    ):
        for k in range(3):
            rows.append({"image_id": f"{split}-{labelled}-{k}", "split": split, "label": "nevus" if labelled else None})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("pool", ["unlabelled", "train", "train+unlabelled"])
def test_heldout_and_evaluation_rows_never_enter_the_pool_unless_asked(pool):
    from medvision.ssl.data import select_pool

    m = _manifest()
    chosen = select_pool(m, pool)
    assert not set(chosen["split"]) & {"site_ood", "condition_ood", "val", "test"}
    expected = {
        "unlabelled": {"unlabelled-False", "train-False"},
        "train": {"train-True", "train-False"},
        "train+unlabelled": {"train-True", "train-False", "unlabelled-False"},
    }[pool]
    assert {i.rsplit("-", 1)[0] for i in chosen["image_id"]} == expected
    opted = select_pool(m, pool, include_heldout=True)
    assert {"site_ood", "condition_ood"} <= set(opted["split"])
    assert not set(opted["split"]) & {"val", "test"}
    with pytest.raises(ValueError, match="data.pool"):
        select_pool(m, "everything")
