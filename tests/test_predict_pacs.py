"""`predict --pacs SPEC` and `predict --send dimse://...` against a real Orthanc: the pull gives the probabilities the
same files give through --images, and the reports stored by C-STORE are found in their source studies by QIDO-RS."""

from __future__ import annotations

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
