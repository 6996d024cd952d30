"""Torch datasets over a built cohort, and the Lightning data module training stages share.

Images come from the preprocessing cache (memory-mapped), never from DICOM, so an epoch costs a
memory copy per image. Shuffling is drawn from ``(seed, epoch)`` so an interrupted run that
resumes at epoch e sees exactly the batches an uninterrupted run would have seen; with training
augmentation the sampler also hands each position its augmentation seed, drawn from the same pair, so
the views are as reproducible as the order (see :mod:`medvision.data.augment`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medvision.cohort.card import CohortCard
from medvision.cohort.cohort import Cohort, open_cohort
from medvision.cohort.recipe import PreprocessRecipe
from medvision.data.augment import FinetuneAugmentConfig, SeededAugment, resolve_preset

__all__ = ["CohortDataModule", "CohortDataset", "CohortFacts", "EpochSampler", "default_workers"]

Transform = Callable[[torch.Tensor], torch.Tensor]
#: ``(cached (C, H, W) array, seed) -> array``: applied to the cache's own dtype before the float conversion.
Augment = Callable[[np.ndarray, int], np.ndarray]


def default_workers(cores: int | None = None) -> int:
    """DataLoader workers for this machine: all cores but two (the training process and its BLAS threads
    need them), at most 8; none on machines of two cores or fewer, where a worker only takes a core from the
    step it should feed (measured by ``benchmarks/input_pipeline.py``)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 2))


class ItemRows(Protocol):
    """A dataset's manifest rows, one per item it yields (what class balancing counts)."""

    rows: pd.DataFrame


class CohortDataset(Dataset):
    """Items: ``image`` (C,H,W) float32 in [0,1], ``label`` (int64, -1 = none; or (L,) float for
    multi-label), and the pseudonymous ``image_id`` / ``patient_id``.

    Indexed by position, or by ``(position, seed)`` (what :class:`EpochSampler` yields with ``seeded=True``):
    ``augment`` then runs on the cached pixels with that seed; a bare position is never augmented.
    """

    def __init__(
        self,
        cohort: Cohort,
        rows: pd.DataFrame,
        transform: Transform | None = None,
        augment: Augment | None = None,
    ) -> None:
        self.cache = cohort.cache
        self.rows = rows.reset_index(drop=True)
        self.transform, self.augment = transform, augment
        self._keys = self.rows["cache_key"].tolist()
        self._image_ids = self.rows["image_id"].tolist()
        self._patient_ids = self.rows["patient_id"].tolist()
        label_cols = cohort.label_columns
        if label_cols:
            self._labels = torch.tensor(self.rows[label_cols].fillna(0).to_numpy(np.float32))
        else:
            self._labels = torch.tensor(self.rows["label_idx"].to_numpy(np.int64))

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i, seed = item if isinstance(item, tuple) else (item, None)
        pixels = self.cache.get(self._keys[i])
        if self.augment is not None and seed is not None:
            pixels = self.augment(np.asarray(pixels), seed)
        image = torch.from_numpy(self.cache.to_float(pixels))
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, **self.describe(i)}

    def describe(self, i: int) -> dict:
        """Row ``i`` without its pixels: ``label``, ``image_id``, ``patient_id``."""
        return {"label": self._labels[i], "image_id": self._image_ids[i], "patient_id": self._patient_ids[i]}


