"""Synthetic cohorts: real DICOM with the planted structure later stages rely on, and no PHI after a build."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.uid import RLELossless
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.sources.synth import CLASSES, synthesize

KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))]


@pytest.fixture(scope="module")
def cxr(tmp_path_factory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("cxr") / "src"
    spec = synthesize(src, kind="cxr", patients=160, seed=11, size=32)
    return src, spec


@pytest.fixture(scope="module")
def derm(tmp_path_factory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("derm") / "src"
    spec = synthesize(src, kind="derm", patients=160, seed=5, size=32)
    return src, spec


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    a = synthesize(tmp_path / "a", kind="cxr", patients=12, seed=1, size=32)
    b = synthesize(tmp_path / "b", kind="cxr", patients=12, seed=1, size=32)
    c = synthesize(tmp_path / "c", kind="cxr", patients=12, seed=2, size=32)
    assert _digest(a.parent) == _digest(b.parent)
    assert _digest(a.parent) != _digest(c.parent)


def test_cxr_files_carry_the_awkward_properties_of_a_real_archive(cxr):
    src, _ = cxr
    headers = _headers(src / "images")
    assert {h.Modality for h in headers} <= {"DX", "CR"} and len({h.Modality for h in headers}) == 2
    photometric = Counter(h.PhotometricInterpretation for h in headers)
    assert photometric["MONOCHROME1"] > 0 and photometric["MONOCHROME2"] > 0
    assert {int(h.BitsStored) for h in headers} == {12}
    assert any(float(h.get("RescaleSlope", 1)) != 1 or float(h.get("RescaleIntercept", 0)) != 0 for h in headers)
    assert any(h.file_meta.TransferSyntaxUID == RLELossless for h in headers)
    assert any(int(h.get("NumberOfFrames", 1)) > 1 for h in headers)
    assert len({h.InstitutionName for h in headers}) >= 2
    # The planted PHI is in the headers, so scrubbing is tested for real.
    planted = json.loads((src / "phi_planted.json").read_text())
    assert {str(h.PatientName) for h in headers} <= set(planted["patient_names"])


def test_derm_has_vl_photographs_and_plain_photos(derm):
    src, _ = derm
    headers = _headers(src / "images")
    assert headers and {h.SOPClassUID for h in headers} == {"1.2.840.10008.5.1.4.1.1.77.1.4"}
    assert {h.PhotometricInterpretation for h in headers} <= {"RGB", "YBR_FULL"}
    assert list((src / "images").rglob("*.jpg")) or list((src / "images").rglob("*.png"))


@pytest.mark.parametrize("kind", ["cxr", "derm"])
def test_build_finds_the_planted_structure(kind, cxr, derm, tmp_path):
    src, spec = {"cxr": cxr, "derm": derm}[kind]
    card = build_cohort(spec, tmp_path / "out")
    n_files = sum(1 for p in (src / "images").rglob("*") if p.is_file())
    assert card.quarantined == 0
    cohort = open_cohort(tmp_path / "out")
    m = cohort.manifest
    assert m["relpath"].nunique() + len(pd.read_csv(tmp_path / "out" / "quarantine.csv")) == n_files

    # multi-instance patients: a share with 2-4 images
    per_patient = m.groupby("patient_id")["image_id"].nunique()
    assert 0.2 < (per_patient >= 2).mean() < 0.6 and per_patient.max() <= 4

    # held-out conditions only in condition_ood; the held-out site only in site_ood
    rare = CLASSES[kind][-2:]
    assert set(m.loc[m["split"] == "condition_ood", "label"]) <= set(rare)
    assert not m.loc[m["split"].isin(["train", "val", "test"]), "label"].isin(rare).any()
    heldout_site = set(m.loc[m["split"] == "site_ood", "site"])
    assert len(heldout_site) == 1 and not m.loc[m["split"] == "train", "site"].isin(heldout_site).any()

    # sites differ in class priors
    common = m[~m["label"].isin(CLASSES[kind][-3:])]
    priors = pd.crosstab(common["site"], common["label"], normalize="index")
    assert (priors.max() - priors.min()).max() > 0.1

    # subgroup columns present, with unknowns kept
    assert {"sex", "age_band", "site"} <= set(m.columns)
    assert (m["sex"] == "unknown").any()
    if kind == "derm":
        assert "skin_type" in m.columns and (m["skin_type"] == "unknown").any()


def test_planted_phi_never_leaves_the_build(derm, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    src, spec = derm
    result = CliRunner().invoke(app, ["cohort", "build", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    shown = CliRunner().invoke(app, ["cohort", "show", str(tmp_path / "out")])
    out = tmp_path / "out"
    texts = [
        pd.read_parquet(out / "manifest.parquet").astype(str).to_csv(),
        (out / "cohort.json").read_text(),
        (out / "quarantine.csv").read_text(),
        result.output,
        shown.output,
        caplog.text,
    ]
    texts += [str(p.relative_to(out)) for p in out.rglob("*")]
    texts += [pd.read_parquet(p).astype(str).to_csv() for p in out.rglob("*.parquet")]
    blob = "\n".join(texts).upper()
    planted = json.loads((src / "phi_planted.json").read_text())
    values = [v for vs in planted.values() for v in vs]
    assert len(values) > 100
    leaked = [v for v in values if v.upper() in blob]
    assert not leaked, leaked[:5]


@pytest.mark.slow
def test_a_2000_image_cohort_builds_end_to_end(tmp_path):
    spec = synthesize(tmp_path / "src", kind="cxr", patients=1260, seed=4, size=32)
    n_files = sum(1 for p in (tmp_path / "src" / "images").rglob("*") if p.is_file())
    build_cohort(spec, tmp_path / "out")
    m = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    quarantined = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert len(m) >= 2000
    assert m["relpath"].nunique() + len(quarantined) == n_files
    assert set(m["split"]) >= {"train", "val", "test", "site_ood", "condition_ood"}
    card = json.loads((tmp_path / "out" / "cohort.json").read_text())
    assert card["manifest_sha256"]
