"""The data of a pretraining stage: the unlabelled pool, its pair loader, and the kNN monitor's images.

Which cohort images may be pretrained on is a protocol decision, so it is made in one function,
:func:`select_pool`, and tested: validation and test images never enter the pool, and held-out sites
(``site_ood``) and held-out conditions (``condition_ood``) enter only when the config opts in, since they
exist to measure behaviour on data the model has never seen (the REMEDIS / MICLe evaluation protocol,
see the method spec §2, §3).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from medvision.cohort.cohort import open_cohort
from medvision.data.dataset import CohortFacts
from medvision.errors import InputError
from medvision.ssl.augment import AugmentConfig, TwoViewAugment, resolve_preset
from medvision.ssl.micle import Mode, PairDataset, PairSampler

__all__ = ["HELDOUT_SPLITS", "POOLS", "PretrainDataModule", "select_pool"]

#: Splits that hold images kept away from training to measure out-of-distribution behaviour.
HELDOUT_SPLITS = ("site_ood", "condition_ood")
POOLS = ("unlabelled", "train", "train+unlabelled")


def select_pool(manifest: pd.DataFrame, pool: str, include_heldout: bool = False) -> pd.DataFrame:
    """The manifest rows a pretraining run may use, labels ignored.

    Args:
        manifest: the cohort manifest (needs ``split``; ``label`` marks labelled rows when present).
        pool: ``unlabelled`` (rows without a label: the ``unlabelled`` split and unlabelled training
            rows), ``train`` (every training row) or ``train+unlabelled`` (both).
        include_heldout: also take every ``site_ood`` and ``condition_ood`` row.

    Returns:
        The selected rows, in manifest order, index reset.

    Raises:
        InputError: unknown pool, or a manifest without a ``split`` column.
    """
    if pool not in POOLS:
        raise InputError(f"data.pool must be one of {', '.join(POOLS)}; got {pool!r}")
    if "split" not in manifest.columns:
        raise InputError("the cohort manifest has no 'split' column; rebuild it with `medvision cohort build`")
    split = manifest["split"].astype(str)
    unlabelled = manifest["label"].isna() if "label" in manifest.columns else pd.Series(False, index=manifest.index)
    keep = pd.Series(False, index=manifest.index)
    if pool in ("unlabelled", "train+unlabelled"):
        keep |= (split == "unlabelled") | ((split == "train") & unlabelled)
    if pool in ("train", "train+unlabelled"):
        keep |= split == "train"
    if include_heldout:
        keep |= split.isin(HELDOUT_SPLITS)
    return manifest[keep].reset_index(drop=True)


class _CachedImage:
    """Image index -> cached ``(C, H, W)`` float32 array; picklable for DataLoader workers."""

    def __init__(self, cache, keys: list[str]) -> None:
        self.cache, self.keys = cache, keys

    def __call__(self, i: int) -> np.ndarray:
        return self.cache.to_float(self.cache.get(self.keys[i]))


class _LabelledImages(Dataset):
    """Un-augmented images with their class index and row position (kNN monitor)."""

    def __init__(self, cache, rows: pd.DataFrame) -> None:
        self.cache, self.keys = cache, rows["cache_key"].tolist()
        self.labels = rows["label_idx"].to_numpy(np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.cache.to_float(self.cache.get(self.keys[i])))
        return {"image": image, "label": torch.tensor(self.labels[i]), "index": torch.tensor(i)}


class PretrainDataModule(CohortFacts, L.LightningDataModule):
    """Pair batches from a cohort's pretraining pool; labelled train / val images for the kNN monitor.

    Validation loaders: ``[reference, query]`` (labelled training and validation images) when both exist,
    else the one that exists (the monitor then uses leave-one-out), else none.

    Args:
        cohort_dir: a built cohort.
        pool, include_heldout: see :func:`select_pool`.
        mode: ``simclr`` or ``micle`` pairs (:mod:`medvision.ssl.micle`).
        batch_size: pairs per device per step.
        augment: augmentation settings; the preset ``auto`` resolves from the cohort's channels/modality.
        seed: run seed (pairs, order and augmentations).
        num_workers: DataLoader workers.
        knn_max_images: cap on each kNN image set (a seeded subsample).

    Raises:
        FileNotFoundError: not a built cohort.
        ValueError: the pool is empty.
    """

    def __init__(
        self,
        cohort_dir: str | Path,
        pool: str = "train+unlabelled",
        include_heldout: bool = False,
        mode: Mode = "micle",
        batch_size: int = 256,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        num_workers: int = 0,
        knn_max_images: int = 2048,
    ) -> None:
        super().__init__()
        self.cohort = open_cohort(cohort_dir)
        self.pool_rows = select_pool(self.cohort.manifest, pool, include_heldout)
        if self.pool_rows.empty:
            raise InputError(
                f"cohort {cohort_dir}: the pretraining pool {pool!r} is empty (include_heldout={include_heldout}); "
                f"choose another data.pool (one of {', '.join(POOLS)})"
            )
        self.mode, self.batch_size, self.seed, self.num_workers = mode, batch_size, seed, num_workers
        items = len(self.pool_rows) if mode == "simclr" else self.pool_rows["patient_id"].nunique()
        if items < batch_size:  # fail before training starts (the sampler re-checks with the world size)
            unit = "images" if mode == "simclr" else "patients"
            raise InputError(
                f"cohort {cohort_dir}: the pretraining pool {pool!r} has {items} {unit}, fewer than one "
                f"global batch of {batch_size}; lower data.batch_size or widen data.pool"
            )
        modality = None
        if "modality" in self.pool_rows.columns and self.pool_rows["modality"].notna().any():
            modality = str(self.pool_rows["modality"].mode().iloc[0])
        self.augment_preset = resolve_preset((augment or AugmentConfig()).preset, self.in_chans, modality)
        self.augment = TwoViewAugment(
            self.augment_preset, int(self.cohort.cache.params.size), augment or AugmentConfig()
        )
        labelled = (
            self.cohort.manifest[self.cohort.manifest["label_idx"] >= 0]
            if "label_idx" in self.cohort.manifest.columns
            else self.cohort.manifest.iloc[:0]
        )
        self.knn_sets = {}
        for name, split in (("reference", "train"), ("query", "val")):
            rows = labelled[labelled["split"] == split]
            if len(rows) > knn_max_images:
                rows = rows.sample(n=knn_max_images, random_state=seed)
            if len(rows):
                self.knn_sets[name] = rows.reset_index(drop=True)

    @property
    def patient_ids(self) -> list[str]:
        return self.pool_rows["patient_id"].astype(str).tolist()

    def multi_instance_patient_share(self) -> float:
        """Share of pool patients with two or more images (those give true MICLe pairs)."""
        counts = self.pool_rows.groupby("patient_id").size()
        return float((counts >= 2).mean()) if len(counts) else 0.0

    def train_dataloader(self) -> DataLoader:
        sampler = PairSampler(self.patient_ids, self.batch_size, self.mode, self.seed)
        load = _CachedImage(self.cohort.cache, self.pool_rows["cache_key"].tolist())
        ds = PairDataset(load, self.augment, len(self.pool_rows))
        return DataLoader(
            ds,
            sampler=sampler,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(
                _LabelledImages(self.cohort.cache, rows),
                batch_size=max(self.batch_size, 64),
                shuffle=False,
                num_workers=self.num_workers,
            )
            for rows in self.knn_sets.values()
        ]
