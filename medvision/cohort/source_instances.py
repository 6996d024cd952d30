"""Who and what a predicted image is, as a DICOM result needs it: the one place a result's identifiers are chosen.

A DICOM result (a Structured Report about a study) must name its patient and study and reference the instances it
is about. Those attributes are identifiers, and only the cohort layer sees identifiers, so it is here, not in the
writer, that they are read from the source files (``cohort.card.spec["images"] / relpath``) and it is decided what
leaves: by default **pseudonymous** attributes made from the manifest's keyed pseudonyms (new UIDs derived from the
study/series pseudonyms and the file's content hash, ``PatientID`` the patient pseudonym, no name, dates or
accession number), so the original Study/Series/SOP Instance UIDs and the patient never appear; the **original**
attributes only when ``original=True`` (the results go back to the PACS the images came from, where they must attach
to the source study). Either way each image becomes a small :class:`pydicom.Dataset` of exactly the attributes
below, never the full header, and nothing here is logged.

A value a result's Patient or General Study module cannot hold is not passed on: a Patient's Sex other than DICOM's
enumerated ``M``, ``F`` or ``O`` (PS3.3 C.7.1.1: ``U``, ``X``, lower case, free text) becomes empty (type 2: known to
be unknown), never a guess; surrounding spaces are not part of a value (PS3.5 6.2) and are dropped. So does any other
copied type 2 value that is not one valid value of its VR (PS3.5 6.2; pydicom's checks are the arbiter): a date that is
not a calendar date written ``YYYYMMDD`` (``1957-03-12``, ``20231340``, a range), a time that is not ``HH[MM[SS[.F]]]``
(``25:61``), an accession number or ID longer than its VR allows, several names where one belongs. A writer that
converts or checks these (highdicom makes dates and times Python ones) would refuse the whole result over one of them.
A valid value is kept exactly as the source wrote it, never reformatted. The source's UIDs are passed on as they are:
the results must reference the very instances. Reading the source's values is quiet: pydicom's warnings about a
malformed one would quote it (a birth date, a name) into the log. The writers of the results keep their libraries'
logs clean of these values with :func:`identity_scrubber`.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, TM, PersonName, validate_value

from medvision.cohort.cohort import Cohort
from medvision.cohort.identifiers import name_tokens
from medvision.cohort.logscrub import Scrubber
from medvision.errors import InputError
from medvision.io.dicom import _quiet

__all__ = ["IDENTITY_ATTRIBUTES", "identity_scrubber", "pseudonymous_uid", "source_instances"]

#: What a result copies from its source in ``original`` mode: the Patient and General Study modules' identifying
#: attributes and the instance's own UIDs. The attributes of :data:`_PUBLIC_ATTRIBUTES` (not identifying) are copied
#: in both modes.
IDENTITY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
#: ``BurnedInAnnotation``: whether text (a name, an ID) is drawn in the pixels; a result that copies pixels says so.
#: The image's laterality (``ImageLaterality``, or its series' ``Laterality``) and the directions of its rows and
#: columns (``PatientOrientation``, with ``AnatomicalOrientationType`` that says which letters those are): a result
#: that shows the source's pixels states them as the source does. None identifies anyone; each is copied only when the
#: source has it, as the source has it (the result that writes it checks the value).
_PUBLIC_ATTRIBUTES = (
    "SOPClassUID",
    "Modality",
    "NumberOfFrames",
    "BurnedInAnnotation",
    "ImageLaterality",
    "Laterality",
    "PatientOrientation",
    "AnatomicalOrientationType",
)
#: Patient's Sex (0010,0040): DICOM's enumerated values (PS3.3 C.7.1.1), compared exactly (a CS value is upper case).
_PATIENT_SEXES = frozenset({"M", "F", "O"})
#: The identity attributes passed on unchecked: the source instance's UIDs (type 1; a result that references the
#: source must name them as the source does). Every other one is type 2, and written empty when it cannot be held.
_REFERENCES = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"})
#: pydicom's parsers of the VRs a writer (highdicom) converts to Python dates and times: a value they refuse (a 13th
#: month, a 30th of February, a range) would stop the writer.
_PARSERS = {"DA": DA, "TM": TM}
#: Study-level attributes that are empty (DICOM type 2) in a pseudonymous result.
_EMPTY_WHEN_PSEUDONYMOUS = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


#: The UUID namespace of medvision's derived UIDs (fixed: the same pseudonym gives the same UID in every release).
_NAMESPACE = uuid.UUID("6f0d2c4e-8a51-4f6b-9a43-3c1d5e7b9f20")


def pseudonymous_uid(kind: str, pseudonym: str) -> str:
    """A ``2.25.`` UID derived from a keyed pseudonym: the same study gets the same UID on every run, and the UID
    reveals no more than the pseudonym does (nothing without the cohort's key)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, f'{kind}:{pseudonym}').int}"  # a name-based UUID (ISO/IEC 9834-8)


def source_instances(cohort: Cohort, rows: pd.DataFrame, *, original: bool) -> tuple[dict[str, Dataset], pd.DataFrame]:
    """The identity of each DICOM image of ``rows`` (manifest rows of ``cohort``), keyed by ``image_id``.

    Returns:
        The datasets, and the rows that have none (``image_id``, ``reason``): photos and other non-DICOM images,
        which no DICOM result can reference.

    Raises:
        InputError: a DICOM image's source file is gone (the cohort's images folder moved): its header is needed.
    """
    images = cohort.card.spec.get("images")
    out: dict[str, Dataset] = {}
    skipped: list[tuple[str, str]] = []
    headers: dict[str, Dataset] = {}
    for row in rows.itertuples(index=False):
        if row.kind != "dicom":
            skipped.append((row.image_id, f"a {row.kind} image: no DICOM instance to reference"))
            continue
        if row.relpath not in headers:
            headers[row.relpath] = _header(Path(str(images)) if images else None, row.relpath, cohort.root)
        out[row.image_id] = _identity(headers[row.relpath], row, original)
    return out, pd.DataFrame(skipped, columns=["image_id", "reason"])


def identity_scrubber(datasets: Iterable[Dataset]) -> Scrubber:
    """A :class:`~medvision.cohort.logscrub.Scrubber` of every identity value of ``datasets`` (identities from
    :func:`source_instances`, or results made from them): IDs, UIDs, dates, numbers, and each person name as
    :func:`~medvision.cohort.identifiers.name_tokens` spells it (its parts, and the whole name as people write it).

    For :func:`~medvision.cohort.logscrub.scrubbed_output` around building and writing DICOM results: highdicom
    logs the UID of the instance it copies the patient from and quotes a Patient's Name of one component (``DOE``,
    valid DICOM) in a warning, and pydicom's messages may quote a value they refuse.
    """
    values: list[str] = []
    for ds in datasets:
        for keyword in IDENTITY_ATTRIBUTES:
            value = ds.get(keyword)
            for one in value if isinstance(value, MultiValue) else [value]:
                if isinstance(one, PersonName):  # each group (alphabetic, ideographic, phonetic) on its own too
                    values += [token for group in one.components for token in name_tokens(group)]
                if one is not None and str(one):
                    values.append(str(one))
    return Scrubber(identifiers=values)


def _header(images: Path | None, relpath: str, root: Path) -> Dataset:
    """The header of one source file (no pixels): only what :data:`IDENTITY_ATTRIBUTES` and the public ones need."""
    if images is None or not (images / relpath).is_file():
        raise InputError(
            f"cohort {root}: the source file of an image is not in its images folder ({images}); DICOM results "
            "reference the source instances, so put the images back where the cohort was built from (or rebuild it)"
        )
    return pydicom.dcmread(
        images / relpath, stop_before_pixels=True, specific_tags=[*IDENTITY_ATTRIBUTES, *_PUBLIC_ATTRIBUTES]
    )


@_quiet  # reading a malformed value would have pydicom warn with the value (a birth date) in the message
def _identity(header: Dataset, row, original: bool) -> Dataset:
    ds = Dataset()
    for keyword in _PUBLIC_ATTRIBUTES:
        if keyword in header:
            setattr(ds, keyword, header[keyword].value)
    if original:
        for keyword in IDENTITY_ATTRIBUTES:
            value = header[keyword].value if keyword in header else None
            if keyword == "PatientSex":
                value = _patient_sex(value)
            elif keyword not in _REFERENCES:
                value = _holdable(keyword, value)
            setattr(ds, keyword, value)
        return ds
    ds.PatientID = row.patient_id
    ds.PatientName = f"{row.patient_id}^"  # a family name (one component), as PN wants
    ds.StudyInstanceUID = pseudonymous_uid("study", row.study_id)
    ds.SeriesInstanceUID = pseudonymous_uid("series", row.series_id)
    ds.SOPInstanceUID = pseudonymous_uid("instance", row.content_sha256)
    for keyword in _EMPTY_WHEN_PSEUDONYMOUS:
        setattr(ds, keyword, None)
    ds.PatientIdentityRemoved = "YES"  # the result's Patient module says so (and how), as a de-identified copy would
    ds.DeidentificationMethod = "medvision keyed pseudonyms (HMAC); UIDs derived from them"
    return ds


def _patient_sex(value: object) -> str | None:
    """``M``, ``F`` or ``O`` as the source states it (surrounding spaces dropped), else ``None`` (empty): a value
    outside the enumerated ones (``U``, ``X``, ``m``, free text, several values) says nothing a result may repeat, and
    a writer that checks the enumeration (highdicom) would refuse the whole result over it."""
    text = value.strip() if isinstance(value, str) else ""
    return text if text in _PATIENT_SEXES else None


def _holdable(keyword: str, value: object) -> object:
    """``value`` exactly as the source has it when it is one valid value of ``keyword``'s VR (PS3.5 6.2), else ``None``
    (empty). pydicom is the arbiter: its writing checks (the length of an SH, LO or PN component; the form of a DA or
    TM, ``YYYYMMDD`` and ``HH[MM[SS[.F]]]``) and, for a DA or TM, its parser (a real date or time, one value, not a
    range). Several values (``A\\B``) are not one: each of these attributes holds one (VM 1)."""
    if value is None:
        return None
    if not isinstance(value, (str, PersonName, datetime.date, datetime.time)):  # a MultiValue, bytes
        return None
    vr = dictionary_VR(keyword)
    text = str(value)  # a PersonName's or a DA's or TM's original string
    try:
        validate_value(vr, text, pydicom_config.RAISE)
        if vr in _PARSERS:
            _PARSERS[vr](text)
    except (ValueError, TypeError, OverflowError):
        return None
    return value
