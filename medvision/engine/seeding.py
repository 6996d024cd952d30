"""Random state that depends only on ``(seed, epoch, rank)``, so a resumed run repeats an uninterrupted one.

Lightning restores weights, optimiser, schedule and loop counters from a checkpoint, but not the
global random generators. Whatever draws from them during an epoch (a sampler without its own
generator, augmentations, dropout, the Monte-Carlo noise of HET heads) would then differ after a
restart. :class:`EpochSeeding` reseeds torch, numpy and ``random`` at the start of every training
epoch from the run seed, the epoch and the process rank, so epoch ``e`` sees the same random
numbers however the run got there.

One subtlety: Lightning creates the epoch's data iterator sometimes before ``on_train_epoch_start``
(first epoch of a ``fit`` call, fresh or resumed) and sometimes after it (later epochs), and
creating an iterator draws the DataLoader's base seed from the global generator when the loader
has no generator of its own. The callback therefore gives each training DataLoader a generator
seeded from ``(seed, epoch, rank)`` too; the global stream is then untouched between the reseed
and the first batch in both cases.

Limits: exact with ``num_workers=0``. Worker processes take their seeds when the iterator is
created, which for the first epoch of a fit happens before this hook; persistent workers also
carry their generators across epochs. Samplers should draw their order from ``(seed, epoch)``
via ``set_epoch`` (the cohort data module's do) or from the global generator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

__all__ = ["EpochSeeding", "epoch_seed", "seed_all"]


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 32-bit seed mixed from ``(seed, epoch, rank, stream)`` (numpy's SeedSequence: nearby inputs
    give unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def seed_all(value: int) -> None:
    """Seed torch (all devices), numpy's legacy global generator and ``random``."""
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def _loaders(obj: object) -> Iterator[DataLoader]:
    if isinstance(obj, DataLoader):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _loaders(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _loaders(v)


class EpochSeeding(Callback):
    """Reseeds the global generators and the training loaders at the start of every epoch.

    Args:
        seed: the run seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, rank = trainer.current_epoch, trainer.global_rank
        for i, loader in enumerate(_loaders(trainer.train_dataloader)):
            loader.generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, rank, stream=1 + i))
        seed_all(epoch_seed(self.seed, epoch, rank))
