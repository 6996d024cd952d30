"""Torch datasets over a built cohort, and the Lightning data module training stages share.

Images come from the preprocessing cache (memory-mapped), never from DICOM, so an epoch costs a
memory copy per image. Shuffling is drawn from ``(seed, epoch)`` so an interrupted run that
resumes at epoch e sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medvision.cohort.cohort import Cohort, open_cohort

__all__ = ["CohortDataModule", "CohortDataset", "CohortFacts", "EpochSampler"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class CohortDataset(Dataset):
    """Items: ``image`` (C,H,W) float32 in [0,1], ``label`` (int64, -1 = none; or (L,) float for
    multi-label), and the pseudonymous ``image_id`` / ``patient_id``."""

    def __init__(self, cohort: Cohort, rows: pd.DataFrame, transform: Transform | None = None) -> None:
        self.cache = cohort.cache
        self.rows = rows.reset_index(drop=True)
        self.transform = transform
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

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.cache.to_float(self.cache.get(self._keys[i])))
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "label": self._labels[i],
            "image_id": self._image_ids[i],
            "patient_id": self._patient_ids[i],
        }


class EpochSampler(Sampler[int]):
    """A permutation (or class-balanced draw) that depends only on ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None) -> None:
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of each epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            return iter(rng.permutation(self.n).tolist())
        p = self.weights / self.weights.sum()
        return iter(rng.choice(self.n, size=self.n, replace=True, p=p).tolist())

    def __len__(self) -> int:
        return self.n


class CohortFacts:
    """The cohort facts every training stage's data module answers (input channels for the stem, the manifest hash
    its run records), declared once for fine-tuning and self-supervised pretraining alike."""

    cohort: Cohort

    @property
    def in_chans(self) -> int:
        return self.cohort.in_chans

    @property
    def manifest_sha256(self) -> str:
        return self.cohort.manifest_sha256


class CohortDataModule(CohortFacts, L.LightningDataModule):
    """Train / val / test (and OOD) loaders of one cohort, at one label fraction."""

    def __init__(
        self,
        cohort_dir: str | Path,
        batch_size: int = 32,
        label_fraction: float = 1.0,
        num_workers: int = 0,
        balanced: bool = False,
        seed: int = 0,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
    ) -> None:
        super().__init__()
        self.cohort = open_cohort(cohort_dir)
        self.batch_size, self.label_fraction, self.num_workers = batch_size, label_fraction, num_workers
        self.balanced, self.seed = balanced, seed
        self.train_transform, self.eval_transform = train_transform, eval_transform
        train = self.cohort.rows("train", label_fraction)
        if train.empty:
            raise ValueError(f"cohort {cohort_dir} has no labelled training images at fraction {label_fraction}")
        self._train_rows = train

    # Facts the training stage needs, straight from the cohort card.
    @property
    def classes(self) -> list[str]:
        return self.cohort.classes

    @property
    def num_inlier_classes(self) -> int:
        return self.cohort.num_inlier_classes

    @property
    def num_outlier_classes(self) -> int:
        return self.cohort.num_outlier_classes

    def dataset(self, split: str, transform: Transform | None = None) -> CohortDataset:
        rows = self._train_rows if split == "train" else self.cohort.rows(split, labelled=split != "unlabelled")
        return CohortDataset(self.cohort, rows, transform)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train", self.train_transform)
        weights = None
        if self.balanced and not self.cohort.label_columns:
            counts = ds.rows["label_idx"].value_counts()
            weights = (1.0 / ds.rows["label_idx"].map(counts)).to_numpy(np.float64)
        return self._loader(ds, EpochSampler(len(ds), self.seed, weights), drop_last=len(ds) > self.batch_size)

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
        )
