"""MedMNIST .npz → cohort source → built cohort, with the official splits kept image for image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.build import build_cohort
from medvision.sources.medmnist import MedMNISTError, import_medmnist


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "00112233445566778899aabbccddeeff")


def _npz(path, sizes=(30, 8, 10), labels=1, rgb=False, drop=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if labels == 1:
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
        else:
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, labels))
    if drop:
        arrays.pop(drop)
    np.savez(path, **arrays)
    return path, arrays


def test_official_splits_and_pixels_survive_import_and_build(tmp_path):
    npz, arrays = _npz(tmp_path / "pneumoniamnist.npz")
    spec = import_medmnist(npz, tmp_path / "src")
    build_cohort(spec, tmp_path / "out")
    m = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    labels = pd.read_csv(tmp_path / "src" / "labels.csv")
    assert len(m) == 48 and m["patient_id"].nunique() == 48
    assert m["split"].value_counts().to_dict() == {"train": 30, "test": 10, "val": 8}
    # class names of the known set, counts per split exactly as in the arrays
    for split in ("train", "val", "test"):
        expected = np.bincount(arrays[f"{split}_labels"].ravel(), minlength=2)
        got = m[m["split"] == split]["label"].value_counts()
        assert [got.get("normal", 0), got.get("pneumonia", 0)] == expected.tolist()
        assert (
            labels[labels["split"] == split]["label"]
            == np.array(["normal", "pneumonia"])[arrays[f"{split}_labels"].ravel()]
        ).all()


def test_png_round_trip_is_lossless(tmp_path):
    from PIL import Image

    npz, arrays = _npz(tmp_path / "x.npz", rgb=True)
    import_medmnist(npz, tmp_path / "src")
    got = np.asarray(Image.open(tmp_path / "src" / "images" / "val-00003.png"))
    assert np.array_equal(got, arrays["val_images"][3])


def test_multilabel_sets_get_one_column_per_label(tmp_path):
    npz, _ = _npz(tmp_path / "chestmnist.npz", labels=4)
    spec = import_medmnist(npz, tmp_path / "src")
    labels = pd.read_csv(tmp_path / "src" / "labels.csv")
    assert [c for c in labels.columns if c.startswith("label_")] == ["label_0", "label_1", "label_2", "label_3"]
    build_cohort(spec, tmp_path / "out")
    m = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(m) == 48


def test_a_file_missing_a_split_is_refused_by_name(tmp_path):
    npz, _ = _npz(tmp_path / "bad.npz", drop="val_labels")
    with pytest.raises(MedMNISTError, match="val_labels"):
        import_medmnist(npz, tmp_path / "src")
    result = CliRunner().invoke(app, ["cohort", "import-medmnist", str(npz), str(tmp_path / "src2")])
    assert result.exit_code == 2 and "val_labels" in result.output