class EpochSampler(Sampler):
    """A permutation (or class-balanced draw) that depends only on ``(seed, epoch)``.

    With ``seeded=True`` it yields ``(position, augmentation seed)`` pairs, the seeds from a separate stream of
    the same ``(seed, epoch)`` so turning augmentation on leaves the order unchanged.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None, seeded: bool = False) -> None:
        self.n, self.seed, self.weights, self.epoch, self.seeded = n, seed, weights, 0, seeded

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of each epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            order = rng.permutation(self.n).tolist()
        else:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum()).tolist()
        if not self.seeded:
            return iter(order)
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31, size=self.n).tolist()
        return iter(zip(order, seeds))

    def __len__(self) -> int:
        return self.n


class CohortFacts:
    """The cohort facts every training stage's data module answers, read from the one place they are declared: the
    cohort card (:class:`~medvision.cohort.card.CohortCard`). Fine-tuning and self-supervised pretraining alike."""

    cohort: Cohort

    @property
    def card(self) -> CohortCard:
        return self.cohort.card

    @property
    def classes(self) -> list[str]:
        """Inlier classes then training-outlier conditions: index i is ``label_idx == i``."""
        return list(self.card.classes)

    @property
    def num_inlier_classes(self) -> int:
        return self.card.num_inlier_classes

    @property
    def num_outlier_classes(self) -> int:
        return self.card.num_outlier_classes

    @property
    def in_chans(self) -> int:
        return self.card.in_chans

    @property
    def manifest_sha256(self) -> str:
        return self.card.manifest_sha256

    @property
    def preprocessing(self) -> PreprocessRecipe:
        """How each training image was prepared from its file (the classifier card records it)."""
        return self.card.recipe


class CohortDataModule(CohortFacts, L.LightningDataModule):
    """Train / val / test (and OOD) loaders of one cohort, at one label fraction.

    ``augment`` (a preset config; ``None`` means none) applies to the training loader only; the preset that
    ``auto`` resolved to is :attr:`augment_preset`.
    """

    def __init__(
        self,
        cohort_dir: str | Path,
        batch_size: int = 32,
        label_fraction: float = 1.0,
        num_workers: int | Literal["auto"] = 0,
        balanced: bool = False,
        seed: int = 0,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        augment: FinetuneAugmentConfig | None = None,
    ) -> None:
        super().__init__()
        self.cohort = open_cohort(cohort_dir)
        workers = default_workers() if num_workers == "auto" else int(num_workers)
        self.batch_size, self.label_fraction, self.num_workers = batch_size, label_fraction, workers
        self.balanced, self.seed = balanced, seed
        self.train_transform, self.eval_transform = train_transform, eval_transform
        train = self.cohort.rows("train", label_fraction)
        if train.empty:
            raise ValueError(f"cohort {cohort_dir} has no labelled training images at fraction {label_fraction}")
        self._train_rows = train
        cfg = augment or FinetuneAugmentConfig(preset="none")
        modality = None
        if "modality" in train.columns and train["modality"].notna().any():
            modality = str(train["modality"].mode().iloc[0])
        self.augment_preset = resolve_preset(cfg.preset, self.in_chans, modality)
        size = int(self.cohort.cache.params.size)
        self.augment = SeededAugment(self.augment_preset, size, self.in_chans, cfg)

    def dataset(self, split: str, transform: Transform | None = None, augment: Augment | None = None) -> CohortDataset:
        rows = self._train_rows if split == "train" else self.cohort.rows(split, labelled=split != "unlabelled")
        return CohortDataset(self.cohort, rows, transform, augment)

    def train_dataloader(self) -> DataLoader:
        augment = self.augment if self.augment_preset != "none" else None
        ds = self.dataset("train", self.train_transform, augment)
        sampler = EpochSampler(len(ds), self.seed, self.balance_weights(ds), seeded=augment is not None)
        return self._loader(ds, sampler, drop_last=len(ds) > self.batch_size)

    def balance_weights(self, ds: ItemRows) -> np.ndarray | None:
        """Per-item draw weights inverse to class frequency when ``balanced``, else ``None`` (an item is an image, or
        a case of a bag dataset)."""
        if not self.balanced or self.cohort.label_columns:
            return None
        counts = ds.rows["label_idx"].value_counts()
        return (1.0 / ds.rows["label_idx"].map(counts)).to_numpy(np.float64)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def loader(self, split: str) -> DataLoader:
        """An ordered loader over any split (``val``, ``test``, ``site_ood``, ``condition_ood``, ...)."""
        return self._loader(self.dataset(split, self.eval_transform), None, drop_last=False)

    def _loader(self, ds: CohortDataset, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
        )
