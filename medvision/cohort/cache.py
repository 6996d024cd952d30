"""The preprocessing cache: decoded, resized images in memory-mapped shards.

Why: decoding a compressed DICOM costs milliseconds to seconds; training reads each image
every epoch. The cache decodes each file once per preprocessing recipe.

Layout: ``ROOT/<recipe id>/`` holds ``recipe.json`` (the parameters) and a shard store
(:class:`medvision._shards.ShardStore`: ``shard-NNNNN.npy`` arrays of shape ``(N, C, S, S)`` and
``index.parquet`` mapping an entry key to (shard, row)). An entry key is a hash of the file's content hash,
the frame and the recipe, so a changed file or a changed recipe simply misses; nothing stale can ever be read.
File names carry hashes only, never an identifier from the image. The store is locked and atomic, so two
builds writing one recipe folder at once lose nothing; the folder is owner-only (it holds patients' images).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medvision._atomic import atomic_write_text
from medvision._shards import ShardStore
from medvision.cohort.spec import PreprocessSpec

__all__ = ["PreprocessCache", "entry_key", "recipe_id"]


def recipe_id(params: PreprocessSpec) -> str:
    blob = json.dumps(params.model_dump(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_key(content_sha256: str, frame: int, params: PreprocessSpec) -> str:
    return hashlib.sha256(f"{content_sha256}:{frame}:{recipe_id(params)}".encode()).hexdigest()[:32]


class PreprocessCache:
    """Read and append cached arrays for one preprocessing recipe."""

    def __init__(self, root: str | Path, params: PreprocessSpec) -> None:
        self.params = params
        self.dir = Path(root) / recipe_id(params)
        self._store = ShardStore(self.dir)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def keys(self) -> set[str]:
        return self._store.keys()

    def append(self, items: Iterable[tuple[str, np.ndarray]], *, save_index: bool = True) -> int:
        """Write new entries as one new shard (existing keys are skipped); returns how many were written.

        ``save_index=False`` leaves the on-disk index to a later :meth:`save_index` (see
        :meth:`medvision._shards.ShardStore.append`): until saved, the new shards are readable here only.
        """
        items = list(items)
        recipe = self.dir / "recipe.json"
        if items and not recipe.exists():
            text = json.dumps(self.params.model_dump(), indent=2, sort_keys=True)
            atomic_write_text(recipe, text, private=True)
        return self._store.append(items, save_index=save_index)

    def save_index(self) -> None:
        """Write the index with every shard appended so far (nothing to do when none is pending)."""
        self._store.save_index()

    def remove_temporaries(self) -> int:
        """Delete shards and indexes left half-written by a build that was killed; the writer calls it first."""
        return self._store.remove_temporaries()

    def get(self, key: str) -> np.ndarray:
        """The cached ``(C, S, S)`` array (a view into a memory map; copy before writing to it)."""
        try:
            return self._store.get(key)
        except KeyError:
            raise KeyError(f"cache entry {key} is missing from {self.dir}; rebuild the cohort") from None

    def to_float(self, arr: np.ndarray) -> np.ndarray:
        """Cached storage type back to float32 in [0, 1]."""
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        return arr.astype(np.float32)
