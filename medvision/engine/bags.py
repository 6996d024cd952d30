"""Bags of frozen features: a case cohort's training and validation bags with cached instance embeddings.

With a frozen backbone a bag model's only trainable part is its pooling head, and every slice maps to the same
embedding every epoch, so each instance is embedded once through :class:`~medvision.engine.features.FeatureCache`
(keyed by the weights and the instance's cache entry) and bags are assembled from those rows. The instance cap and
the ``(seed, epoch)`` order are the image bags' (:class:`~medvision.data.bags.BagDataModule`), so the head sees the
same bags either way.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medvision.data.bags import BagDataModule, BagDataset, collate_bags
from medvision.data.dataset import EpochSampler
from medvision.engine.features import FeatureCache

__all__ = ["BagFeatureDataModule", "bag_features"]


def bag_features(bags: BagDataset, backbone: nn.Module, batch_size: int = 64) -> tuple[np.ndarray, int]:
    """``(instance features (rows, D) in the bags' row order, how many were embedded now)``."""
    cache = bags.cache
    store = FeatureCache.for_cohort(cache, backbone, batch_size=batch_size)
    feats = store.features(cache, bags.index.rows["cache_key"].tolist())
    return feats, store.computed


class _FeatureBags(Dataset):
    """A split's bags with cached instance features in place of pixels."""

    def __init__(self, bags: BagDataset, feats: np.ndarray) -> None:
        self.bags, self.feats = bags, torch.from_numpy(feats)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i, seed = item if isinstance(item, tuple) else (item, None)
        kept = self.bags.kept(i, seed)
        return {"features": self.feats[kept], **self.bags.describe(i)}


class BagFeatureDataModule(L.LightningDataModule):
    """The train and validation loaders of a :class:`BagDataModule`, serving frozen instance features.

    Batches hold ``features`` ``(B, N, D)`` and ``mask`` ``(B, N)`` instead of images.
    """

    def __init__(self, images: BagDataModule, backbone: nn.Module) -> None:
        super().__init__()
        self.images, self.backbone = images, backbone
        self._sets: dict[str, _FeatureBags] = {}
        self.computed = 0

    classes = property(lambda self: self.images.classes)
    num_inlier_classes = property(lambda self: self.images.num_inlier_classes)
    num_outlier_classes = property(lambda self: self.images.num_outlier_classes)
    in_chans = property(lambda self: self.images.in_chans)
    manifest_sha256 = property(lambda self: self.images.manifest_sha256)

    def _split(self, split: str) -> _FeatureBags:
        if split not in self._sets:
            bags = self.images.dataset(split)
            feats, computed = bag_features(bags, self.backbone, max(self.images.batch_size, 64))
            self.computed += computed
            self._sets[split] = _FeatureBags(bags, feats)
        return self._sets[split]

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            self._split(split)

    def train_dataloader(self) -> DataLoader:
        ds = self._split("train")
        sampler = EpochSampler(len(ds), self.images.seed, self.images.balance_weights(ds.bags), seeded=True)
        bs = self.images.batch_size
        return DataLoader(
            ds, batch_size=bs, sampler=sampler, shuffle=False, drop_last=len(ds) > bs, collate_fn=collate_bags
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._split("val"), batch_size=self.images.batch_size, shuffle=False, collate_fn=collate_bags)
