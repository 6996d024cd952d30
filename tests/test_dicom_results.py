"""DICOM-native prediction results: one Comprehensive SR (TID 1500) per study that dicom3tools' ``dciodvfy`` passes
with no error, that pydicom reads back with the table's finding and probabilities and the model's name, that
references its source instances, and that is pseudonymous unless the results go back to the source PACS."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.cohort import Cohort, open_cohort
from medvision.cohort.source_instances import pseudonymous_uid, source_instances
from medvision.serving.dicom_results import ModelIdentity, study_reports, write_reports
from tests.conftest import _TEST_PSEUDONYM_KEY

_IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID", "SOPInstanceUID")


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy (Debian's dicom3tools, installed by `make install`) reports for ``path``."""
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy is missing: `make install` installs Debian's dicom3tools"
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item of an SR tree, depth first."""
    out = []
    for item in getattr(ds, "ContentSequence", []):
        out.append(item)
        out.extend(content_items(item))
    return out


def report_values(ds: pydicom.Dataset) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
    """Per image (the tracking identifier of its measurement group): the numeric measurements and the coded
    evaluations, by concept name meaning."""
    out = {}
    for group in content_items(ds):
        if group.ValueType != "CONTAINER" or group.ConceptNameCodeSequence[0].CodeMeaning != "Measurement Group":
            continue
        numbers, codes, image = {}, {}, ""
        for item in content_items(group):
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                numbers[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                codes[name] = item.ConceptCodeSequence[0].CodeMeaning
            elif name == "Tracking Identifier":
                image = item.TextValue.removeprefix("image ")
        out[image] = (numbers, codes)
    return out


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """Four synthetic patients (their headers hold names, MRNs, birth dates), built with the test key."""
    from medvision.cohort.build import build_cohort
    from medvision.sources.synth import synthesize

    root = tmp_path_factory.mktemp("sr-cohort")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
        build_cohort(synthesize(root / "source", "cxr", patients=4, seed=3, size=32), root / "cohort")
    return open_cohort(root / "cohort")


#: Patient's Sex as source headers write it (patient ``k`` the ``k % 6``-th) and as a result for the source PACS
#: states it: DICOM's enumerated M, F or O (PS3.3 C.7.1.1), surrounding spaces dropped; anything else empty (type 2),
#: never guessed (a lower-case ``m`` is not a CS value, and ``U`` is not among the enumerated values).
SEXES = (("U", ""), ("m", ""), (" F", "F"), ("X", ""), ("MALE", ""), ("O", "O"))
#: What source headers state about an image's side and directions (the ``k % 6``-th file in path order): Image
#: Laterality, Laterality, Anatomical Orientation Type, Patient Orientation (None: absent), then the laterality and
#: the orientation a saliency image of it states (None and []: unknown).
STATED = (
    ("L", None, None, ["A", "FR"], "L", ["A", "FR"]),  # an oblique column direction: several letters
    (None, "R", None, ["P", "F"], "R", ["P", "F"]),  # the series' laterality is the image's
    (None, None, None, None, None, []),  # nothing stated: nothing guessed
    ("B", None, None, ["L", "F"], "B", ["L", "F"]),
    ("l", None, None, ["X", "F"], None, []),  # not enumerated values, not letters of a direction: not repeated
    (None, None, "QUADRUPED", ["L", "PA"], None, []),  # a quadruped's letters (lateral, palmar), not left, P-A
)


#: Patient and General Study values as source headers write them (patient ``k`` the ``k % 6``-th; the others keep the
#: synthetic, valid ones), each with what a result for the source PACS states: the value exactly, when it is one valid
#: value of its VR (PS3.5 6.2, as pydicom reads it: DA ``YYYYMMDD``, a calendar date; TM ``HH[MM[SS[.F]]]``; SH at most
#: 16 characters, a PN component 64); else empty (type 2), never repaired into a valid one.
FACTS = (
    {"PatientBirthDate": ("1957-03-12", ""), "StudyDate": ("20231340", ""), "StudyTime": ("25:61", "")},
    {  # a 30th of February; a time of hours and minutes is valid as it is (not padded to HHMMSS)
        "PatientBirthDate": ("19570312", "19570312"),
        "StudyDate": ("20230230", ""),
        "StudyTime": ("1015", "1015"),
        "AccessionNumber": ("ACC-0123456789-X", "ACC-0123456789-X"),  # 16 characters: the most an SH holds
    },
    {  # ACR-NEMA's dotted date (pydicom reads it; DICOM's DA is not it), a range (a query's), colons; two names
        "PatientBirthDate": ("1957.03.12", ""),
        "StudyDate": ("20230101-", ""),
        "StudyTime": ("12:30:00", ""),
        "PatientName": (["DOE^JANE", "ROE^JANE"], ""),
    },
    {  # a 29th of February of a leap year, fractional seconds; an SH of 17 characters
        "StudyDate": ("20240229", "20240229"),
        "StudyTime": ("101500.123", "101500.123"),
        "AccessionNumber": ("ACC-0123456789-XY", ""),
        "StudyID": ("S" * 17, ""),
    },
    {  # empty (type 2) stays empty; the most precise TM; a PN component of 65 characters
        "PatientBirthDate": ("", ""),
        "StudyDate": ("20231231", "20231231"),
        "StudyTime": ("235959.999999", "235959.999999"),
        "ReferringPhysicianName": ("R" * 65 + "^B", ""),
    },
    {  # two birth dates, a year alone, a one-digit hour
        "PatientBirthDate": (["19570312", "19570313"], ""),
        "StudyDate": ("2023", ""),
        "StudyTime": ("7", ""),
    },
)


def _patient(cohort: Cohort, image_id: str) -> int:
    relpath = cohort.manifest.set_index("image_id").loc[image_id, "relpath"]
    return int(Path(relpath).parent.name.removeprefix("s"))  # images/<site>/s<patient>/i<image>.dcm


def stated(cohort: Cohort, image_id: str) -> tuple[tuple[str, str], tuple]:
    """The entries of :data:`SEXES` and :data:`STATED` that ``image_id`` of :func:`stated_cohort` was written with."""
    relpaths = sorted(set(cohort.manifest["relpath"]))
    relpath = cohort.manifest.set_index("image_id").loc[image_id, "relpath"]
    return SEXES[_patient(cohort, image_id) % len(SEXES)], STATED[relpaths.index(relpath) % len(STATED)]


def stated_facts(cohort: Cohort, image_id: str) -> dict[str, tuple[object, str]]:
    """The entry of :data:`FACTS` that ``image_id`` of :func:`stated_cohort` was written with."""
    return FACTS[_patient(cohort, image_id) % len(FACTS)]


def assert_stated_facts(result: pydicom.Dataset, facts: dict[str, tuple[object, str]], original: bool) -> None:
    """``result`` (a report or a saliency image) states :data:`FACTS`' values for the source PACS (present, type 2),
    and none of the source's in a pseudonymous one (where the name and ID are the patient's pseudonym)."""
    for keyword, (_, value) in facts.items():
        assert keyword in result, keyword
        if original:
            assert str(result[keyword].value or "") == value, keyword
        elif keyword not in ("PatientName", "PatientID"):
            assert not result[keyword].value, keyword


@pytest.fixture(scope="module")
def stated_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """Six synthetic patients (seven images) whose headers state sex, laterality, orientation, dates, times, names and
    numbers as archives do, valid or not: :data:`SEXES`, :data:`STATED` and :data:`FACTS`, written before the cohort
    is built."""
    from pydicom import config

    from medvision.cohort.build import build_cohort
    from medvision.sources.synth import synthesize

    root = tmp_path_factory.mktemp("stated-cohort")
    spec = synthesize(root / "source", "cxr", patients=6, seed=5, size=32)
    images = root / "source" / "images"
    files = sorted(images.rglob("*.dcm"), key=lambda f: f.relative_to(images).as_posix())
    assert len(files) >= len(STATED) and len({f.parent for f in files}) >= max(len(SEXES), len(FACTS))
    validation = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # the invalid values are the point
    config.settings.reading_validation_mode = config.IGNORE  # (pydicom checks a value set on a dataset with this one)
    try:
        for k, path in enumerate(files):
            ds = pydicom.dcmread(path)
            patient = int(path.parent.name.removeprefix("s"))
            ds.PatientSex = SEXES[patient % len(SEXES)][0]
            for keyword, (value, _) in FACTS[patient % len(FACTS)].items():
                setattr(ds, keyword, value)
            image_laterality, laterality, anatomy, orientation, *_ = STATED[k % len(STATED)]
            for keyword, value in (
                ("ImageLaterality", image_laterality),
                ("Laterality", laterality),
                ("AnatomicalOrientationType", anatomy),
                ("PatientOrientation", orientation),
            ):
                if value is None:
                    ds.pop(keyword, None)
                else:
                    setattr(ds, keyword, value)
            ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = validation
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
        build_cohort(spec, root / "cohort")
    cohort = open_cohort(root / "cohort")
    assert set(cohort.manifest["relpath"]) == {f.relative_to(images).as_posix() for f in files}  # none left out
    return cohort


#: Patient's and Referring Physician's Names as archives write them, each in its file's Specific Character Set (patient
#: ``k`` the ``k % 9``-th; ``None``: none declared): single-byte sets, UTF-8, ISO 2022 code extensions with a name's
#: three component groups (PS3.5 Annex H, I; the Japanese set's first value empty, as the standard writes it), Latin-1
#: bytes with no set declared (pydicom reads them as Latin-1), ASCII in a declared Latin-1 set, and a name of one
#: component (valid DICOM; highdicom warns quoting it).
NAMES = (
    ("ISO_IR 144", "Иванов^Иван", "Ковалёв^Пётр"),
    ("ISO_IR 192", "山田^太郎", "Ωμέγα^Άλφα"),
    ("ISO_IR 100", "Müller^Hans", "Buc^Jérôme"),
    (None, "Gómez^Núria", ""),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", ""),
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", ""),
    (["ISO 2022 IR 100", "ISO 2022 IR 126"], "Dionysios^Müller=Διονυσιος^", ""),
    ("ISO_IR 100", "Smith^John", "Achterberg^Wim"),
    (None, "Zorblaxquux", ""),
)
#: What the headers of the one-component name's patient also state: values found nowhere else, to look for in logs.
PLANTED = {"PatientID": "MRN-QZ-80417", "PatientBirthDate": "19310817", "AccessionNumber": "ACC-ZQ-5521"}


@pytest.fixture(scope="module")
def named_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """Nine synthetic patients whose headers state :data:`NAMES` in their character sets (and, for the name of one
    component, :data:`PLANTED`), written before the cohort is built."""
    from medvision.cohort.build import build_cohort
    from medvision.sources.synth import synthesize

    root = tmp_path_factory.mktemp("named-cohort")
    spec = synthesize(root / "source", "cxr", patients=len(NAMES), seed=7, size=32)
    images = root / "source" / "images"
    files = sorted(images.rglob("*.dcm"))
    assert {int(f.parent.name.removeprefix("s")) for f in files} == set(range(len(NAMES)))
    for path in files:
        ds = pydicom.dcmread(path)
        charset, name, physician = NAMES[int(path.parent.name.removeprefix("s"))]
        if charset is None:
            del ds.SpecificCharacterSet  # the synthetic files declare ISO_IR 100
        else:
            ds.SpecificCharacterSet = charset
        ds.PatientName, ds.ReferringPhysicianName = name, physician
        if "^" not in name:
            for keyword, value in PLANTED.items():
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        written = pydicom.dcmread(path)
        assert (str(written.PatientName), str(written.ReferringPhysicianName)) == (name, physician), path
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
        build_cohort(spec, root / "cohort")
    return open_cohort(root / "cohort")


def named(cohort: Cohort, image_id: str) -> tuple[object, str, str]:
    """The entry of :data:`NAMES` that ``image_id`` of :func:`named_cohort` was written with."""
    return NAMES[_patient(cohort, image_id)]


def assert_names_read_back(path: Path, result: pydicom.Dataset, names: tuple[object, str, str]) -> None:
    """``result`` (read from ``path``) states the source's Patient's and Referring Physician's Names exactly as
    pydicom decodes them from the source, and declares UTF-8 (ISO_IR 192, their bytes in the file) when one is not
    ASCII, else no character set (the default repertoire)."""
    _, name, physician = names
    assert (str(result.PatientName), str(result.ReferringPhysicianName or "")) == (name, physician), path.name
    if (name + physician).isascii():
        assert "SpecificCharacterSet" not in result, path.name
    else:
        assert result.SpecificCharacterSet == "ISO_IR 192", path.name
        assert name.encode() in path.read_bytes(), path.name


def _table(cohort: Cohort) -> pd.DataFrame:
    table = cohort.manifest[["image_id", "patient_id", "study_id", "series_id", "frame"]].copy()
    probs = np.random.default_rng(0).dirichlet(np.ones(len(cohort.classes)), len(table))
    for i, name in enumerate(cohort.classes):
        table[f"p:{name}"] = probs[:, i]
    table["ood_score"] = np.linspace(-1.0, 2.0, len(table))
    return table


def _write(cohort: Cohort, out: Path, original: bool) -> tuple[pd.DataFrame, list[Path]]:
    table = _table(cohort)
    sources, skipped = source_instances(cohort, cohort.manifest, original=original)
    assert skipped.empty and set(sources) == set(table["image_id"])
    model = ModelIdentity("cxr-triage (hod on resnet-tiny)", "7", cohort.classes, "hod")
    return table, write_reports(study_reports(table, sources, model), out, private=original)


def _source(cohort: Cohort, image_id: str) -> pydicom.Dataset:
    row = cohort.manifest.set_index("image_id").loc[image_id]
    return pydicom.dcmread(Path(cohort.card.spec["images"]) / row["relpath"], stop_before_pixels=True)


def test_pseudonymous_reports_are_valid_hold_the_predictions_and_no_identifier(small_cohort, tmp_path):
    table, paths = _write(small_cohort, tmp_path, original=False)
    assert sorted(p.stem for p in paths) == sorted(table["study_id"].unique())  # one report per study
    by_image = table.set_index("image_id")
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        sr = pydicom.dcmread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        refs = [r for s in sr.CurrentRequestedProcedureEvidenceSequence for r in s.ReferencedSeriesSequence]
        assert refs, "the report references its source instances"
        image_id = table.loc[table["study_id"] == path.stem, "image_id"].iloc[0]
        row, source = by_image.loc[image_id], _source(small_cohort, image_id)
        # New identifiers derived from the pseudonyms; none of the source's.
        assert sr.PatientID == row["patient_id"] and sr.PatientIdentityRemoved == "YES"
        assert sr.StudyInstanceUID == pseudonymous_uid("study", path.stem)
        referenced = refs[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPClassUID == source.SOPClassUID  # the class is kept, the instance is not
        sha = small_cohort.manifest.set_index("image_id").loc[image_id, "content_sha256"]
        assert referenced.ReferencedSOPInstanceUID == pseudonymous_uid("instance", sha)
        data = path.read_bytes()
        for keyword in _IDENTIFYING:
            value = str(source.get(keyword, "") or "")
            assert not value or value.encode() not in data, f"{keyword} of the source in {path.name}"
        # The predictions of every image of the study, read back: probabilities, finding (the most probable
        # class), OOD score, and the model.
        values = report_values(sr)
        assert set(values) == set(table.loc[table["study_id"] == path.stem, "image_id"])
        for image, (numbers, codes) in values.items():
            probs = {c: by_image.loc[image, f"p:{c}"] for c in small_cohort.classes}
            for name, p in probs.items():
                assert numbers[f"Probability of {name}"] == pytest.approx(p, rel=1e-6)
            assert codes["Finding"] == max(probs, key=probs.get)
            ood = by_image.loc[image, "ood_score"]
            assert numbers["Out-of-distribution score"] == pytest.approx(ood, rel=1e-6, abs=1e-9)
        texts = {i.TextValue for i in content_items(sr) if i.ValueType == "TEXT"}
        assert {"cxr-triage (hod on resnet-tiny)", "7"} <= texts  # TID 4019 algorithm name and version


def test_reports_for_the_source_pacs_carry_the_source_identifiers_and_are_owner_only(small_cohort, tmp_path):
    table, paths = _write(small_cohort, tmp_path, original=True)
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        sr = pydicom.dcmread(path)
        image_id = table.loc[table["study_id"] == path.stem, "image_id"].iloc[0]
        source = _source(small_cohort, image_id)
        assert "PatientIdentityRemoved" not in sr
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
            assert sr[keyword].value == source[keyword].value, keyword
        refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert refs.SeriesInstanceUID == source.SeriesInstanceUID
        assert refs.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID  # the report is a new series of the source study


def test_reports_carry_the_referral_decision_and_the_ood_flag_when_an_evaluation_fixed_them(small_cohort, tmp_path):
    """With ``predict --evaluation`` the table has ``refer`` and ``ood_flag``: each image's group says both, coded,
    and the object still passes dciodvfy."""
    table = _table(small_cohort)
    table["ood_flag"] = table["ood_score"] > 0.5
    table["refer"] = table["ood_flag"] | (np.arange(len(table)) % 2 == 0)
    sources, _ = source_instances(small_cohort, small_cohort.manifest, original=False)
    model = ModelIdentity("cxr-triage (hod on resnet-tiny)", "7", small_cohort.classes, "hod")
    paths = write_reports(study_reports(table, sources, model), tmp_path)
    by_image = table.set_index("image_id")
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        for image, (_, codes) in report_values(pydicom.dcmread(path)).items():
            row = by_image.loc[image]
            assert codes["Referral decision"] == ("Refer to a human reader" if row["refer"] else "Accept")
            assert codes["Out-of-distribution"] == ("Yes" if row["ood_flag"] else "No")
    assert {True, False} <= set(table["refer"]) and {True, False} <= set(table["ood_flag"])  # both answers written


def test_source_instances_carry_the_images_side_and_directions_and_only_an_enumerated_patient_sex(stated_cohort):
    """The laterality and orientation attributes the source has, as it has them, in both modes (they identify no
    one); the Patient's Sex only for the source PACS, and only as M, F or O."""
    for original in (False, True):
        sources, _ = source_instances(stated_cohort, stated_cohort.manifest, original=original)
        assert len(sources) == len(stated_cohort.manifest)
        for image_id, ds in sources.items():
            (_, sex), (image_laterality, laterality, anatomy, orientation, *_) = stated(stated_cohort, image_id)
            assert ds.get("ImageLaterality") == image_laterality
            assert ds.get("Laterality") == laterality
            assert ds.get("AnatomicalOrientationType") == anatomy
            assert (list(ds.PatientOrientation) if "PatientOrientation" in ds else None) == orientation
            assert "PatientSex" in ds and (ds.PatientSex or "") == (sex if original else "")


