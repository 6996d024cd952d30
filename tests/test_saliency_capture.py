"""Saliency maps as DICOM (``predict --saliency``): one Secondary Capture per predicted image that dicom3tools'
``dciodvfy`` passes with no error, in a new series of the study its Structured Report is about and naming the patient
and study as that report does (pseudonymous unless for the source PACS), marked not for diagnosis, referencing its
source instance, and whose pixels are the gallery's overlay of the Grad-CAM map of *that* image's predicted class."""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from medvision.classifier import Classifier, save_classifier
from medvision.cli import app
from medvision.cohort.cohort import Cohort
from medvision.cohort.source_instances import pseudonymous_uid, source_instances
from medvision.data.dataset import CohortDataset
from medvision.evaluation.overlay import display_image, overlay
from medvision.evaluation.saliency import saliency_maps
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.serving.dicom_results import ModelIdentity, study_reports, write_reports
from medvision.serving.saliency_capture import NOT_FOR_DIAGNOSIS, write_saliency_images
from tests.test_dicom_results import (
    FACTS,
    NAMES,
    PLANTED,
    STATED,
    _source,
    _table,
    assert_names_read_back,
    assert_stated_facts,
    dciodvfy_errors,
    named,
    stated,
    stated_facts,
)
from tests.test_dicom_results import named_cohort as named_cohort  # names in many character sets, one of one part
from tests.test_dicom_results import small_cohort as small_cohort  # the SR tests' cohort: planted PHI in 4 patients
from tests.test_dicom_results import stated_cohort as stated_cohort  # headers stating sex, side and directions

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_PLANTED = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName")
_SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@pytest.fixture(scope="module")
def classifier(small_cohort: Cohort) -> Classifier:
    """A tiny ViT with random weights: its 4x4 patch grid gives a Grad-CAM map at the cohort's 32 px with zeros and
    peaks (a stride-32 CNN would give one value per image)."""
    return _classifier(small_cohort)


def _classifier(cohort: Cohort) -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone("vit-tiny", in_chans=1)
    head = create_head("linear", backbone.num_features, len(cohort.classes))
    return Classifier(backbone, head, cohort.classes).eval()


def _model(cohort: Cohort) -> ModelIdentity:
    return ModelIdentity("cxr-saliency (linear on vit-tiny)", "3", cohort.classes)


def _write(cohort: Cohort, classifier: Classifier, out: Path, original: bool):
    """The study reports and the saliency images of ``_table``'s predictions, as predict writes them."""
    table = _table(cohort)
    sources, _ = source_instances(cohort, cohort.manifest, original=original)
    model = _model(cohort)
    reports = write_reports(study_reports(table, sources, model), out, private=original)
    images = write_saliency_images(
        classifier, cohort, table, cohort.manifest, sources, model, out / "saliency", private=original
    )
    return table, reports, images


def _expected_overlay(classifier: Classifier, cohort: Cohort, image_id: str, target: int) -> tuple[np.ndarray, ...]:
    """Computed here, independently: the image as the model reads it, the Grad-CAM map of ``target`` and their
    overlay."""
    rows = cohort.manifest[cohort.manifest["image_id"] == image_id]
    image = CohortDataset(cohort, rows)[0]["image"]
    heat = saliency_maps(classifier, image[None], [target], method="gradcam")[0]
    grey = display_image(image.numpy())
    return grey, heat, overlay(grey, heat)


def test_pseudonymous_saliency_images_are_valid_overlays_of_their_own_image_in_the_reports_study(
    small_cohort, classifier, tmp_path
):
    table, reports, images = _write(small_cohort, classifier, tmp_path, original=False)
    assert sorted(p.stem for p in images) == sorted(table["image_id"])  # one per image, named by its pseudonym
    by_image, manifest = table.set_index("image_id"), small_cohort.manifest.set_index("image_id")
    report_of = {p.stem: pydicom.dcmread(p) for p in reports}
    series: dict[str, set[str]] = {}
    for path in images:
        assert dciodvfy_errors(path) == [], path
        sc, row = pydicom.dcmread(path), by_image.loc[path.stem]
        assert sc.SOPClassUID == _SECONDARY_CAPTURE and sc.Modality == "OT"
        # The study and patient of the study's report (pseudonymous), in a series of their own.
        sr = report_of[row["study_id"]]
        assert sc.StudyInstanceUID == sr.StudyInstanceUID == pseudonymous_uid("study", row["study_id"])
        assert sc.PatientID == sr.PatientID == row["patient_id"]
        # The synthetic sources do not say whether text is burned into their pixels, which the overlay copies: so
        # the image says there may be, and does not claim the patient's identity removed.
        assert sc.BurnedInAnnotation == "YES" and "PatientIdentityRemoved" not in sc
        assert sc.SeriesInstanceUID != sr.SeriesInstanceUID
        series.setdefault(row["study_id"], set()).add(sc.SeriesInstanceUID)
        assert sc.SeriesDescription == NOT_FOR_DIAGNOSIS and "NOT FOR DIAGNOSIS" in sc.ImageComments
        # The source instance, by its pseudonymous UID.
        source = _source(small_cohort, path.stem)
        assert list(sc.PatientOrientation) == list(source.PatientOrientation) == ["L", "F"]  # the pixels' directions
        assert source.PatientName and source.PatientID and source.AccessionNumber  # PHI was planted
        (ref,) = sc.SourceImageSequence
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == pseudonymous_uid("instance", manifest.loc[path.stem, "content_sha256"])
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        data = path.read_bytes()
        for keyword in (*_PLANTED, *_SOURCE_UIDS):
            value = str(source.get(keyword, "") or "")
            assert not value or value.encode() not in data, f"{keyword} of the source in {path.name}"
    assert all(len(uids) == 1 for uids in series.values())  # one series per study ...
    assert len({uid for uids in series.values() for uid in uids}) == len(series) > 1  # ... and per study its own


