"""`predict --send`: the DICOM reports and saliency images stored back to the source PACS by STOW-RS (a real Orthanc
with its DICOMweb plugin), attached to the source studies and found there by QIDO-RS; a refused password fails
clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dicomweb_client.api import DICOMwebClient
from orthanc_server import start_orthanc

from medvision.classifier import Classifier
from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.cohort.source_instances import source_instances
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.serving.dicom_results import ModelIdentity, study_reports, write_reports
from medvision.serving.saliency_capture import write_saliency_images
from medvision.serving.send import send_reports
from medvision.sources.pacs import PacsAuthError
from medvision.sources.synth import synthesize
from tests.conftest import _TEST_PSEUDONYM_KEY

pytestmark = pytest.mark.server

PASSWORD = "S3nd-back-pw"
_COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_reports_sent_by_stow_rs_are_found_in_their_source_studies(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
    spec = synthesize(tmp_path / "source", "cxr", patients=3, seed=5, size=32)
    server = start_orthanc(tmp_path / "orthanc", "medvision", PASSWORD)
    try:
        server.upload(sorted((tmp_path / "source" / "images").rglob("*.dcm")))  # the source PACS holds the images
        build_cohort(spec, tmp_path / "cohort")
        cohort = open_cohort(tmp_path / "cohort")
        table = cohort.manifest[["image_id", "patient_id", "study_id", "series_id", "frame"]].copy()
        for i, name in enumerate(cohort.classes):
            table[f"p:{name}"] = np.full(len(table), 1.0 / len(cohort.classes)) + (0.01 if i == 0 else 0.0)
        sources, _ = source_instances(cohort, cohort.manifest, original=True)
        model = ModelIdentity("cxr-triage", "2", cohort.classes)
        paths = write_reports(study_reports(table, sources, model), tmp_path / "dicom", private=True)
        torch.manual_seed(0)
        backbone = create_backbone("vit-tiny", in_chans=1)
        net = Classifier(backbone, create_head("linear", backbone.num_features, len(cohort.classes)), cohort.classes)
        images = write_saliency_images(
            net.eval(), cohort, table, cohort.manifest, sources, model, tmp_path / "dicom" / "saliency", private=True
        )

        monkeypatch.setenv("MEDVISION_PACS_USER", "medvision")
        monkeypatch.setenv("MEDVISION_PACS_PASSWORD", "wrong")
        with pytest.raises(PacsAuthError, match="HTTP 401") as refused:
            send_reports(paths, server.dicomweb, auth="basic")
        assert "wrong" not in str(refused.value)

        monkeypatch.setenv("MEDVISION_PACS_PASSWORD", PASSWORD)
        assert send_reports([*paths, *images], server.dicomweb, auth="basic") == len(paths) + len(images)

        client = DICOMwebClient(server.dicomweb)
        client._session.auth = ("medvision", PASSWORD)
        found = client.search_for_instances(search_filters={"SOPClassUID": _COMPREHENSIVE_SR})
        assert len(found) == len(paths)
        source_studies = {ds.StudyInstanceUID for ds in sources.values()}
        assert {item["0020000D"]["Value"][0] for item in found} == source_studies  # each beside its images
        shown = client.search_for_instances(search_filters={"SOPClassUID": _SECONDARY_CAPTURE})
        assert len(shown) == len(images) == len(sources)  # a saliency image per source image ...
        assert {item["0020000D"]["Value"][0] for item in shown} == source_studies  # ... in the source's study
    finally:
        server.stop()