def test_reports_for_the_source_pacs_state_a_patient_sex_outside_m_f_o_as_empty(stated_cohort, tmp_path):
    """highdicom refuses to build a report whose Patient's Sex is not an enumerated value (``U``, ``m``, ``MALE``):
    such a value is written empty (type 2: present, unknown), never guessed, and the report passes dciodvfy."""
    table, paths = _write(stated_cohort, tmp_path, original=True)
    written = set()
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        sr = pydicom.dcmread(path)
        image_id = table.loc[table["study_id"] == path.stem, "image_id"].iloc[0]
        (_, sex), _ = stated(stated_cohort, image_id)
        assert "PatientSex" in sr and (sr.PatientSex or "") == sex, path.stem
        written.add(sex)
    assert written == {"", "F", "O"}


def test_source_instances_pass_on_only_valid_dates_times_names_and_numbers(stated_cohort):
    """For the source PACS, each Patient and General Study value exactly as the source wrote it when it is valid,
    else empty (never reformatted into a valid one); the source's UIDs as they are. Pseudonymous: none of them."""
    for original in (False, True):
        sources, _ = source_instances(stated_cohort, stated_cohort.manifest, original=original)
        for image_id, ds in sources.items():
            facts, source = stated_facts(stated_cohort, image_id), _source(stated_cohort, image_id)
            assert_stated_facts(ds, facts, original)
            if original:
                for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                    assert ds[keyword].value == source[keyword].value, keyword
                assert ds.PatientID == source.PatientID  # valid: unchanged


