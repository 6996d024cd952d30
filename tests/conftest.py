"""Fixtures shared across test modules: one small synthetic cohort per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A fixed, test-only pseudonym key, so building a cohort never creates a key in the home folder.
_TEST_PSEUDONYM_KEY = "6d6564766973696f6e2d746573742d6b6579"


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
