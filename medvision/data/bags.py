"""Bags: the cases of a series-, study- or patient-level cohort as torch datasets, with a seeded instance cap.

A case cohort's manifest keeps one row per instance with its ``case_id`` and ``instance_index`` (its place in the
case's order, see :mod:`medvision.cohort.cases`). :class:`CaseIndex` turns those rows into cases; a bag dataset
yields one case per item. Training may cap the instances per bag (``max_instances``) to bound memory and time: the
kept instances are drawn without replacement from the item's seed, which :class:`~medvision.data.dataset.EpochSampler`
derives from ``(seed, epoch)``, so a resumed run sees the same bags; they keep the case's order. Evaluation
always reads every instance (an item without a seed is never capped).

:func:`collate_bags` pads a batch of bags to its longest, with a ``mask`` of the real instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from medvision.cohort.cohort import Cohort
from medvision.data.dataset import Augment, CohortDataModule, EpochSampler, Transform

__all__ = [
    "BagDataModule",
    "BagDataset",
    "CaseIndex",
    "collate_bags",
    "sample_instances",
]


def sample_instances(n: int, cap: int | None, seed: int | None) -> np.ndarray:
    """Positions of the instances a bag of ``n`` keeps: all of them without a cap or a seed, else ``cap`` drawn
    without replacement from ``seed``, in the case's order.

    Example:
        >>> sample_instances(5, None, 1).tolist(), sample_instances(5, 3, None).tolist()
        ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
        >>> (sample_instances(100, 4, 7) == sample_instances(100, 4, 7)).all()
        np.True_
    """
    if cap is None or seed is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


@dataclass(frozen=True)
class CaseIndex:
    """The cases of some manifest rows: which rows (in instance order) make each case.

    Attributes:
        rows: the instance rows, sorted by case and ``instance_index``.
        offsets: ``(cases + 1,)``: case ``i`` is ``rows.iloc[offsets[i]:offsets[i + 1]]``.
        cases: one row per case (its first instance's row): ``case_id``, ``patient_id``, ``split``, ``label``,
            ``label_idx`` and the subgroup columns, plus ``n_instances``.
    """

    rows: pd.DataFrame
    offsets: np.ndarray
    cases: pd.DataFrame

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> CaseIndex:
        """Cases of ``rows`` (a manifest subset). Without case columns every row is a case of one.

        Raises:
            ValueError: a case's rows disagree on the label, the patient or the split (a manifest not made by
                the build).
        """
        if "case_id" not in rows.columns:
            rows = rows.assign(case_id=rows["image_id"], instance_index=0)
        rows = rows.sort_values(["case_id", "instance_index"], kind="stable").reset_index(drop=True)
        ids = rows["case_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
        offsets = np.r_[starts, len(ids)].astype(np.int64)
        for column in ("label_idx", "patient_id", "split"):
            if column in rows.columns and len(rows):
                per_case = rows.groupby("case_id", sort=False)[column].nunique(dropna=False)
                if (per_case > 1).any():
                    raise ValueError(
                        f"case {per_case.index[int(np.argmax(per_case.to_numpy() > 1))]} has instances with different "
                        f"{column} values; cases come from a cohort built with `unit` (rebuild it)"
                    )
        cases = rows.iloc[starts].reset_index(drop=True).copy()
        cases["n_instances"] = np.diff(offsets)
        return cls(rows, offsets, cases)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def positions(self, i: int) -> np.ndarray:
        """Row positions of case ``i``'s instances, in the case's order."""
        return np.arange(self.offsets[i], self.offsets[i + 1])


class BagDataset(Dataset):
    """Items: ``image`` ``(n, C, H, W)`` float32 in [0, 1] (the kept instances, in order), ``label``, ``case_id``,
    ``patient_id``, ``instance_ids`` (image ids of the kept instances).

    Indexed by position (every instance) or by ``(position, seed)`` (the instance cap and augmentation apply).
    """

    def __init__(
        self,
        cohort: Cohort,
        rows: pd.DataFrame,
        max_instances: int | None = None,
        transform: Transform | None = None,
        augment: Augment | None = None,
    ) -> None:
        self.cache = cohort.cache
        self.index = CaseIndex.from_rows(rows)
        self.rows = self.index.cases  # one row per case: what samplers, balancing and reports count
        self.max_instances = max_instances
        self.transform, self.augment = transform, augment
        self._keys = self.index.rows["cache_key"].tolist()
        self._image_ids = self.index.rows["image_id"].tolist()
        label_cols = cohort.label_columns
        if label_cols:
            self._labels = torch.tensor(self.rows[label_cols].fillna(0).to_numpy(np.float32))
        else:
            self._labels = torch.tensor(self.rows["label_idx"].to_numpy(np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def kept(self, i: int, seed: int | None) -> np.ndarray:
        """Row positions of the instances item ``i`` yields with ``seed``."""
        positions = self.index.positions(i)
        return positions[sample_instances(len(positions), self.max_instances, seed)]

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i, seed = item if isinstance(item, tuple) else (item, None)
        kept = self.kept(i, seed)
        images = []
        for j, pos in enumerate(kept):
            pixels = self.cache.get(self._keys[pos])
            if self.augment is not None and seed is not None:
                pixels = self.augment(np.asarray(pixels), int(np.random.default_rng([seed, j]).integers(2**31)))
            image = torch.from_numpy(self.cache.to_float(pixels))
            images.append(self.transform(image) if self.transform is not None else image)
        return {"image": torch.stack(images), **self.describe(i), "instance_ids": [self._image_ids[p] for p in kept]}

    def describe(self, i: int) -> dict:
        """Case ``i`` without its pixels: ``label``, ``case_id``, ``patient_id``."""
        case = self.rows.iloc[i]
        return {"label": self._labels[i], "case_id": case["case_id"], "patient_id": case["patient_id"]}


def collate_bags(items: Sequence[dict]) -> dict:
    """Pad a batch of bags to the longest: ``image`` ``(B, N, C, H, W)`` or ``features`` ``(B, N, D)``, plus
    ``mask`` ``(B, N)`` (True where an instance is real); other keys become lists or stacked tensors."""
    key = "features" if "features" in items[0] else "image"
    lengths = [len(it[key]) for it in items]
    longest = max(lengths)
    first: Tensor = items[0][key]
    padded = first.new_zeros((len(items), longest, *first.shape[1:]))
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for b, (it, n) in enumerate(zip(items, lengths)):
        padded[b, :n] = it[key]
        mask[b, :n] = True
    out: dict = {key: padded, "mask": mask}
    for name in items[0]:
        if name == key:
            continue
        values = [it[name] for it in items]
        out[name] = torch.stack(values) if isinstance(values[0], Tensor) else values
    return out


class BagDataModule(CohortDataModule):
    """Train / val / test loaders of a case cohort: one bag (case) per item, ``batch_size`` bags per step.

    Args:
        cohort_dir, batch_size, label_fraction, num_workers, balanced, seed, augment: as for
            :class:`~medvision.data.dataset.CohortDataModule` (balancing weighs cases, not instances).
        max_instances: the training cap on instances per bag (``None``: every instance). Evaluation loaders
            never cap.
    """

    def __init__(self, *args, max_instances: int | None = 32, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if max_instances is not None and max_instances < 1:
            raise ValueError(f"max_instances must be at least 1 (or None for every instance), got {max_instances}")
        self.max_instances = max_instances

    def dataset(  # type: ignore[override]
        self, split: str, transform: Transform | None = None, augment: Augment | None = None
    ) -> BagDataset:
        rows = self._train_rows if split == "train" else self.cohort.rows(split, labelled=split != "unlabelled")
        cap = self.max_instances if split == "train" else None
        return BagDataset(self.cohort, rows, cap, transform, augment)

    def train_dataloader(self) -> DataLoader:
        augment = self.augment if self.augment_preset != "none" else None
        ds = self.dataset("train", self.train_transform, augment)
        # seeded: the instance cap (and augmentation) draw from each position's seed
        sampler = EpochSampler(len(ds), self.seed, self.balance_weights(ds), seeded=True)
        return self._loader(ds, sampler, drop_last=len(ds) > self.batch_size)

    def _loader(self, ds, sampler, drop_last: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_bags,
        )
