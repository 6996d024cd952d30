"""Decoding every instance into the preprocessing cache, in parallel, without ever stopping on one bad file.

Each worker hashes a file, skips frames whose cache entry already exists (a rebuild decodes only what changed) and
returns pixels or a quarantine reason; the parent process alone writes the cache, in shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from medvision.cohort.cache import PreprocessCache, entry_key
from medvision.cohort.index import Rejected, worker_count
from medvision.cohort.logscrub import Scrubber, scrub_worker
from medvision.cohort.preprocess import preprocess
from medvision.cohort.spec import CohortSpec
from medvision.cohort.workers import WORKER_DIED, map_isolated
from medvision.io import ImageReadError, read_image

__all__ = ["SHARD_SIZE", "fill_cache"]

SHARD_SIZE = 512


_DIED = (
    "the decoding process died on this file (killed for using too much memory, or a codec crash); "
    "lower `max_megapixels` or re-export the file"
)


def _decode_init(existing: set[str], scrubber: Scrubber | None = None) -> None:
    global _EXISTING
    _EXISTING = existing
    scrub_worker(scrubber)  # a spawned worker starts without the parent's log scrubbing


_EXISTING: set[str] = set()


#: One frame's outcome: ``(frame, file SHA-256, cache key, payload)``; the payload is the preprocessed pixels, a
#: quarantine reason, or ``None`` when the cache already holds the entry.
_Outcome = tuple[int, str, str, np.ndarray | str | None]


def _decode_file(root: str, relpath: str, frames: list[int], params) -> list[_Outcome]:
    """Hash a file, then decode the frames whose cache entry is missing. Never raises."""
    path = Path(root) / relpath
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        return [(fr, "", "", f"file could not be read: {e.strerror}") for fr in frames]
    results: list[_Outcome] = []
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


def fill_cache(
    rows: pd.DataFrame,
    root: Path,
    cache: PreprocessCache,
    spec: CohortSpec,
    scrubber: Scrubber | None = None,
    advance: Callable[[int], None] | None = None,
):
    """Decode every instance of ``rows`` into ``cache``; returns the rows kept (with content and cache keys), the
    files quarantined while decoding, and the cache keys decoded now (not found in the cache)."""
    by_file: dict[str, list[int]] = {}
    for relpath, frame in zip(rows["relpath"], rows["frame"]):
        by_file.setdefault(relpath, []).append(int(frame))
    jobs = list(by_file.items())
    sha_of: dict[tuple[str, int], tuple[str, str]] = {}
    failures: dict[str, str] = {}
    pending: list[tuple[str, np.ndarray]] = []
    decoded: set[str] = set()
    for relpath, results in _run_decode(jobs, root, cache, spec, scrubber):
        if advance is not None:
            advance(1)
        for fr, sha, key, payload in results:
            if isinstance(payload, str):
                failures.setdefault(relpath, payload)
                continue
            sha_of[(relpath, fr)] = (sha, key)
            if payload is not None:
                pending.append((key, payload))
                decoded.add(key)
            if len(pending) >= SHARD_SIZE:
                cache.append(pending, save_index=False)
                pending = []
    cache.append(pending)  # and write the cache index once, naming every shard of this build
    rejects = [Rejected(r, "decode", reason) for r, reason in sorted(failures.items())]
    keep = ~rows["relpath"].isin(failures)
    rows = rows[keep].copy()
    pairs = [sha_of[(r, int(f))] for r, f in zip(rows["relpath"], rows["frame"])]
    rows["content_sha256"] = [p[0] for p in pairs]
    rows["cache_key"] = [p[1] for p in pairs]
    return rows, rejects, decoded


def _run_decode(jobs, root: Path, cache: PreprocessCache, spec: CohortSpec, scrubber: Scrubber | None):
    """Yield ``(relpath, results)`` per file, in completion order; a file whose decoding process died is quarantined
    alone (:func:`~medvision.cohort.workers.map_isolated`)."""
    n = worker_count(spec.workers)
    existing = cache.keys()
    if n == 1 or len(jobs) < 32:
        _decode_init(existing, scrubber)
        for relpath, frames in jobs:
            yield relpath, _decode_file(str(root), relpath, frames, spec.preprocess)
        return
    args = [(str(root), relpath, frames, spec.preprocess) for relpath, frames in jobs]
    for i, results in map_isolated(_decode_file, args, n, initializer=_decode_init, initargs=(existing, scrubber)):
        if results is WORKER_DIED:
            results = [(fr, "", "", _DIED) for fr in jobs[i][1]]
        yield jobs[i][0], results
