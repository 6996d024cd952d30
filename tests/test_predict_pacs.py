"""`predict --pacs SPEC` and `predict --send dimse://...` against a real Orthanc: the pull gives the probabilities the
same files give through --images, and the reports stored by C-STORE are found in their source studies by QIDO-RS."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from orthanc_server import CALLED_AET, start_orthanc
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.cohort import open_cohort
from medvision.serving.send import send_reports
from medvision.sources.pacs import PacsAuthError
from tests.conftest import _TEST_PSEUDONYM_KEY

# Every test here starts a real Orthanc (Debian's package) and predicts with the session's trained model.
pytestmark = [pytest.mark.server, pytest.mark.slow]

PASSWORD = "Pr3dict-PACS-pw"
_COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
_PATIENTS = 6


@pytest.fixture(scope="module")
def source_pacs(synth_cxr_cohort, tmp_path_factory):
    """An Orthanc holding every image of a few patients of the session's cohort, the same files in a folder, and a
    PACS request (DIMSE) for them."""
    root = tmp_path_factory.mktemp("predict-pacs")
    cohort = open_cohort(synth_cxr_cohort)
    manifest = cohort.manifest
    patients = sorted(manifest["patient_id"].unique())[:_PATIENTS]
    relpaths = sorted(manifest.loc[manifest["patient_id"].isin(patients), "relpath"].unique())
    for rel in relpaths:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(cohort.card.spec["images"]) / rel, root / "images" / rel)
    files = [root / "images" / rel for rel in relpaths]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    server = start_orthanc(root / "orthanc", "medvision", PASSWORD)
    server.upload(files)
    request = {
        "protocol": "dimse",
        "host": "127.0.0.1",
        "port": server.dicom_port,
        "called_aet": CALLED_AET,
        "store": "store",  # relative: taken from the spec's folder, as in a cohort spec
        "query": {"modality": sorted({str(h.Modality) for h in headers})},
        "concurrency": 2,
        "retries": 1,
        "timeout": 10,
    }
    (root / "request.yaml").write_text(yaml.safe_dump(request))
    yield {"server": server, "root": root, "headers": headers}
    server.stop()


def _predict(args: list[str], uri: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["predict", *args, "--tracking-uri", uri])
    return result.exit_code, result.output


def test_predict_pacs_pulls_and_predicts_what_images_predicts(evaluated_hod_run, source_pacs, monkeypatch):
    run_id, uri, _ = evaluated_hod_run
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
    root = source_pacs["root"]
    code, output = _predict([run_id, "--pacs", str(root / "request.yaml"), "--out", str(root / "by-pacs")], uri)
    assert code == 0, output
    n = len(source_pacs["headers"])
    assert f"{n} instance(s) matched on the PACS: {n} pulled" in output
    assert len(list((root / "store" / "instances").rglob("*.dcm"))) == n  # into the spec's store
    code, output = _predict([run_id, "--images", str(root / "images"), "--out", str(root / "by-folder")], uri)
    assert code == 0, output

    got = pd.read_parquet(root / "by-pacs" / "predictions.parquet").set_index("image_id").sort_index()
    expected = pd.read_parquet(root / "by-folder" / "predictions.parquet").set_index("image_id").sort_index()
    assert len(got) == n and got.index.equals(expected.index)  # the same instances, the same pseudonyms
    columns = [c for c in expected.columns if c.startswith("p:")] + ["ood_score"]
    np.testing.assert_allclose(got[columns].to_numpy(), expected[columns].to_numpy(), atol=1e-5)


def test_reports_sent_by_c_store_are_found_in_their_source_studies(evaluated_hod_run, source_pacs, monkeypatch):
    run_id, uri, _ = evaluated_hod_run
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
    root, server = source_pacs["root"], source_pacs["server"]
    target = f"dimse://{CALLED_AET}@127.0.0.1:{server.dicom_port}"
    out = root / "sent"
    code, output = _predict([run_id, "--pacs", str(root / "request.yaml"), "--out", str(out), "--send", target], uri)
    assert code == 0, output
    reports = sorted((out / "dicom").glob("*.dcm"))
    studies = {str(h.StudyInstanceUID) for h in source_pacs["headers"]}
    assert len(reports) == len(studies) and f"{len(reports)} report(s) stored to the PACS" in output

    client = DICOMwebClient(server.dicomweb)
    client._session.auth = ("medvision", PASSWORD)
    found = client.search_for_instances(search_filters={"SOPClassUID": _COMPREHENSIVE_SR})
    assert len(found) == len(reports)
    assert {item["0020000D"]["Value"][0] for item in found} == studies  # each beside its images

    # A wrong called AE title: refused, naming the server, never a patient.
    with pytest.raises(PacsAuthError, match="rejected the association") as refused:
        send_reports(reports, f"dimse://NOT-ORTHANC@127.0.0.1:{server.dicom_port}")
    assert f"127.0.0.1:{server.dicom_port}" in str(refused.value)
    assert not {str(h.PatientID) for h in source_pacs["headers"]} & set(str(refused.value).split())


def test_an_instance_the_pull_could_not_store_is_in_predicts_quarantine(evaluated_hod_run, source_pacs, monkeypatch):
    """A case the PACS matched but predict never saw is listed with its reason, as a build lists an unreadable
    file, named by its record in the owner-only store and never by a DICOM identifier."""
    pull_module = importlib.import_module("medvision.sources.pacs.pull")  # the package exports its function `pull`
    run_id, uri, _ = evaluated_hod_run
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
    root, headers = source_pacs["root"], source_pacs["headers"]
    broken = str(sorted(h.SOPInstanceUID for h in headers)[0])
    encode = pull_module.canonical_bytes

    def fail_one(ds, syntax):
        if str(ds.SOPInstanceUID) == broken:
            raise ValueError("injected")
        return encode(ds, syntax)

    monkeypatch.setattr(pull_module, "canonical_bytes", fail_one)
    request = yaml.safe_load((root / "request.yaml").read_text())
    (root / "failing.yaml").write_text(yaml.safe_dump({**request, "store": "store-failing"}))
    out = root / "with-failure"
    code, output = _predict([run_id, "--pacs", str(root / "failing.yaml"), "--out", str(out)], uri)
    assert code == 0, output
    n = len(headers)
    assert len(pd.read_parquet(out / "predictions.parquet")) == n - 1
    quarantine = pd.read_csv(out / "quarantine.csv")
    pulled = quarantine[quarantine["stage"] == "pull"]
    assert len(pulled) == 1 and "cannot be encoded" in pulled["reason"].iloc[0]
    assert "record 1 of the store's quarantine.jsonl" in pulled["relpath"].iloc[0]
    uids = {str(h.SOPInstanceUID) for h in headers} | {str(h.PatientID) for h in headers}
    assert not [u for u in uids if u in (out / "quarantine.csv").read_text()]
    assert "1 file(s) quarantined, not predicted" in output
