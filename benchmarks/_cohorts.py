"""The synthetic cohort the training-side benchmarks run on, synthesised and built in a folder deleted afterwards.

Why shared: ``input_pipeline.py`` and ``linear_probe.py`` measure medvision's training paths on a real built cohort
(cache, manifest, splits), not on tensors, and a figure is only comparable run to run if that cohort is the same
each time: the same seed, and the same pseudonym key, since pseudonyms decide which patients land in which split.
The key is a fixed benchmark-only one unless ``MEDVISION_PSEUDONYM_KEY`` is already set, so a build never creates a
key in the home folder. Benchmarks that time synthesis or the build itself (``ingest.py``, ``cohort_scale.py``) or
need only the DICOM files (``pacs_pull.py``) call :func:`medvision.sources.synth.synthesize` themselves.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medvision.cohort.build import build_cohort
from medvision.sources.synth import Kind, synthesize

__all__ = ["PSEUDONYM_KEY", "synthetic_cohort"]

#: "medvision-bench-key", hex-encoded.
PSEUDONYM_KEY = "6d6564766973696f6e2d62656e63682d6b6579"


@contextmanager
def synthetic_cohort(kind: Kind, patients: int, size: int, prefix: str) -> Iterator[Path]:
    """Yield the folder of a built synthetic ``kind`` cohort (seed 0) of ``patients`` patients at ``size`` px.

    It lies in a temporary folder named ``prefix...`` next to the synthetic source; that folder (the cohort's
    parent) is the benchmark's scratch space for anything it writes beside the cohort, and is deleted on exit.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        os.environ.setdefault("MEDVISION_PSEUDONYM_KEY", PSEUDONYM_KEY)
        spec = synthesize(work / "source", kind, patients=patients, seed=0, size=size)
        build_cohort(spec, work / "cohort")
        yield work / "cohort"