def test_only_a_source_without_burned_in_text_gives_an_image_claiming_the_identity_removed(
    small_cohort, classifier, tmp_path
):
    table = _table(small_cohort)
    sources, _ = source_instances(small_cohort, small_cohort.manifest, original=False)
    marked = sorted(sources)[: len(sources) // 2]
    for image_id in marked:
        sources[image_id].BurnedInAnnotation = "NO"
    images = write_saliency_images(
        classifier, small_cohort, table, small_cohort.manifest, sources, _model(small_cohort), tmp_path
    )
    for path in images:
        sc = pydicom.dcmread(path)
        if path.stem in marked:
            assert sc.BurnedInAnnotation == "NO" and sc.PatientIdentityRemoved == "YES" and sc.DeidentificationMethod
        else:
            assert sc.BurnedInAnnotation == "YES" and "PatientIdentityRemoved" not in sc
        assert dciodvfy_errors(path) == [], path


def test_the_pixels_are_the_overlay_of_that_images_map_of_its_predicted_class(small_cohort, classifier, tmp_path):
    """Equal to the gallery's overlay of the image's own Grad-CAM map for its most probable class, computed here
    independently; grey exactly where that map is zero, coloured where it is high; not another class's map."""
    table, _, images = _write(small_cohort, classifier, tmp_path, original=False)
    probs = table.set_index("image_id")[[f"p:{c}" for c in small_cohort.classes]]
    coloured = 0
    for path in images:
        pixels = pydicom.dcmread(path).pixel_array
        predicted = int(np.argmax(probs.loc[path.stem].to_numpy()))
        grey, heat, expected = _expected_overlay(classifier, small_cohort, path.stem, predicted)
        assert pixels.shape == expected.shape == (*grey.shape[:2], 3)
        assert np.abs(pixels.astype(int) - expected).max() <= 1, path.name  # batching may move a value by 1
        np.testing.assert_array_equal(pixels[heat == 0], grey[heat == 0])  # no attribution: the image, grey
        hot = heat > 0.5
        if hot.any():
            coloured += 1
            assert (pixels[hot] != grey[hot]).any(axis=1).all()  # every hot pixel is coloured
            assert not (pixels[hot][:, 0] == pixels[hot][:, 2]).all()  # and no longer grey
        other_class = (predicted + 1) % len(small_cohort.classes)
        *_, other = _expected_overlay(classifier, small_cohort, path.stem, other_class)
        assert np.abs(pixels.astype(int) - other).max() > 1  # the predicted class's map, not the other's
    assert coloured >= len(images) // 2


def test_saliency_images_for_the_source_pacs_carry_the_source_identifiers_and_are_owner_only(
    small_cohort, classifier, tmp_path
):
    table, reports, images = _write(small_cohort, classifier, tmp_path, original=True)
    for path in images:
        assert dciodvfy_errors(path) == [], path
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        sc, source = pydicom.dcmread(path), _source(small_cohort, path.stem)
        assert "PatientIdentityRemoved" not in sc
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
            assert sc[keyword].value == source[keyword].value, keyword
        ref = sc.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID  # a new series of the source study
    assert stat.S_IMODE(os.stat(images[0].parent).st_mode) & 0o077 == 0


@pytest.mark.parametrize("original", [False, True], ids=["pseudonymous", "for-source-pacs"])
def test_saliency_images_state_the_sources_side_and_directions_and_only_valid_patient_and_study_values(
    stated_cohort, tmp_path, original
):
    """The overlay keeps the source's rows and columns: its Patient Orientation is the source's, and its Image
    Laterality the source image's (or its series'), when the source states valid ones; empty (unknown) otherwise,
    never guessed. The Patient's Sex, for the source PACS, is M, F or O or empty: highdicom refuses any other; so are
    a malformed date or time (highdicom converts them) and a name or number its VR cannot hold."""
    table, _, images = _write(stated_cohort, _classifier(stated_cohort), tmp_path, original=original)
    assert sorted(p.stem for p in images) == sorted(table["image_id"])
    shown, facts_shown = set(), set()
    for path in images:
        assert dciodvfy_errors(path) == [], path
        sc = pydicom.dcmread(path)
        (_, sex), entry = stated(stated_cohort, path.stem)
        *_, laterality, orientation = entry
        shown.add(STATED.index(entry))
        assert list(sc.PatientOrientation or []) == orientation, path.stem
        if laterality:  # an instance's own: the series holds every image of the study
            assert sc.ImageLaterality == laterality and "Laterality" not in sc, path.stem
        else:  # type 2C, present and empty: unknown
            assert "ImageLaterality" not in sc and "Laterality" in sc and not sc.Laterality, path.stem
        assert "PatientSex" in sc and (sc.PatientSex or "") == (sex if original else "")
        facts = stated_facts(stated_cohort, path.stem)
        assert_stated_facts(sc, facts, original)  # malformed dates, times, names, numbers: empty, not refused
        facts_shown.add(FACTS.index(facts))
    assert shown == set(range(len(STATED))) and facts_shown == set(range(len(FACTS)))


def test_saliency_images_for_the_source_pacs_hold_the_sources_names_in_any_character_set(named_cohort, tmp_path):
    """As the study's report: the source's names, in whatever character set it wrote them, read back exactly (the
    image declares UTF-8 when one is not ASCII); every image passes dciodvfy."""
    table, _, images = _write(named_cohort, _classifier(named_cohort), tmp_path, original=True)
    assert sorted(p.stem for p in images) == sorted(table["image_id"])
    for path in images:
        assert dciodvfy_errors(path) == [], path
        assert_names_read_back(path, pydicom.dcmread(path), named(named_cohort, path.stem))
    assert {NAMES.index(named(named_cohort, p.stem)) for p in images} == set(range(len(NAMES)))


def test_results_for_the_source_pacs_log_no_identity_value_of_the_source(named_cohort, tmp_path, caplog, capfd):
    """Building and writing the reports and saliency images for the source PACS: no log record of any logger at any
    level, no warning and nothing on stdout or stderr quotes a source's name (whole, a component group or a part),
    ID, birth date, accession number or UID. highdicom warns quoting a name of one component (``Zorblaxquux``,
    valid DICOM) and logs the UID of the instance it copies the patient from."""
    classifier = _classifier(named_cohort)
    caplog.set_level(logging.DEBUG)  # the root logger: every record of every library
    caplog.set_level(logging.DEBUG, logger="highdicom")  # the command line quiets its INFO; here it must speak
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        _write(named_cohort, classifier, tmp_path, original=True)
    out, err = capfd.readouterr()
    assert any(r.name.startswith("highdicom") for r in caplog.records)  # the libraries' records are all seen
    records = [caplog.text, *(r.getMessage() for r in caplog.records)]
    said = "\n".join([*records, *(str(w.message) for w in shown), out, err])
    values = set(PLANTED.values())
    for relpath in named_cohort.manifest["relpath"]:
        source = pydicom.dcmread(Path(named_cohort.card.spec["images"]) / relpath, stop_before_pixels=True)
        for name in (source.PatientName, source.ReferringPhysicianName):
            for group in name.components:
                parts = [p for p in re.split(r"\^+", group) if len(p) >= 4 or not p.isascii()]
                values.update([group, *parts])
        for keyword in ("PatientID", "PatientBirthDate", "AccessionNumber", *_SOURCE_UIDS):
            values.add(str(source[keyword].value))
    assert "Zorblaxquux" in values and "" not in values
    leaked = sorted((v for v in values if v.lower() in said.lower()), key=lambda v: (v[:1].isdigit(), v))
    assert not leaked, leaked  # names and IDs first, then dates and UIDs


def test_predict_saliency_writes_the_images_beside_the_reports(small_cohort, classifier, tmp_path):
    """`medvision predict FOLDER --cohort DIR --saliency`: the flag alone writes the reports too (pseudonymous), one
    image per predicted image in its report's study, for the class the table predicts."""
    folder = save_classifier(classifier, tmp_path / "model", preprocessing=small_cohort.card.recipe)
    out = tmp_path / "out"
    args = ["predict", str(folder), "--cohort", str(small_cohort.root), "--out", str(out), "--saliency"]
    result = CliRunner().invoke(app, [*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    assert "not for diagnosis" in result.output and "pseudonymous identifiers" in result.output
    table = pd.read_parquet(out / "predictions.parquet").set_index("image_id")
    images = sorted((out / "dicom" / "saliency").glob("*.dcm"))
    assert sorted(p.stem for p in images) == sorted(table.index)
    report = {p.stem: pydicom.dcmread(p) for p in (out / "dicom").glob("*.dcm")}
    assert set(report) == set(table["study_id"])
    path = images[0]
    sc, row = pydicom.dcmread(path), table.loc[path.stem]
    assert sc.StudyInstanceUID == report[row["study_id"]].StudyInstanceUID
    predicted = int(np.argmax(row[[f"p:{c}" for c in small_cohort.classes]].to_numpy(dtype=float)))
    *_, expected = _expected_overlay(classifier, small_cohort, path.stem, predicted)
    assert np.abs(sc.pixel_array.astype(int) - expected).max() <= 1