@pytest.mark.parametrize("original", [False, True], ids=["pseudonymous", "for-source-pacs"])
def test_reports_state_a_malformed_date_time_name_or_number_of_the_source_as_empty(stated_cohort, tmp_path, original):
    """highdicom makes Python dates and times of the source's Patient's Birth Date, Study Date and Study Time, and
    refuses to build a report when one is not a valid DA or TM (``1957-03-12``, ``20231340``, ``25:61``) or when the
    Patient's Name is several names. Such a value, like an accession number longer than an SH holds, is written empty
    (type 2); a valid one exactly as the source has it; every report passes dciodvfy."""
    table, paths = _write(stated_cohort, tmp_path, original=original)
    assert sorted(p.stem for p in paths) == sorted(table["study_id"].unique())  # every study has its report
    shown = set()
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        sr = pydicom.dcmread(path)
        for image_id in table.loc[table["study_id"] == path.stem, "image_id"]:
            facts = stated_facts(stated_cohort, image_id)
            assert_stated_facts(sr, facts, original)
            shown.add(FACTS.index(facts))
    assert shown == set(range(len(FACTS)))


def test_reports_for_the_source_pacs_hold_the_sources_names_in_any_character_set(named_cohort, tmp_path):
    """A name in Cyrillic, Japanese, Korean or Greek, in a single-byte set, UTF-8 or ISO 2022 code extensions, or in
    Latin-1 with no set declared, reads back from the report exactly as from the source: the report declares UTF-8
    when a value is not ASCII (not the source's set: see declare_character_set). Every report passes dciodvfy."""
    table, paths = _write(named_cohort, tmp_path, original=True)
    shown = set()
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        image_id = table.loc[table["study_id"] == path.stem, "image_id"].iloc[0]  # the report's patient: its first
        assert_names_read_back(path, pydicom.dcmread(path), named(named_cohort, image_id))
        shown.add(NAMES.index(named(named_cohort, image_id)))
    assert shown == set(range(len(NAMES)))


