"""Training augmentation: reproducible per seed, train split only, and every preset keeps shape, dtype and range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvision.config import parse_config
from medvision.data.augment import FinetuneAugmentConfig, SeededAugment, resolve_preset
from medvision.data.dataset import CohortDataModule, EpochSampler
from medvision.training import FinetuneConfig


def _photo(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size]).astype(np.uint8)
    return np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("preset", "chans", "dtype"),
    [
        ("photo", 3, np.uint8),
        ("radiograph", 1, np.uint8),
        ("radiograph", 3, np.uint8),
        ("photo", 3, np.float32),
        ("radiograph", 1, np.float32),
        ("none", 1, np.uint8),
    ],
)
def test_each_preset_keeps_shape_dtype_and_range(preset, chans, dtype):
    image = _photo()[:chans]
    if dtype == np.float32:
        image = image.astype(np.float32) / 255.0
    aug = SeededAugment(preset, 48, chans)
    changed = 0
    for seed in range(8):
        out = aug(image, seed)
        assert out.shape == image.shape and out.dtype == image.dtype
        top = 255 if dtype == np.uint8 else 1.0
        assert out.min() >= 0 and out.max() <= top
        changed += not np.array_equal(out, image)
    assert changed == (0 if preset == "none" else 8)  # an augmenting preset never hands back the input


def test_same_seed_same_view_and_other_seeds_differ():
    aug, image = SeededAugment("photo", 48, 3), _photo()
    again = SeededAugment("photo", 48, 3)  # a fresh pipeline, as in another DataLoader worker
    np.testing.assert_array_equal(aug(image, 7), again(image, 7))
    np.testing.assert_array_equal(aug(image, 7), aug(image, 7))
    views = {aug(image, s).tobytes() for s in range(6)}
    assert len(views) == 6


def test_radiographs_are_not_mirrored_unless_asked():
    # A bright left half: with no flip, the left stays brighter than the right in every view (the affine
    # jitter moves things by a few percent, never across the midline); with flip on, some views swap sides.
    image = np.zeros((1, 48, 48), np.uint8)
    image[:, :, :24] = 200
    default = SeededAugment("radiograph", 48, 1)
    assert all(default(image, s)[0, :, :20].mean() > default(image, s)[0, :, 28:].mean() for s in range(20))
    flipping = SeededAugment("radiograph", 48, 1, FinetuneAugmentConfig(flip=True))
    assert any(flipping(image, s)[0, :, :20].mean() < flipping(image, s)[0, :, 28:].mean() for s in range(20))


def test_auto_resolves_from_channels_and_modality_and_photo_refuses_grey():
    assert resolve_preset("auto", 1) == "radiograph"
    assert resolve_preset("auto", 3, "DX") == "radiograph"
    assert resolve_preset("auto", 3, "XC") == "photo"
    with pytest.raises(ValueError, match="3-channel"):
        SeededAugment("photo", 32, 1)


def test_config_typo_fails_at_load():
    raw = {"data": {"cohort_dir": "x"}, "backbone": {"name": "resnet-tiny"}, "augment": {"preset": "photos"}}
    with pytest.raises(ValueError, match="preset"):
        parse_config(raw, FinetuneConfig)


def test_one_vocabulary_for_fine_tuning_and_pretraining_and_old_spellings_still_load():
    """Pretraining said rgb | grayscale (key `pipeline`) for what fine-tuning calls photo | radiograph (`preset`)."""
    from typing import get_args

    from medvision.ssl import AugmentConfig, PretrainConfig

    two_view = set(get_args(AugmentConfig.model_fields["preset"].annotation))
    assert two_view == set(get_args(FinetuneAugmentConfig.model_fields["preset"].annotation)) - {"none"}
    raw = {"data": {"cohort_dir": "x"}, "backbone": {"name": "resnet-tiny"}, "augment": {"pipeline": "grayscale"}}
    with pytest.warns(FutureWarning, match=r"augment\.pipeline is now augment\.preset"):
        assert parse_config(raw, PretrainConfig).augment.preset == "radiograph"
    with pytest.warns(FutureWarning, match=r"augment\.preset: 'rgb' is now spelt 'photo'"):
        assert FinetuneAugmentConfig(preset="rgb").preset == "photo"
    with pytest.warns(FutureWarning, match="'grayscale' is now spelt 'radiograph'"):
        assert AugmentConfig(preset="grayscale").preset == "radiograph"


def test_seeded_sampler_keeps_the_order_of_the_plain_one():
    plain, seeded = EpochSampler(50, seed=4), EpochSampler(50, seed=4, seeded=True)
    for epoch in (0, 3):
        plain.set_epoch(epoch)
        seeded.set_epoch(epoch)
        pairs = list(seeded)
        assert [i for i, _ in pairs] == list(plain)
        assert pairs == list(seeded)  # the same (seed, epoch) gives the same views
    seeded.set_epoch(4)
    assert [s for _, s in list(seeded)] != [s for _, s in pairs]


def _batches(loader, n=2):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_train_loader_augments_reproducibly_and_eval_never(synth_cxr_cohort):
    dm = CohortDataModule(synth_cxr_cohort, batch_size=8, seed=1, augment=FinetuneAugmentConfig(preset="auto"))
    assert dm.augment_preset == "radiograph"  # one-channel cohort
    plain = CohortDataModule(synth_cxr_cohort, batch_size=8, seed=1)
    assert plain.augment_preset == "none"

    a, b = _batches(dm.train_dataloader()), _batches(dm.train_dataloader())
    raw = _batches(plain.train_dataloader())
    for x, y, r in zip(a, b, raw):
        assert x["image_id"] == y["image_id"] == r["image_id"]  # augmentation leaves the order alone
        assert torch.equal(x["image"], y["image"])  # same seed, same views
        assert not torch.equal(x["image"], r["image"])  # ... and they are augmented
        assert x["image"].dtype == torch.float32 and x["image"].shape == r["image"].shape

    cache = dm.cohort.cache
    for split in ("val", "test"):
        batch = next(iter(dm.loader(split)))
        rows = dm.dataset(split).rows.set_index("image_id")
        for image, image_id in zip(batch["image"], batch["image_id"]):
            expected = torch.from_numpy(cache.to_float(cache.get(rows.loc[image_id, "cache_key"])))
            assert torch.equal(image, expected), (split, image_id)


def test_bit_hyperrule_brackets_and_images_seen():
    from medvision.engine.hyperrule import BIT_BATCH, bit_hyperrule, hyperrule_epochs

    assert bit_hyperrule(19_999, 64) == bit_hyperrule(100, 64)
    small, medium, large = bit_hyperrule(1_000, 64), bit_hyperrule(20_000, 224), bit_hyperrule(600_000, 224)
    assert (small.steps, small.warmup_steps, small.mixup_alpha) == (500, 100, 0.0)
    assert (medium.steps, medium.mixup_alpha) == (10_000, 0.1) and large.steps == 20_000
    assert (small.resize, small.crop) == (160, 128) and (medium.resize, medium.crop) == (512, 480)
    epochs, warmup = hyperrule_epochs(1_000, 224)
    assert epochs * 1_000 >= 500 * BIT_BATCH > (epochs - 1) * 1_000  # BiT's images seen, no more than an epoch over
    assert 0 < warmup < epochs
    with pytest.raises(ValueError, match="at least one"):
        bit_hyperrule(0, 64)


def test_default_workers_leave_the_training_process_its_cores():
    from medvision.data.dataset import default_workers

    assert [default_workers(c) for c in (1, 2, 3, 4, 16, 64)] == [0, 0, 1, 2, 8, 8]
    raw = {"data": {"cohort_dir": "x"}, "backbone": {"name": "resnet-tiny"}}
    assert parse_config(raw, FinetuneConfig).data.num_workers == "auto"
    with pytest.raises(ValueError, match="num_workers"):
        parse_config({**raw, "data": {"cohort_dir": "x", "num_workers": -1}}, FinetuneConfig)
