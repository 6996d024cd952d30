"""Predictions as DICOM: one Comprehensive SR per study, the TID 1500 measurement report, written with highdicom.

Why DICOM and why highdicom: a silent trial's results belong where clinicians look, the PACS viewer, and a viewer
reads Structured Reports; highdicom builds the TID 1500 content tree and the SR IOD from typed objects and checks
them as it goes, where a hand-built pydicom tree is easy to get subtly wrong (``dciodvfy`` validates the output in the
tests).

Each image of a study is one measurement group (TID 1501) that references its source instance
(``SourceImageForMeasurementGroup``: SOP Class/Instance UID), names the algorithm (TID 4019: model name and version),
and holds the finding (the most probable class, a qualitative evaluation), one measurement per class probability
(unit ``1``) and the OOD score when the head has one; when an evaluation's decisions are applied, the OOD flag and
the refer/accept decision are qualitative evaluations too. Classes have no standard code, so they are coded in the
private scheme :data:`SCHEME` (declared in the report's Coding Scheme Identification Sequence).

The identifiers (patient, study, referenced instances) are whatever :func:`medvision.cohort.source_instances`
chose: pseudonymous unless the caller asked for the originals. This module never reads a source file. Each result
declares the character set its text needs (:func:`declare_character_set`: UTF-8 when any of it is not ASCII), and
neither highdicom nor pydicom may quote an identity value into the log while a result is built or written: their
warnings are not shown (:func:`medvision.io.dicom._quiet`) and their log records are scrubbed of the identities'
values (:func:`~medvision.cohort.source_instances.identity_scrubber`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pandas as pd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medvision._atomic import write_all
from medvision._version import __version__
from medvision.cohort.logscrub import scrubbed_output
from medvision.cohort.source_instances import identity_scrubber, pseudonymous_uid
from medvision.io.dicom import _quiet

__all__ = [
    "SCHEME",
    "UTF8",
    "ModelIdentity",
    "dataset_saver",
    "declare_character_set",
    "study_reports",
    "write_reports",
]

#: The private coding scheme of medvision's concepts (class findings, probabilities, OOD, referral).
SCHEME = "99MEDVISION"
_NO_UNITS = Code("1", "UCUM", "no units")
_FINDING = codes.DCM.Finding
_OOD_SCORE = Code("ood-score", SCHEME, "Out-of-distribution score")
_OOD_FLAG = Code("ood-flag", SCHEME, "Out-of-distribution")
_REFERRAL = Code("referral", SCHEME, "Referral decision")
_YES, _NO = codes.SCT.Yes, codes.SCT.No
_REFER, _ACCEPT = Code("refer", SCHEME, "Refer to a human reader"), Code("accept", SCHEME, "Accept")
#: Specific Character Set (0008,0005) of a result with text beyond ASCII: Unicode in UTF-8 (PS3.3 C.12.1.1.2).
UTF8 = "ISO_IR 192"
#: The VRs whose values may hold characters beyond the default repertoire (PS3.5 6.1.2.2, 6.2); the others (CS, DA,
#: UI, ...) are ASCII by definition.
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


@dataclass(frozen=True)
class ModelIdentity:
    """What a report says about the model: its name and version (TID 4019) and its outputs."""

    name: str
    version: str
    classes: Sequence[str]
    ood_score_name: str | None = None


def _class_code(index: int, name: str) -> Code:
    return Code(f"class-{index}", SCHEME, name[:64])


def _probability_code(index: int, name: str) -> Code:
    return Code(f"p-{index}", SCHEME, f"Probability of {name}"[:64])


def study_reports(
    table: pd.DataFrame, sources: Mapping[str, Dataset], model: ModelIdentity
) -> list[tuple[str, Dataset]]:
    """One SR per study of ``table`` (the public predictions; rows without a source in ``sources`` are left out),
    as ``(study_id, dataset)`` in the order of the table."""
    rows = table[table["image_id"].isin(sources.keys())]
    reports = []
    with scrubbed_output(identity_scrubber(sources[i] for i in rows["image_id"])):
        for number, (study_id, group) in enumerate(rows.groupby("study_id", sort=False), start=1):
            evidence = [sources[i] for i in dict.fromkeys(group["image_id"])]
            reports.append((str(study_id), _report(group, evidence, sources, model, number)))
    return reports


def declare_character_set(ds: Dataset) -> Dataset:
    """``ds`` (a result, as built) declaring the character set its text needs: ``ISO_IR 192`` (UTF-8) when any text
    value, in any sequence item, is not ASCII; else none, the default repertoire (PS3.5 6.1.2.1), which every
    receiver reads. Returns ``ds``.

    Why UTF-8 and not the source's Specific Character Set, which highdicom would copy from the reference dataset
    (``evidence[0]`` of an SR, ``ref_dataset`` of an SC) if :func:`~medvision.cohort.source_instances` passed it on:
    what is written is the text pydicom decoded from the source, Unicode, and UTF-8 holds every character of it, so
    it reads back exactly, whatever the source's set was. The source's own set fails in cases archives have:

    - none declared, with Latin-1 bytes (``Müller``): pydicom reads them as Latin-1, and a result that declares none
      either would hold the same undeclared bytes;
    - ISO 2022 code extensions: highdicom refuses the standard's own Japanese value ``\\ISO 2022 IR 87`` (an empty
      first value, as in PS3.5 Annex H) and a misspelled term (``ISO-IR 100``), which would stop the whole result, and
      re-encoding each value with escape sequences gains nothing over UTF-8, which needs none;
    - a result holds text of its own (the model's name, its class names) and a study's images may state different
      sets, where the first image's set might hold neither.

    ISO_IR 192 is written as the one value, without code extensions, as DICOM requires of it. It is declared only
    when needed: an ASCII result (every pseudonymous one of a model with an ASCII name and classes) stays in the
    default repertoire, as before.
    """
    if any(_beyond_ascii(element) for element in ds.iterall() if element.VR in _TEXT_VRS):
        ds.SpecificCharacterSet = UTF8
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    return ds


def _beyond_ascii(element: DataElement) -> bool:
    value = element.value
    return any(v is not None and not str(v).isascii() for v in (value if isinstance(value, MultiValue) else [value]))


@_quiet  # highdicom warns with a Patient's Name of one component in the message; pydicom with a value it refuses
def _report(
    group: pd.DataFrame, evidence: list[Dataset], sources: Mapping[str, Dataset], model: ModelIdentity, number: int
) -> Dataset:
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=pseudonymous_uid("model", f"{model.name}/{model.version}"),
            name=model.name[:64],
            manufacturer_name="medvision",
            model_name=model.name[:64],
        ),
    )
    groups = [_image_group(r, sources[r["image_id"]], model, algorithm) for _, r in group.iterrows()]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.DiagnosticImaging,
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content[0],
        series_instance_uid=generate_uid(),
        series_number=9000,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer="medvision",
        manufacturer_model_name=model.name[:64],
        software_versions=f"medvision {__version__}",
        series_description=f"medvision {model.name}"[:64],
        is_complete=True,
    )
    sr.CodingSchemeIdentificationSequence = [_scheme_item()]
    if evidence[0].get("PatientIdentityRemoved") == "YES":  # pseudonymous sources: say so, and how
        sr.PatientIdentityRemoved = "YES"
        sr.DeidentificationMethod = evidence[0].DeidentificationMethod
    return declare_character_set(sr)


def _scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "medvision model outputs"
    item.CodingSchemeResponsibleOrganization = "medvision"
    return item


def _image_group(
    row: pd.Series, source: Dataset, model: ModelIdentity, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one image: its source instance, finding, probabilities, OOD score and decisions."""
    probs = [float(row[f"p:{c}"]) for c in model.classes]
    best = max(range(len(probs)), key=probs.__getitem__)
    evaluations = [hd.sr.QualitativeEvaluation(_FINDING, _class_code(best, model.classes[best]))]
    if "ood_flag" in row.index and pd.notna(row["ood_flag"]):
        evaluations.append(hd.sr.QualitativeEvaluation(_OOD_FLAG, _YES if bool(row["ood_flag"]) else _NO))
    if "refer" in row.index and pd.notna(row["refer"]):
        evaluations.append(hd.sr.QualitativeEvaluation(_REFERRAL, _REFER if bool(row["refer"]) else _ACCEPT))
    measurements = [
        hd.sr.Measurement(name=_probability_code(i, c), value=p, unit=_NO_UNITS, algorithm_id=algorithm)
        for i, (c, p) in enumerate(zip(model.classes, probs, strict=True))
    ]
    if model.ood_score_name and "ood_score" in row.index and pd.notna(row["ood_score"]):
        measurements.append(
            hd.sr.Measurement(name=_OOD_SCORE, value=float(row["ood_score"]), unit=_NO_UNITS, algorithm_id=algorithm)
        )
    frames = int(source.get("NumberOfFrames", 1) or 1)
    image = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=[int(row["frame"]) + 1] if frames > 1 else None,
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"image {row['image_id']}"),
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
        measurements=measurements,
        source_images=[image],
    )


def write_reports(reports: Sequence[tuple[str, Dataset]], folder: Path, *, private: bool = False) -> list[Path]:
    """Each report as ``folder/<study pseudonym>.dcm`` (the file name never holds an identifier); ``private``:
    owner-only files (reports that carry the source's identifiers)."""
    items = [(folder / f"{study_id}.dcm", 4096, dataset_saver(ds)) for study_id, ds in reports]
    with scrubbed_output(identity_scrubber(ds for _, ds in reports)):
        write_all(items, private=private)
    return [path for path, _, _ in items]


def dataset_saver(ds: Dataset) -> Callable[[Path], None]:
    """What :func:`medvision._atomic.write_all` calls to save ``ds`` as a DICOM file (quiet: pydicom warns with a
    value it refuses)."""
    return _quiet(lambda path: ds.save_as(path, enforce_file_format=True))
