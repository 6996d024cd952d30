"""Decoding every instance into the preprocessing cache, in parallel, without ever stopping on one bad file.

Each worker hashes a file, skips frames whose cache entry already exists (a rebuild decodes only what changed) and
returns pixels or a quarantine reason; the parent process alone writes the cache, in shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from medvision.cohort.cache import PreprocessCache, entry_key
from medvision.cohort.index import Rejected, worker_count
from medvision.cohort.preprocess import preprocess
from medvision.cohort.spec import CohortSpec
from medvision.io import ImageReadError, read_image

__all__ = ["SHARD_SIZE", "fill_cache"]

SHARD_SIZE = 512


def _decode_init(existing: set[str]) -> None:
    global _EXISTING
    _EXISTING = existing


_EXISTING: set[str] = set()


def _decode_file(root: str, relpath: str, frames: list[int], params) -> list[tuple[int, str, str, object]]:
    """Hash a file, then decode the frames whose cache entry is missing. Never raises."""
    path = Path(root) / relpath
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        return [(fr, "", "", f"file could not be read: {e.strerror}") for fr in frames]
    results = []
    for fr in frames:
        key = entry_key(sha, fr, params)
        if key in _EXISTING:
            results.append((fr, sha, key, None))
            continue
        try:
            img = read_image(path, frame="mean" if fr == -1 else fr)
            results.append((fr, sha, key, preprocess(img.pixels, params)))
        except ImageReadError as e:
            results.append((fr, sha, key, e.reason + (f" ({e.hint})" if e.hint else "")))
        except Exception as e:  # noqa: BLE001 - a decoder bug must quarantine one file, not stop the build
            # The exception's text may quote header values, so only its type is kept.
            results.append((fr, sha, key, f"unexpected decoding error ({type(e).__name__}); please report it"))
    return results


def fill_cache(rows: pd.DataFrame, root: Path, cache: PreprocessCache, spec: CohortSpec):
    by_file: dict[str, list[int]] = {}
    for relpath, frame in zip(rows["relpath"], rows["frame"]):
        by_file.setdefault(relpath, []).append(int(frame))
    jobs = list(by_file.items())
    sha_of: dict[tuple[str, int], tuple[str, str]] = {}
    failures: dict[str, str] = {}
    pending: list[tuple[str, np.ndarray]] = []
    decoded = 0
    for relpath, results in zip([j[0] for j in jobs], _run_decode(jobs, root, cache, spec)):
        for fr, sha, key, payload in results:
            if isinstance(payload, str):
                failures.setdefault(relpath, payload)
                continue
            sha_of[(relpath, fr)] = (sha, key)
            if payload is not None:
                pending.append((key, payload))
                decoded += 1
            if len(pending) >= SHARD_SIZE:
                cache.append(pending)
                pending = []
    cache.append(pending)
    rejects = [Rejected(r, "decode", reason) for r, reason in sorted(failures.items())]
    keep = ~rows["relpath"].isin(failures)
    rows = rows[keep].copy()
    pairs = [sha_of[(r, int(f))] for r, f in zip(rows["relpath"], rows["frame"])]
    rows["content_sha256"] = [p[0] for p in pairs]
    rows["cache_key"] = [p[1] for p in pairs]
    return rows, rejects, decoded


def _run_decode(jobs, root: Path, cache: PreprocessCache, spec: CohortSpec) -> Iterator[list]:
    n = worker_count(spec.workers)
    existing = cache.keys()
    if n == 1 or len(jobs) < 32:
        _decode_init(existing)
        for relpath, frames in jobs:
            yield _decode_file(str(root), relpath, frames, spec.preprocess)
        return
    with ProcessPoolExecutor(n, initializer=_decode_init, initargs=(existing,)) as pool:
        yield from pool.map(
            _decode_file,
            [str(root)] * len(jobs),
            [j[0] for j in jobs],
            [j[1] for j in jobs],
            [spec.preprocess] * len(jobs),
            chunksize=max(1, len(jobs) // (n * 16)),
        )