def test_pseudonymous_reports_declare_utf8_only_for_text_of_their_own_beyond_ascii(named_cohort, tmp_path):
    """A pseudonymous report holds no name of the source, in any encoding: all its text is ASCII, in the default
    repertoire (no Specific Character Set). A model named in Cyrillic makes it UTF-8, and the name reads back."""
    table = _table(named_cohort)
    sources, _ = source_instances(named_cohort, named_cohort.manifest, original=False)
    for model_name, charset in (("cxr-triage", None), ("Пневмония-триаж", "ISO_IR 192")):
        model = ModelIdentity(model_name, "7", named_cohort.classes)
        paths = write_reports(study_reports(table, sources, model), tmp_path / str(charset))
        for path in paths:
            assert dciodvfy_errors(path) == [], path
            sr, data = pydicom.dcmread(path), path.read_bytes()
            assert sr.get("SpecificCharacterSet") == charset and sr.ManufacturerModelName == model_name, path.name
            assert model_name in {i.TextValue for i in content_items(sr) if i.ValueType == "TEXT"}
            image_id = table.loc[table["study_id"] == path.stem, "image_id"].iloc[0]
            source = _source(named_cohort, image_id)
            for group in source.PatientName.components:
                assert group.encode() not in data, path.name
            assert source.PatientName.original_string not in data, path.name


