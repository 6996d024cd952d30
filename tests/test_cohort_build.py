"""Building a cohort from a folder of real DICOM files, broken ones included."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.build import CohortBuildError, build_cohort
from medvision.cohort.spec import SpecError, load_spec

PHI = {
    "names": ["SMITH^JOHN", "DOE^JANE"],
    "ids": ["MRN0042917", "MRN0077311"],
    "dobs": ["19570312", "19811130"],
    "acc": ["ACC99123", "ACC99456"],
}


def write_dx(path: Path, patient: int, label_seed: int, pixels: bool = True) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study{patient}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series{patient}"])
    ds.PatientName, ds.PatientID = PHI["names"][patient % 2], f"{PHI['ids'][patient % 2]}{patient}"
    ds.PatientBirthDate, ds.AccessionNumber = PHI["dobs"][patient % 2], PHI["acc"][patient % 2]
    ds.PatientSex = "F" if patient % 2 else "M"
    ds.PatientAge = f"{30 + 7 * patient:03d}Y"
    ds.Modality, ds.InstitutionName, ds.Manufacturer = "DX", ("North" if patient < 6 else "South"), "Acme"
    if pixels:
        rng = np.random.default_rng(label_seed)
        arr = (rng.random((24, 20)) * 4000).astype(np.uint16)
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = arr.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return ds.SOPInstanceUID


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "00112233445566778899aabbccddeeff")
    img = tmp_path / "src" / "images"
    rows = []
    for p in range(8):
        for i in range(1 + p % 2):
            d = img / f"site{p // 6}" / f"s{p:03d}"
            d.mkdir(parents=True, exist_ok=True)
            uid = write_dx(d / f"i{i}.dcm", p, p * 10 + i)
            rows.append({"sop": uid, "finding": ["normal", "effusion", "rare"][p % 3] if p != 7 else ""})
    bad = img / "bad"
    bad.mkdir()
    good = next(img.rglob("*.dcm"))
    (bad / "truncated.dcm").write_bytes(good.read_bytes()[:400])
    write_dx(bad / "nopixels.dcm", 3, 0, pixels=False)
    (bad / "notes.txt").write_text("not an image")
    # a transfer syntax nothing here can decode: MPEG-2 video, with garbage fragments
    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x0a garbage"])
    ds["PixelData"].VR = "OB"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["mpeg2"])
    ds.save_as(bad / "mpeg2.dcm", enforce_file_format=True)
    # malformed identifying values: pydicom's validation would quote them in its warnings
    from pydicom import config

    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(good)
        ds.PatientName = "VERYLONGSURNAMEXYZ" * 5 + "^JANE"
        ds.PatientBirthDate = "1957-03-12"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bad-values"])
        ds.save_as(img / "site0" / "s000" / "i9.dcm", enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = config.WARN
    pd.DataFrame(rows).to_csv(tmp_path / "src" / "labels.csv", index=False)
    spec = {
        "name": "tiny",
        "images": "images",
        "labels": {"csv": "labels.csv", "join": "sop_instance_uid", "key_column": "sop", "label_columns": ["finding"]},
        "splits": {"heldout_sites": ["South"], "label_fractions": [0.5, 1.0]},
        "preprocess": {"size": 16, "channels": 1},
    }
    (tmp_path / "src" / "cohort.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "src" / "cohort.yaml"


def _all_text(out: Path) -> str:
    m = pd.read_parquet(out / "manifest.parquet")
    parts = [m.astype(str).to_csv(), (out / "cohort.json").read_text(), (out / "quarantine.csv").read_text()]
    parts += [str(p.relative_to(out)) for p in out.rglob("*")]
    return "\n".join(parts)


def test_build_accounts_for_every_file_and_leaks_no_phi(source, tmp_path, caplog, recwarn):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    card = build_cohort(source, out)
    m = pd.read_parquet(out / "manifest.parquet")
    q = pd.read_csv(out / "quarantine.csv")
    files = sorted(
        p.relative_to(source.parent / "images").as_posix() for p in (source.parent / "images").rglob("*") if p.is_file()
    )
    assert sorted(set(m["relpath"]) | set(q["relpath"])) == files
    assert not set(m["relpath"]) & set(q["relpath"])
    reasons = dict(zip(q["relpath"], q["reason"]))
    assert set(reasons) == {"bad/truncated.dcm", "bad/nopixels.dcm", "bad/notes.txt", "bad/mpeg2.dcm"}
    assert "no pixel data" in reasons["bad/nopixels.dcm"].lower()
    assert "not a dicom" in reasons["bad/notes.txt"].lower()
    assert all(len(r) > 10 for r in reasons.values())
    # subgroups and sites from headers; unlabelled image kept, not dropped
    assert set(m["sex"]) == {"M", "F"} and m["age_band"].str.match(r"^(\d+-\d+|<\d+|\d+\+)$").all()
    assert set(m.loc[m["site"] == "South", "split"]) == {"site_ood"}
    # unlabelled images are kept; they follow their patient (unlabelled patients form their own pool)
    unl = m[m["label"].isna()]
    assert len(unl) == 3
    labelled_patients = set(m.loc[m["label"].notna(), "patient_id"])
    for patient, split in zip(unl["patient_id"], unl["split"]):
        assert split in ("unlabelled", "site_ood") or patient in labelled_patients
    assert card.images == len(m) == 13 and card.quarantined == 4
    assert m["patient_id"].str.match(r"^P-[0-9a-f]{16}$").all()
    # PHI never leaves the cohort layer
    text = _all_text(out) + caplog.text + "\n".join(str(w.message) for w in recwarn)
    for value in [
        *PHI["names"],
        *PHI["ids"],
        *PHI["dobs"],
        *PHI["acc"],
        "SMITH",
        "JOHN",
        "VERYLONGSURNAMEXYZ",
        "1957-03-12",
    ]:
        assert value not in text, value
    assert not any(uid in text for uid in pd.read_csv(source.parent / "labels.csv")["sop"])


def test_rebuild_uses_cache_and_changed_preprocessing_decodes_again(source, tmp_path):
    out = tmp_path / "out"
    first = build_cohort(source, out)
    assert first.build.decoded_now == first.images
    again = build_cohort(source, out)
    assert again.build.decoded_now == 0 and again.build.from_cache == again.images
    assert again.manifest_sha256 == first.manifest_sha256
    spec = load_spec(source)
    bigger = spec.model_copy(update={"preprocess": spec.preprocess.model_copy(update={"size": 20})})
    third = build_cohort(bigger, out)
    assert third.build.decoded_now == third.images
    m = pd.read_parquet(out / "manifest.parquet")
    from medvision.cohort.cohort import open_cohort

    cohort = open_cohort(out)
    assert cohort.cache.get(m["cache_key"].iloc[0]).shape == (1, 20, 20)


def test_a_typo_in_the_spec_fails_before_any_file_is_read(source, tmp_path):
    raw = yaml.safe_load(source.read_text())
    raw["splits"]["heldout_site"] = ["South"]
    source.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"splits\.heldout_site: unknown key"):
        load_spec(source)
    result = CliRunner().invoke(app, ["cohort", "build", str(source), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "heldout_site" in result.output
    assert not (tmp_path / "o").exists()


def test_paths_that_spell_patient_ids_are_refused_unless_kept_private(source, tmp_path):
    img = source.parent / "images"
    shutil.move(img / "site0" / "s001", img / "site0" / "MRN00773111")  # a folder named after PatientID
    with pytest.raises(CohortBuildError, match="record_paths: false"):
        build_cohort(source, tmp_path / "out")
    raw = yaml.safe_load(source.read_text())
    raw["record_paths"] = False
    source.write_text(yaml.safe_dump(raw))
    build_cohort(source, tmp_path / "out")
    assert "MRN0077311" not in _all_text(tmp_path / "out")
    assert pd.read_parquet(tmp_path / "out" / "manifest.parquet")["relpath"].isna().all()


def test_cli_build_and_show(source, tmp_path):
    out = tmp_path / "cli-out"
    runner = CliRunner()
    result = runner.invoke(app, ["cohort", "build", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Images per split and label" in result.output
    shown = runner.invoke(app, ["cohort", "show", str(out)])
    assert shown.exit_code == 0 and "quarantine" in shown.output.lower()
    assert json.loads((out / "cohort.json").read_text())["name"] == "tiny"
    for value in [*PHI["names"], *PHI["ids"], *PHI["dobs"]]:
        assert value not in result.output + shown.output


def test_quarantine_reasons_are_scrubbed_of_every_known_identifier():
    from medvision.cohort.identifiers import scrub

    identifiers = {"smith", "john", "mrn0042917", "1.2.840.99"}
    text = "cannot read SMITH^JOHN (MRN0042917) uid 1.2.840.99.7, johnsmith too"
    out = scrub(text, identifiers)
    # whole tokens only: "johnsmith" is another word, as "does" is not "doe"
    assert out == "cannot read [redacted]^[redacted] ([redacted]) uid [redacted].7, johnsmith too"
    assert scrub(text, set()) == text


def test_a_build_shows_counts_on_a_terminal_and_nothing_in_a_log(source, tmp_path):
    """Indexing and decoding draw a bar with counts when stderr is a terminal (a pseudo-terminal here), and print
    nothing of it when stderr is a pipe (logs, CI)."""
    import os
    import pty
    import subprocess
    import sys

    code = f"import sys\nfrom medvision.cohort.build import build_cohort\nbuild_cohort({str(source)!r}, sys.argv[1])\n"
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "tty")], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=300) == 0
    text = seen.decode(errors="replace")
    assert "indexing" in text and "decoding" in text and "/" in text
    piped = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "pipe")], capture_output=True, text=True, env=env, timeout=300
    )
    assert piped.returncode == 0
    assert "indexing" not in piped.stderr and "decoding" not in piped.stderr


def test_a_class_with_no_training_image_is_a_warning_on_the_card(tmp_path, caplog):
    """80 synthetic patients, seed 0: the patient-level split puts every image of the training outlier condition
    'vascular' in test and the held-out site, so the model could never learn to abstain with it."""
    import logging

    from medvision.sources.synth import synthesize

    spec = synthesize(tmp_path / "derm", "derm", patients=80, seed=0)
    with caplog.at_level(logging.WARNING, logger="medvision.cohort"):
        card = build_cohort(spec, tmp_path / "out")
    assert "vascular" in card.outlier_conditions
    said = [w for w in card.warnings if w.startswith("class 'vascular' has no training image")]
    assert len(said) == 1 and "in test" in said[0] and "cannot learn it" in caplog.text, card.warnings
    assert not [w for w in card.warnings if w.startswith("class 'melanoma'")]  # the classes it trains on: no word
