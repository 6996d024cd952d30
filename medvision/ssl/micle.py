"""Positive pairs for contrastive pretraining: SimCLR (two views of one image) and MICLe (see the method spec §3).

MICLe (Azizi et al. 2021) uses the fact that a patient often has several images of one condition: a
positive pair is two *different* images of the patient, each augmented, and only patients with a single
image fall back to two views of one image. Two images of one patient must then never meet as negatives,
so a global batch (all devices together) holds at most one pair per patient.

:class:`PairSampler` decides every epoch's pairs and batches from ``(seed, epoch)`` alone; it yields
*keys* ``(image_a, image_b, seed_a, seed_b)`` that :class:`PairDataset` turns into two augmented views.
So augmentation randomness depends on the key, not on a worker or on the global generator, and a resumed
run repeats an uninterrupted one exactly.

Modes:

* ``simclr``: one item per image per epoch, pair ``(i, i)``;
* ``micle``: one item per patient per epoch, pair of two distinct images when the patient has >= 2.
  Every patient occurs once per epoch, so no global batch holds two pairs of one patient.

Under DDP the sampler is rank-aware: a global batch of ``batch_size x world`` items is cut into one slice
per rank, and negatives are gathered across ranks (:func:`~medvision.ssl.ntxent.nt_xent_loss`), so the
patient rule holds for the whole global batch. It subclasses ``DistributedSampler`` only so that Lightning
leaves it alone (it would otherwise wrap it in a sampler of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["Mode", "PairDataset", "PairKey", "PairSampler", "plan_pairs"]

Mode = Literal["simclr", "micle"]
#: ``(image index a, image index b, augmentation seed a, augmentation seed b)``
PairKey = tuple[int, int, int, int]


def plan_pairs(patient_ids: Sequence[str], mode: Mode, seed: int, epoch: int) -> list[PairKey]:
    """One epoch's pairs, shuffled; depends only on the arguments.

    Args:
        patient_ids: the pseudonymous patient of every image in the pool (index = image index).
        mode: ``simclr`` (every image once, paired with itself) or ``micle`` (every patient once).
        seed: the run seed.
        epoch: the epoch number.

    Returns:
        ``(a, b, seed_a, seed_b)`` keys; in ``micle`` mode ``a != b`` whenever the patient has two images.
    """
    rng = np.random.default_rng([seed, epoch, 0x51C])
    if mode == "simclr":
        order = rng.permutation(len(patient_ids))
        pairs = [(int(i), int(i)) for i in order]
    elif mode == "micle":
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(patient_ids):
            groups.setdefault(str(p), []).append(i)
        members = [groups[p] for p in sorted(groups)]
        pairs = []
        for g in (members[k] for k in rng.permutation(len(members))):
            if len(g) >= 2:
                a, b = rng.choice(len(g), size=2, replace=False)
                pairs.append((g[int(a)], g[int(b)]))
            else:
                pairs.append((g[0], g[0]))
    else:
        raise ValueError(f"pair mode must be 'simclr' or 'micle', got {mode!r}")
    seeds = rng.integers(0, 2**31 - 1, size=(len(pairs), 2))
    return [(a, b, int(s[0]), int(s[1])) for (a, b), s in zip(pairs, seeds)]


class PairSampler(DistributedSampler):
    """Yields this rank's pair keys, ``batch_size`` consecutive keys forming one batch.

    Use it with ``DataLoader(dataset, sampler=..., batch_size=batch_size, drop_last=True)``. Incomplete
    global batches are dropped, so every rank sees the same number of equal-sized batches (the gathered
    loss needs that).

    Args:
        patient_ids: patient of every pool image.
        batch_size: pairs per rank per step.
        mode: ``simclr`` or ``micle``.
        seed: run seed (with the epoch, decides pairs, order and augmentation seeds).
        num_replicas: world size; ``None`` reads it from the process group (1 without one).
        rank: this process's rank; ``None`` reads it likewise.

    Raises:
        ValueError: the pool cannot fill one global batch.
    """

    def __init__(
        self,
        patient_ids: Sequence[str],
        batch_size: int,
        mode: Mode = "micle",
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and a process group.
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas or (torch.distributed.get_world_size() if dist_on else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist_on else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.patient_ids = [str(p) for p in patient_ids]
        self.batch_size, self.mode, self.seed, self.epoch = int(batch_size), mode, int(seed), 0
        items = len(self.patient_ids) if mode == "simclr" else len(set(self.patient_ids))
        self.num_batches = items // (self.batch_size * self.num_replicas)
        if self.num_batches == 0:
            unit = "images" if mode == "simclr" else "patients"
            raise ValueError(
                f"the pretraining pool has {items} {unit}, fewer than one global batch of "
                f"{self.batch_size} x {self.num_replicas} devices; lower data.batch_size or widen data.pool"
            )
        self.shuffle, self.drop_last = True, True

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = int(epoch)

    def batches(self) -> list[list[PairKey]]:
        """This rank's batches of the current epoch."""
        keys = plan_pairs(self.patient_ids, self.mode, self.seed, self.epoch)
        step, b, r = self.batch_size * self.num_replicas, self.batch_size, self.rank
        return [keys[k * step + r * b : k * step + (r + 1) * b] for k in range(self.num_batches)]

    def __iter__(self) -> Iterator[PairKey]:
        return iter([key for batch in self.batches() for key in batch])

    def __len__(self) -> int:
        return self.num_batches * self.batch_size


class PairDataset(Dataset):
    """Two augmented views per key of a :class:`PairSampler`.

    Items: ``view1``, ``view2`` (``(C, H, W)`` float32 in [0, 1]) and ``multi_instance`` (1.0 when the views
    come from two different images of the patient).

    Args:
        load: image index -> ``(C, H, W)`` float32 array in [0, 1] (e.g. a cohort cache lookup).
        augment: ``(image, seed) -> tensor``, e.g. :class:`~medvision.ssl.augment.TwoViewAugment`.
        size: number of pool images (for ``len``).
    """

    def __init__(
        self, load: Callable[[int], np.ndarray], augment: Callable[[np.ndarray, int], torch.Tensor], size: int
    ) -> None:
        self.load, self.augment, self.size = load, augment, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: PairKey) -> dict:
        a, b, seed_a, seed_b = key
        image_a = self.load(a)
        image_b = image_a if b == a else self.load(b)
        return {
            "view1": self.augment(image_a, seed_a),
            "view2": self.augment(image_b, seed_b),
            "multi_instance": torch.tensor(float(a != b)),
        }