@pytest.mark.slow
def test_predict_dicom_results_end_to_end(evaluated_hod_run, synth_cxr_cohort, tmp_path):
    """`medvision predict --dicom-results`: the reports hold the probabilities of predictions.parquet, and neither
    the tables nor the MLflow store hold a source UID."""
    run_id, uri, _ = evaluated_hod_run
    out = tmp_path / "out"
    args = ["predict", run_id, "--cohort", str(synth_cxr_cohort), "--out", str(out), "--dicom-results"]
    result = CliRunner().invoke(app, [*args, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "predictions.parquet")
    paths = sorted((out / "dicom").glob("*.dcm"))
    assert len(paths) == table["study_id"].nunique() and "pseudonymous identifiers" in result.output
    cohort = open_cohort(synth_cxr_cohort)
    for path in paths[:3]:  # dciodvfy on a few; the fast tests check the writer on every study
        assert dciodvfy_errors(path) == [], path
    sr = pydicom.dcmread(paths[0])
    row = table[table["study_id"] == paths[0].stem].iloc[0]
    numbers, _ = report_values(sr)[row["image_id"]]
    classes = [c.removeprefix("p:") for c in table.columns if c.startswith("p:")]
    assert classes and set(numbers) == {*(f"Probability of {c}" for c in classes), "Out-of-distribution score"}
    for name in classes:
        assert numbers[f"Probability of {name}"] == pytest.approx(row[f"p:{name}"], rel=1e-6)
    source_uid = _source(cohort, row["image_id"]).StudyInstanceUID
    store = Path(uri.removeprefix("sqlite:///")).parent
    for p in [*out.glob("*.csv"), *out.glob("*.parquet"), *store.rglob("*")]:
        if p.is_file():
            assert source_uid.encode() not in p.read_bytes(), p
