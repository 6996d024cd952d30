"""Synthetic CT series: real multi-slice DICOM whose geometry, rescale and planted finding a series model relies on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from medvision.cohort.build import build_cohort
from medvision.cohort.cases import SliceGeometry, UnorderableSeries, order_series
from medvision.cohort.cohort import open_cohort
from medvision.io import read_header
from medvision.models import create_backbone
from medvision.sources.synth import DEFECTS, synthesize


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("ct") / "src"
    synthesize(src, kind="ct-series", patients=20, seed=3, size=32, slices=20)
    return src


def _truth(src: Path) -> pd.DataFrame:
    t = pd.read_csv(src / "slices_truth.csv", keep_default_na=False)
    t["series"] = t["relpath"].str.rsplit("/", n=1).str[0]
    return t


def test_one_ct_series_per_patient_with_geometry_and_hounsfield_rescale(ct):
    files = sorted((ct / "images").rglob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert {h.Modality for h in headers} == {"CT"} and {h.SOPClassUID for h in headers} == {"1.2.840.10008.5.1.4.1.1.2"}
    by_patient = pd.DataFrame(
        {"patient": [h.PatientID for h in headers], "series": [h.SeriesInstanceUID for h in headers]}
    )
    assert (by_patient.groupby("patient")["series"].nunique() == 1).all()
    assert {h.RescaleType for h in headers} == {"HU"}
    assert {(float(h.RescaleSlope), float(h.RescaleIntercept)) for h in headers} >= {(1.0, -1024.0), (1.0, 0.0)}
    placed = [h for h in headers if "ImagePositionPatient" in h]
    assert placed and all(len(h.ImageOrientationPatient) == 6 and float(h.SliceThickness) > 0 for h in placed)
    tilted = [h for h in placed if abs(float(h.ImageOrientationPatient[4]) - 1) > 1e-3]
    assert tilted, "one site scans with a gantry tilt (an oblique stack)"
    # Stored values map to plausible Hounsfield units: air outside the body, soft tissue and bone inside. Over one
    # series: at 32 px a single slice's nearest-neighbour resize can step over the thin cortical ring of the spine.
    series = files[len(files) // 2].parent
    hu = [
        ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for ds in map(pydicom.dcmread, sorted(series.glob("*.dcm")))
    ]
    assert min(h.min() for h in hu) < -900 and max(h.max() for h in hu) > 300


def test_the_finding_lies_on_3_to_10_percent_of_a_positive_series(ct):
    t = _truth(ct)
    labels = pd.read_csv(ct / "labels.csv")
    assert set(labels["label"]) == {"normal", "nodule"}
    per = t[t["defect"] == ""].groupby("series").agg(n=("slice_index", "nunique"), f=("finding", "sum"))
    positive = per[per["f"] > 0]
    assert len(positive) >= 3 and (per["f"] == 0).sum() >= 3
    share = positive["f"] / positive["n"]
    assert (positive["f"] >= 1).all() and (share <= 0.101).all()
    assert (share >= 0.03).mean() >= 0.5  # a short series rounds some shares down to one slice


def test_headers_order_each_clean_series_and_refuse_the_defective_ones(ct):
    t = _truth(ct)
    assert set(t["defect"]) - {""} == set(DEFECTS)
    for series, g in t.groupby("series"):
        slices = []
        for rel in g["relpath"]:
            h = read_header(ct / "images" / rel)
            slices.append(
                SliceGeometry(h.position, h.orientation, h.instance_number, 0, h.slice_spacing, h.slice_thickness,
                              h.rows, h.columns, rel)
            )  # fmt: skip
        defect = g["defect"].iloc[0]
        if DEFECTS.get(defect) == "quarantine":
            with pytest.raises(UnorderableSeries):
                order_series(slices)
            continue
        o = order_series(slices)
        assert g["slice_index"].to_numpy()[o.order].tolist() == sorted(g["slice_index"]), series
        assert o.method == ("instance_number" if defect == "instance-number-only" else "position")
        if defect == "mixed-size":
            assert "resampled" in " ".join(o.notes)
        # File names never give the order away.
        assert sorted(g["relpath"]) != g.sort_values("slice_index")["relpath"].tolist()


def test_same_seed_same_bytes(tmp_path):
    def digest(folder: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    a = synthesize(tmp_path / "a", "ct-series", patients=3, seed=9, size=16, slices=8).parent
    b = synthesize(tmp_path / "b", "ct-series", patients=3, seed=9, size=16, slices=8).parent
    assert digest(a) == digest(b)
    assert np.unique([p.parent for p in (a / "images").rglob("*.dcm")]).size == 3


def _constant_share(feats: np.ndarray) -> float:
    """The share of embedding features that take one value on every slice (they carry nothing)."""
    return float((feats.max(0) == feats.min(0)).mean())


def test_a_frozen_effnet_sees_the_nodule_at_the_size_the_mil_test_trains_on(tmp_path, monkeypatch):
    """The MIL test (``test_series_mil.py``) trains bag heads on frozen EfficientNet-Lite0 embeddings of 64-px
    slices; at 32 px it learned nothing, because the network's output stride is 32: a 1x1 final map, and nearly
    every feature is the same on every slice. Here, fast: most features vary at 64 px and a linear probe on them
    finds the nodule slices of held-out patients; the same slices shrunk to 32 px collapse."""
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "00112233445566778899aabbccddeeff")
    spec = synthesize(tmp_path / "src", "ct-series", patients=60, seed=0, size=64, slices=12)
    build_cohort(spec, tmp_path / "cohort")
    cohort = open_cohort(tmp_path / "cohort")
    rows = cohort.manifest.merge(pd.read_csv(spec.parent / "slices_truth.csv"), on="relpath")
    pixels = torch.from_numpy(np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in rows["cache_key"]]))
    backbone = create_backbone("effnet-lite0", "hub", in_chans=1).eval()
    with torch.no_grad():
        feats = backbone(pixels).numpy()
        small = backbone(F.interpolate(pixels, size=32, mode="area")).numpy()
    assert _constant_share(feats) < 0.5 and _constant_share(small) > 0.8
    patients = rows["patient_id"].to_numpy()
    first = np.isin(patients, np.unique(patients)[::2])
    finding = rows["finding"].to_numpy()
    assert finding[first].sum() >= 5 and finding[~first].sum() >= 5
    scaler = StandardScaler().fit(feats[first])
    probe = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(feats[first]), finding[first])
    assert roc_auc_score(finding[~first], probe.decision_function(scaler.transform(feats[~first]))) > 0.9
