"""Frozen features, computed once: the fast path of linear probes, locked tuning and feature-space detectors.

A frozen backbone maps an image to the same embedding every epoch, so a linear probe that runs the backbone each
epoch spends nearly all its time recomputing numbers it already had. :class:`FeatureCache` embeds each image once
per *(weights, cached image, preprocessing)* and keeps the result in a shard store
(:class:`medvision._shards.ShardStore`, the one under the image cache too: locked, atomic, owner-only), keyed by
content:

* the folder is named by a digest of the backbone's tensors (and its input normalisation), so new weights, a
  fine-tuned backbone or another architecture simply miss;
* an entry is keyed by the cohort cache's entry key, itself a hash of the image file's content, the frame and the
  preprocessing recipe, so a changed image or a changed recipe misses too. Nothing stale can be read.

Where: outside every cohort folder, which stays read-only once built (:mod:`medvision.cohort.cohort`), in
:func:`default_feature_root` (``$MEDVISION_FEATURE_CACHE``, else ``$XDG_CACHE_HOME/medvision/features``, else
``~/.cache/medvision/features``). Since entries are keyed by content, cohorts sharing images share their features,
and two runs embedding one cohort at once (a sweep's members, an evaluation beside a probe) write one store safely.

:class:`FeatureDataModule` then serves the cohort's training and validation rows as feature batches in exactly the
order (``(seed, epoch)`` permutations) the image loaders would, so the head sees the same steps either way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medvision._shards import ShardStore
from medvision.cohort.cache import PreprocessCache
from medvision.data.dataset import CohortDataModule, CohortDataset, EpochSampler

__all__ = ["FEATURE_CACHE_ENV", "FeatureCache", "FeatureDataModule", "default_feature_root", "weights_digest"]

#: Environment variable naming the feature cache's folder.
FEATURE_CACHE_ENV = "MEDVISION_FEATURE_CACHE"


def default_feature_root() -> Path:
    """Where features are kept unless a root is given: ``$MEDVISION_FEATURE_CACHE``, else the user's cache folder
    (``$XDG_CACHE_HOME/medvision/features``, ``~/.cache/medvision/features`` by default). Read at each call, so a
    folder configured after start-up is honoured."""
    if os.environ.get(FEATURE_CACHE_ENV):
        return Path(os.environ[FEATURE_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medvision" / "features"


def weights_digest(backbone: nn.Module) -> str:
    """SHA-256 over every tensor of ``backbone`` (names, dtypes, shapes, bytes), buffers included.

    Covers the normalisation statistics too (they are non-persistent buffers of :class:`Backbone`), so the same
    weights fed with other mean/std are other features.
    """
    digest = hashlib.sha256()
    tensors = {**dict(backbone.named_parameters()), **dict(backbone.named_buffers())}
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(tensors[name].shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class FeatureCache:
    """Embeddings of cached cohort images under one backbone, on disk.

    Args:
        root: the folder holding one store per weights digest; ``None``: :func:`default_feature_root`.
        backbone: the frozen encoder; run in eval mode without gradients.
        batch_size: images per forward pass when embedding.

    Attributes:
        computed: how many images the last :meth:`features` call had to embed (0 = all reused).
    """

    def __init__(self, root: str | Path | None, backbone: nn.Module, batch_size: int = 64) -> None:
        self.backbone, self.batch_size = backbone, batch_size
        self.digest = weights_digest(backbone)
        self.dir = (default_feature_root() if root is None else Path(root)) / self.digest[:32]
        self._store = ShardStore(self.dir)
        self.computed = 0

    @classmethod
    def for_cohort(
        cls, cache: PreprocessCache, backbone: nn.Module, batch_size: int = 64, root: str | Path | None = None
    ) -> FeatureCache:
        """The feature cache for a cohort's cached images: in ``root`` (default :func:`default_feature_root`), never
        inside the cohort. ``cache`` is the cohort's image cache, whose entry keys key the features."""
        del cache  # the entries are keyed by content, so one store serves every cohort
        return cls(root, backbone, batch_size)

    def features(self, cache: PreprocessCache, keys: list[str]) -> np.ndarray:
        """``(len(keys), D)`` float32 embeddings of the cached images ``keys``, computing only the missing ones.

        Entries another process saved since this cache was opened are reused; two processes computing the same
        entries at once both get them, and the store keeps one copy.
        """
        self._store.refresh()
        missing = [k for k in dict.fromkeys(keys) if k not in self._store]
        self.computed = len(missing)
        if missing:
            feats = self._embed(cache, missing)
            try:
                self._store.append(zip(missing, feats))
            except PermissionError as e:
                raise PermissionError(
                    e.errno,
                    f"the feature cache {self.dir} is not writable ({e.strerror}); set ${FEATURE_CACHE_ENV} to a "
                    "folder you can write, or turn the cache off (data.feature_cache: false)",
                ) from e
        if not keys:
            return np.zeros((0, 0), np.float32)
        return self._store.get_many(keys).astype(np.float32)

    @torch.no_grad()
    def _embed(self, cache: PreprocessCache, keys: list[str]) -> np.ndarray:
        was_training = self.backbone.training
        self.backbone.eval()
        device = next(self.backbone.parameters()).device
        parts = []
        try:
            for start in range(0, len(keys), self.batch_size):
                batch = np.stack([cache.to_float(cache.get(k)) for k in keys[start : start + self.batch_size]])
                parts.append(self.backbone(torch.from_numpy(batch).to(device)).float().cpu().numpy())
        finally:
            self.backbone.train(was_training)
        return np.concatenate(parts)


