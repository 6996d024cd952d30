"""The preprocessing cache: decoded, resized images in memory-mapped shards.

Why: decoding a compressed DICOM costs milliseconds to seconds; training reads each image
every epoch. The cache decodes each file once per preprocessing recipe.

Layout: ``ROOT/<recipe id>/`` holds ``recipe.json`` (the parameters), ``shard-NNNNN.npy`` arrays
of shape ``(N, C, S, S)`` and ``index.parquet`` mapping an entry key to (shard, row). An entry key
is a hash of the file's content hash, the frame and the recipe, so a changed file or a changed
recipe simply misses; nothing stale can ever be read. File names carry hashes only, never an
identifier from the image. One writer at a time per recipe folder.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from medvision._atomic import atomic_path, atomic_write_text
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
        self._index_path = self.dir / "index.parquet"
        if self._index_path.exists():
            self._index = pd.read_parquet(self._index_path)
        else:
            self._index = pd.DataFrame(
                {"key": pd.Series(dtype=str), "shard": pd.Series(dtype="int32"), "row": pd.Series(dtype="int32")}
            )
        self._where = dict(zip(self._index["key"], zip(self._index["shard"], self._index["row"])))
        self._shards: dict[int, np.ndarray] = {}
        self._unsaved: list[pd.DataFrame] = []  # index rows of shards written since the last save_index()
        self._next_shard = int(self._index["shard"].max()) + 1 if len(self._index) else 0

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def keys(self) -> set[str]:
        return set(self._where)

    def append(self, items: Iterable[tuple[str, np.ndarray]], *, save_index: bool = True) -> int:
        """Write new entries as one new shard (existing keys are skipped); returns how many were written.

        ``save_index=False`` leaves the on-disk index to a later :meth:`save_index`: a build appending hundreds of
        shards then writes the index once instead of rewriting it whole after every shard (quadratic in the
        cohort's size). Until saved, the new shards are readable here but not named on disk.
        """
        items = [(k, a) for k, a in items if k not in self._where]
        if not items:
            if save_index:
                self.save_index()
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "recipe.json", json.dumps(self.params.model_dump(), indent=2, sort_keys=True))
        shard = self._next_shard
        self._next_shard += 1
        stacked = np.stack([a for _, a in items])
        # Whole or not at all (a full disk leaves no partial shard, and says where and how much was needed).
        buffer = io.BytesIO()
        np.save(buffer, stacked)  # then written by Python's own file, whose errors carry errno (numpy's drop it)
        with atomic_path(self.dir / f"shard-{shard:05d}.npy", need_bytes=buffer.getbuffer().nbytes) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        self._unsaved.append(
            pd.DataFrame(
                {"key": [k for k, _ in items], "shard": np.int32(shard), "row": np.arange(len(items), dtype=np.int32)}
            )
        )
        self._where.update({k: (shard, i) for i, (k, _) in enumerate(items)})
        if save_index:
            self.save_index()
        return len(items)

    def save_index(self) -> None:
        """Write the index with every shard appended so far (nothing to do when none is pending)."""
        if not self._unsaved:
            return
        index = pd.concat([self._index, *self._unsaved], ignore_index=True)
        with atomic_path(self._index_path, need_bytes=64 * len(index) + 4096) as tmp:
            index.to_parquet(tmp, index=False)  # the index only ever names shards that are fully written
        self._index = index
        self._unsaved = []

    def remove_temporaries(self) -> int:
        """Delete shards and indexes left half-written by a build that was killed; the writer calls it first."""
        patterns = ("shard-*.tmp.npy", "*.tmp.parquet", ".*.tmp.npy", ".*.tmp.parquet")  # older and current names
        stale = [p for pattern in patterns for p in self.dir.glob(pattern)] if self.dir.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def get(self, key: str) -> np.ndarray:
        """The cached ``(C, S, S)`` array (a view into a memory map; copy before writing to it)."""
        try:
            shard, row = self._where[key]
        except KeyError:
            raise KeyError(f"cache entry {key} is missing from {self.dir}; rebuild the cohort") from None
        arr = self._shards.get(shard)
        if arr is None:
            arr = np.load(self.dir / f"shard-{shard:05d}.npy", mmap_mode="r")
            self._shards[shard] = arr
        return arr[row]

    def to_float(self, arr: np.ndarray) -> np.ndarray:
        """Cached storage type back to float32 in [0, 1]."""
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        return arr.astype(np.float32)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = {}  # memory maps are reopened in each DataLoader worker
        return state
