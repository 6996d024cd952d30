"""Arrays in append-only, memory-mapped shards with one index: the store under the image cache and the feature
cache, safe with several writers at once.

Why one store: the image cache (:mod:`medvision.cohort.cache`) and the frozen-feature cache
(:mod:`medvision.engine.features`) both keep many small arrays on disk under content keys. The feature cache began
as a weaker copy (next shard number from its own in-memory view, a fixed temporary name, an index written
last-writer-wins, no lock), so two linear probes embedding one cohort at once could overwrite each other's shards
and index. Both now use this one.

Layout of a store folder::

    shard-NNNNN.npy   an (N, ...) array; written whole to a temporary name, then renamed (medvision._atomic)
    index.parquet     key -> (shard, row); names only shards that are complete
    .lock             the writers' lock

How writers stay out of each other's way: a shard's number is chosen and its file renamed into place under the
lock, so no two writers take one number; saving the index re-reads the index on disk under the lock and adds only
keys it lacks, so an entry another writer saved is never dropped (keys are content hashes: two writers' entries
for one key hold the same array, and the first one saved is kept). Readers take no lock: the index and the shards
it names are only ever replaced whole. The folder and its files are owner-only (0700 / 0600): the arrays are
images of patients, or embeddings of them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from medvision._atomic import FILE_MODE, atomic_path, private_dir

__all__ = ["ShardStore"]

_SHARD = "shard-{:05d}.npy"
#: Temporary files a killed writer can leave: current names (``medvision._atomic``) and older ones.
_TEMPORARIES = (".*.tmp.npy", ".*.tmp.parquet", "shard-*.tmp.npy", "*.tmp.parquet")


class ShardStore:
    """Arrays under string keys, in shards of one folder.

    Args:
        folder: the store's folder (created, owner-only, on the first write).

    Example::

        >>> import tempfile
        >>> store = ShardStore(tempfile.mkdtemp())
        >>> store.append([("a", np.zeros(3)), ("b", np.ones(3))])
        2
        >>> ShardStore(store.dir).get("b").tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)
        self._index_path = self.dir / "index.parquet"
        self._unsaved: list[pd.DataFrame] = []  # rows of shards written since the last save_index()
        self._shards: dict[int, np.ndarray] = {}
        self._last_shard = -1
        self._where: dict[str, tuple[int, int]] = {}
        self.refresh()

    # --- reading ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Take in the entries other writers saved since this store was opened (own unsaved ones are kept)."""
        index = self._read_index()
        where = dict(zip(index["key"], zip(index["shard"].tolist(), index["row"].tolist())))
        for rows in self._unsaved:
            for key, shard, row in rows.itertuples(index=False):
                where.setdefault(key, (int(shard), int(row)))
        self._where = where
        self._last_shard = max([self._last_shard, *(s for s, _ in where.values())])

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def keys(self) -> set[str]:
        return set(self._where)

    def get(self, key: str) -> np.ndarray:
        """The array stored under ``key`` (a view into a memory map; copy before writing to it).

        Raises:
            KeyError: no such entry (the message names the folder).
        """
        try:
            shard, row = self._where[key]
        except KeyError:
            raise KeyError(f"entry {key} is missing from {self.dir}") from None
        arr = self._shards.get(shard)
        if arr is None:
            arr = np.load(self.dir / _SHARD.format(shard), mmap_mode="r")
            self._shards[shard] = arr
        return arr[row]

    def get_many(self, keys: Iterable[str]) -> np.ndarray:
        """The arrays of ``keys`` stacked (a copy)."""
        return np.stack([self.get(k) for k in keys])

    # --- writing ---------------------------------------------------------------------------------------

    def append(self, items: Iterable[tuple[str, np.ndarray]], *, save_index: bool = True) -> int:
        """Write the new entries of ``items`` as one new shard (keys already present are skipped); returns how
        many were written.

        ``save_index=False`` leaves the on-disk index to a later :meth:`save_index`: a build appending hundreds of
        shards then writes the index once instead of rewriting it whole after every shard (quadratic in the
        number of entries). Until saved, the new shards are readable here but not named on disk.

        Raises:
            DiskFullError: the disk filled up; no partial shard is left behind.
        """
        fresh: dict[str, np.ndarray] = {}
        for key, arr in items:
            if key not in self._where and key not in fresh:
                fresh[key] = arr
        if fresh:
            # Serialised first, then written by Python's own file, whose errors carry errno (numpy's drop it).
            buffer = io.BytesIO()
            np.save(buffer, np.stack(list(fresh.values())))
            with self._locked():
                shard = self._free_shard()
                with atomic_path(self.dir / _SHARD.format(shard), buffer.getbuffer().nbytes, private=True) as tmp:
                    tmp.write_bytes(buffer.getbuffer())
            self._last_shard = shard
            rows = pd.DataFrame(
                {"key": list(fresh), "shard": np.int32(shard), "row": np.arange(len(fresh), dtype=np.int32)}
            )
            self._unsaved.append(rows)
            self._where.update({k: (shard, i) for i, k in enumerate(fresh)})
        if save_index:
            self.save_index()
        return len(fresh)

    def save_index(self) -> None:
        """Name every shard appended here in the on-disk index, beside every entry other writers saved."""
        if not self._unsaved:
            return
        with self._locked():
            on_disk = self._read_index()
            mine = pd.concat(self._unsaved, ignore_index=True)
            index = pd.concat([on_disk, mine[~mine["key"].isin(on_disk["key"])]], ignore_index=True)
            with atomic_path(self._index_path, need_bytes=64 * len(index) + 4096, private=True) as tmp:
                index.to_parquet(tmp, index=False)  # the index only ever names shards that are fully written
        self._unsaved = []
        self.refresh()

    def remove_temporaries(self) -> int:
        """Delete shards and indexes left half-written by a writer that was killed; returns how many.

        Under the lock: a writer holds it while its temporary files exist, so whatever is found is stale.
        """
        if not self.dir.is_dir():
            return 0
        with self._locked():
            stale = {p for pattern in _TEMPORARIES for p in self.dir.glob(pattern)}
            for path in stale:
                path.unlink(missing_ok=True)
        return len(stale)

    # --- machinery -------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.dir)
        with FileLock(str(self.dir / ".lock"), mode=FILE_MODE):
            yield

    def _free_shard(self) -> int:
        """The next shard number no writer has taken (called under the lock; shards are renamed in under it)."""
        shard = self._last_shard + 1
        while (self.dir / _SHARD.format(shard)).exists():
            shard += 1
        return shard

    def _read_index(self) -> pd.DataFrame:
        if self._index_path.exists():
            return pd.read_parquet(self._index_path)
        return pd.DataFrame(
            {"key": pd.Series(dtype=str), "shard": pd.Series(dtype="int32"), "row": pd.Series(dtype="int32")}
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = {}  # memory maps are reopened in each DataLoader worker
        return state
