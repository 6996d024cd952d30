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


@pytest.fixture(scope="session")
def evaluated_hod_run(synth_cxr_cohort, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """A one-epoch HOD fine-tune of a tiny ResNet on ``synth_cxr_cohort`` in its own SQLite store, evaluated on its
    test set by ``medvision evaluate`` (5 bootstrap resamples, no saliency): ``(run_id, tracking_uri, eval_dir)``.
    Shared by the predict and checklist tests; treat it as read-only."""
    from typer.testing import CliRunner

    from medvision.cli import app

    tmp = tmp_path_factory.mktemp("evaluated-hod")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_id = hod_finetune(synth_cxr_cohort, tmp / "run", uri)
    out = tmp / "evaluation"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        args = ["evaluate", run_id, "--out", str(out), "--bootstrap", "5", "--saliency", "0", "--sets", "test"]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run_id, uri, out


def hod_finetune(cohort: Path, folder: Path, uri: str, seed: int = 0) -> str:
    """A one-epoch HOD fine-tune of a tiny ResNet on ``cohort`` into ``folder``, logged to ``uri``: its run id.
    Runs of other ``seed`` are members of one seed ensemble (the same recipe, named ``finetune/lf1.0``)."""
    from medvision.config import parse_config
    from medvision.training import FinetuneConfig, finetune

    raw = {
        "data": {"cohort_dir": str(cohort), "batch_size": 64},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "hod"},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(folder),
        "seed": seed,
        "tracking": {"tracking_uri": uri, "experiment": "evaluated", "run_name": "finetune/lf1.0"},
    }
    return finetune(parse_config(raw, FinetuneConfig)).run_id