class _FeatureDataset(Dataset):
    """A cohort split's rows with their cached features in place of pixels."""

    def __init__(self, images: CohortDataset, feats: np.ndarray, input_shape: tuple[int, ...]) -> None:
        self.images, self.feats = images, torch.from_numpy(feats)
        self.input_shape = torch.tensor(input_shape)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i = item[0] if isinstance(item, tuple) else item
        return {**self.images.describe(i), "features": self.feats[i], "input_shape": self.input_shape}


class FeatureDataModule(L.LightningDataModule):
    """The train and validation loaders of a :class:`CohortDataModule`, serving frozen features.

    Batches hold ``features`` (B, D) instead of ``image``; the fine-tuning module sends them straight to the head.
    Features are computed in :meth:`prepare_data` (once per node) and read in :meth:`setup`.

    Args:
        images: the image data module (cohort, label fraction, batch size, seed, balancing).
        backbone: the frozen backbone whose features the head reads.
    """

    def __init__(self, images: CohortDataModule, backbone: nn.Module) -> None:
        super().__init__()
        self.images, self.backbone = images, backbone
        self._sets: dict[str, _FeatureDataset] = {}
        self.computed = 0

    # The cohort facts the training stage reads, unchanged.
    classes = property(lambda self: self.images.classes)
    num_inlier_classes = property(lambda self: self.images.num_inlier_classes)
    num_outlier_classes = property(lambda self: self.images.num_outlier_classes)
    in_chans = property(lambda self: self.images.in_chans)
    manifest_sha256 = property(lambda self: self.images.manifest_sha256)

    def _split(self, split: str) -> _FeatureDataset:
        if split not in self._sets:
            images = self.images.dataset(split)
            cache = self.images.cohort.cache
            store = FeatureCache.for_cohort(cache, self.backbone, batch_size=max(self.images.batch_size, 64))
            feats = store.features(cache, images.rows["cache_key"].tolist())
            self.computed += store.computed
            shape = tuple(int(s) for s in cache.get(images.rows["cache_key"].iloc[0]).shape) if len(images) else ()
            self._sets[split] = _FeatureDataset(images, feats, shape)
        return self._sets[split]

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            self._split(split)

    def train_dataloader(self) -> DataLoader:
        ds = self._split("train")
        weights = self.images.balance_weights(ds.images)
        sampler = EpochSampler(len(ds), self.images.seed, weights)
        bs = self.images.batch_size
        return DataLoader(ds, batch_size=bs, sampler=sampler, shuffle=False, drop_last=len(ds) > bs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._split("val"), batch_size=self.images.batch_size, shuffle=False)
