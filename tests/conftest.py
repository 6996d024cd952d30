"""Fixtures shared across test modules: one small synthetic cohort per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A fixed, test-only pseudonym key, so building a cohort never creates a key in the home folder.
_TEST_PSEUDONYM_KEY = "6d6564766973696f6e2d746573742d6b6579"


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Frozen features go to the user's cache folder by default; tests (and the runs they start in subprocesses,
    which inherit the environment) keep theirs in the session's temporary folder instead."""
    import os

    folder = tmp_path_factory.mktemp("feature-cache")
    before = os.environ.get("MEDVISION_FEATURE_CACHE")
    os.environ["MEDVISION_FEATURE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("MEDVISION_FEATURE_CACHE", None)
    else:
        os.environ["MEDVISION_FEATURE_CACHE"] = before


@pytest.fixture(scope="session")
def synth_cxr_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built synthetic chest X-ray cohort (300 patients, 32 px, 1 channel; 3 inlier classes + 1
    training outlier condition), built once per session. Treat it as read-only."""
    from medvision.cohort.build import build_cohort
    from medvision.sources.synth import synthesize

    root = tmp_path_factory.mktemp("synth-cxr")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
        spec = synthesize(root / "source", "cxr", patients=300, seed=0, size=32)
        build_cohort(spec, root / "cohort")
    return root / "cohort"
