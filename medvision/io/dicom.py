"""DICOM files -> the reader contract: display-ready pixels, plus a header split into identifiers and
public tags.

Pixels follow the standard's grayscale pipeline (PS3.4 N.2: Modality LUT -> VOI LUT -> polarity) or its colour
models, so that a model sees what a radiologist's viewer shows rather than raw stored values. Every step that
pydicom implements is delegated to ``pydicom.pixels``; this module picks and decodes the frames and turns library
failures into :class:`ImageReadError`, and :mod:`medvision.io.dicom_pixels` chooses the steps and normalises to
``[0, 1]``.

The header reader is the fast path for indexing a cohort: it never decodes pixels and keeps patient
identifiers in fields that :meth:`DicomHeader.public` leaves out, so identifiers stay in the cohort layer.
"""

from __future__ import annotations

import functools
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import config as pydicom_config
from pydicom import dcmread, uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import UID

from medvision.io.dicom_pixels import COLOUR, GRAY, colour_pixels, gray_pixels
from medvision.io.reader import Frame, ImageHeader, ImageReadError, LoadedImage

__all__ = ["DicomHeader", "DicomReader", "read_dicom", "read_dicom_header"]

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float and (plain) Pixel Data

#: The pip package giving pydicom a decoder for each compressed transfer syntax (beside ``pylibjpeg``).
_DECODER_PACKAGES: dict[str, str] = {
    **dict.fromkeys(uid.JPEGTransferSyntaxes + uid.JPEGLSTransferSyntaxes, "pylibjpeg-libjpeg"),
    **dict.fromkeys(uid.JPEG2000TransferSyntaxes, "pylibjpeg-openjpeg"),
    uid.RLELossless: "pylibjpeg-rle",
}

_IDENTIFYING = {"identifying": True}


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a read, or the building of a DICOM object from what was read, with pydicom's value validation
    off and pydicom's and highdicom's warnings not shown.

    pydicom's validation warnings quote the offending value ("Invalid value for VR DA: '19570312'"),
    and highdicom's quote a Patient's Name of one component ("The string \"DOE\" is unlikely to
    represent the intended person name"), so on real headers they would copy birth dates and names into
    logs. The reader validates what it needs itself; malformed tags simply read as ``None``. (What the
    libraries log rather than warn is scrubbed by :mod:`medvision.cohort.logscrub`.)
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = pydicom_config.settings
        before = settings.reading_validation_mode
        settings.reading_validation_mode = pydicom_config.IGNORE
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", module=r"(pydicom|highdicom)\.")
                return fn(*args, **kwargs)
        finally:
            settings.reading_validation_mode = before

    return wrapper


@dataclass(frozen=True)
class DicomHeader:
    """What one DICOM file says about itself, read without touching the pixel data.

    The first seven fields identify a patient or an examination and must not leave the cohort layer;
    :meth:`public` returns every other field. Any tag the file lacks (or holds malformed) is ``None``.
    ``age`` is in years: from PatientAge ("045Y", "006M", "010W", "003D") or, only when that is absent,
    from PatientBirthDate and StudyDate.
    """

    patient_id: str | None = field(metadata=_IDENTIFYING)
    patient_name: str | None = field(metadata=_IDENTIFYING)
    birth_date: str | None = field(metadata=_IDENTIFYING)
    accession_number: str | None = field(metadata=_IDENTIFYING)
    study_uid: str | None = field(metadata=_IDENTIFYING)
    series_uid: str | None = field(metadata=_IDENTIFYING)
    sop_uid: str | None = field(metadata=_IDENTIFYING)
    modality: str | None
    sex: str | None
    age: float | None
    manufacturer: str | None
    institution: str | None
    view: str | None
    body_part: str | None
    photometric: str | None
    transfer_syntax: str | None
    rows: int | None
    columns: int | None
    frames: int
    samples_per_pixel: int | None
    bits_stored: int | None
    has_pixel_data: bool
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    instance_number: int | None = None
    slice_thickness: float | None = None
    slice_spacing: float | None = None

    def public(self) -> dict[str, object]:
        """The non-identifying fields, safe to log, cache or write into a report."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("identifying")}


#: DicomHeader field -> the DICOM keyword it is read from, as text or as an integer.
_TEXT_FIELDS = {
    "patient_id": "PatientID", "patient_name": "PatientName", "birth_date": "PatientBirthDate",
    "accession_number": "AccessionNumber", "study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID", "modality": "Modality", "sex": "PatientSex", "manufacturer": "Manufacturer",
    "institution": "InstitutionName", "view": "ViewPosition", "body_part": "BodyPartExamined",
    "photometric": "PhotometricInterpretation",
}  # fmt: skip
_INT_FIELDS = {
    "rows": "Rows", "columns": "Columns", "samples_per_pixel": "SamplesPerPixel", "bits_stored": "BitsStored",
    "instance_number": "InstanceNumber",
}  # fmt: skip
#: DicomHeader field -> (keyword, number of values) of the slice geometry, read as floats.
_FLOAT_FIELDS = {
    "position": ("ImagePositionPatient", 3), "orientation": ("ImageOrientationPatient", 6),
    "slice_thickness": ("SliceThickness", 1), "slice_spacing": ("SpacingBetweenSlices", 1),
}  # fmt: skip
_HEADER_TAGS = [
    "SpecificCharacterSet", "PatientAge", "StudyDate", "NumberOfFrames", "SOPClassUID",
    *_TEXT_FIELDS.values(), *_INT_FIELDS.values(), *(k for k, _ in _FLOAT_FIELDS.values()),
]  # fmt: skip


@_quiet
def read_dicom_header(path: str | Path) -> DicomHeader:
    """Read the header of ``path`` (``stop_before_pixels``) for fast cohort indexing.

    Args:
        path: a DICOM file (Part 10, or a legacy dataset without preamble).

    Returns:
        A :class:`DicomHeader`; missing tags are ``None`` (``frames`` defaults to 1).

    Raises:
        ImageReadError: the file cannot be opened or is not DICOM.

    Example (needs real files, a run or the network, so it is shown, not run)::

            read_dicom_header("study/IM0001.dcm").public()["modality"]
            # -> 'CR'
    """
    path = Path(path)
    with _opened(path) as fh:
        ds = _parse(path, fh, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        syntax = _syntax_of(ds)
        if syntax == uid.DeflatedExplicitVRLittleEndian:
            # pydicom inflates the whole body into memory, so the file position says nothing.
            with _reading(path, "could not inflate the deflated dataset", "the file is corrupt; re-export it"):
                has_pixels = bool(_PIXEL_TAGS & set(dcmread(path, specific_tags=list(_PIXEL_TAGS)).keys()))
        else:
            has_pixels = _pixel_data_follows(fh, little_endian=ds.original_encoding[1] is not False)
    # Any-valued: mypy checks a ``**dict`` against every field; the two tables name str and int fields respectively.
    tagged: dict[str, Any] = {name: _text(ds, keyword) for name, keyword in _TEXT_FIELDS.items()}
    tagged.update({name: _int(ds, keyword) for name, keyword in _INT_FIELDS.items()})
    tagged.update({name: _floats(ds, keyword, n) for name, (keyword, n) in _FLOAT_FIELDS.items()})
    return DicomHeader(
        **tagged,
        age=_age_years(ds),
        transfer_syntax=str(syntax) if syntax else None,
        frames=_frame_count(ds),
        has_pixel_data=has_pixels,
    )


@_quiet
def read_dicom(path: str | Path, frame: Frame = "middle") -> LoadedImage:
    """Decode ``path`` into display-ready ``(C, H, W)`` float32 pixels in ``[0, 1]``.

    Grayscale (MONOCHROME1/2) goes through the standard's pipeline, each step by pydicom:

    1. Modality LUT: Modality LUT Sequence, else Rescale Slope/Intercept (per-frame functional groups of
       enhanced multi-frame objects override the top-level values);
    2. VOI: the first VOI LUT Sequence item, else the first Window Center/Width pair (LINEAR, LINEAR_EXACT or
       SIGMOID as the file says), else nothing;
    3. scaling to ``[0, 1]`` by the VOI *output* range: ``[y_min, y_max]`` of the window function, ``[0,
       2**n - 1]`` for an n-bit VOI LUT, or, with no VOI, the min-max of the Modality LUT output (over all
       frames for ``"mean"``); a constant image maps to 0;
    4. MONOCHROME1 is inverted last (``1 - x``), after VOI, as the standard orders it.

    Colour: RGB (and JPEG 2000's YBR_ICT/RCT) is scaled by ``2**BitsStored - 1``; YBR_FULL and YBR_FULL_422
    are converted to RGB (pydicom does it while decoding; the photometric interpretation it reports afterwards
    is checked so no image is converted twice); PALETTE COLOR goes through its lookup tables and is scaled by
    the tables' bit depth. Alpha is dropped.

    Args:
        path: a DICOM file with pixel data, in any transfer syntax pydicom can decode.
        frame: for multi-frame objects, a 0-based index (only that frame is decoded), ``"middle"``
            (index ``frames // 2``) or ``"mean"`` (mean of every frame after the pipeline above).

    Returns:
        :class:`LoadedImage` with ``(1, H, W)`` or ``(3, H, W)`` pixels and non-identifying meta
        (modality, photometric, transfer_syntax, frames, frame, rows, columns, bits_stored, manufacturer,
        view).

    Raises:
        ImageReadError: not DICOM, truncated, no pixel data, a frame index out of range, an unsupported
            photometric interpretation, no decoder installed for the transfer syntax (the hint names the pip
            package), or data the decoder rejects.

    Example (needs real files, a run or the network, so it is shown, not run)::

            img = read_dicom("chest/IM0001.dcm")
            img.pixels.shape, img.meta["photometric"]
            # -> ((1, 2048, 2048), 'MONOCHROME1')
    """
    path = Path(path)
    ds, decoder, photometric = _image_dataset(path)
    count = _frame_count(ds)
    indices = _frame_indices(path, frame, count)
    with _reading(
        path,
        f"could not decode the {decoder.UID.name} pixel data",
        "the pixel data are corrupt or do not match the header (rows, columns, bits); re-export the file",
    ):
        frames = _frames(ds, decoder, indices)
        pixels = gray_pixels(ds, frames, photometric) if photometric in GRAY else colour_pixels(ds, frames, photometric)
    meta: dict[str, object] = {
        "modality": _text(ds, "Modality"), "photometric": photometric, "transfer_syntax": str(decoder.UID),
        "frames": count, "frame": "mean" if indices is None else indices[0], "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"), "bits_stored": _int(ds, "BitsStored"),
        "manufacturer": _text(ds, "Manufacturer"), "view": _text(ds, "ViewPosition"),
    }  # fmt: skip
    return LoadedImage(pixels=pixels, meta=meta)


def _image_dataset(path: Path) -> tuple[Dataset, Decoder, str]:
    """The whole dataset, its pixel decoder and photometric interpretation, once the file is known to hold an
    image medvision can turn into pixels (pixel data present, a decoder installed, a supported photometric)."""
    with _opened(path) as fh:
        ds = _parse(path, fh)
    if not _PIXEL_TAGS & set(ds.keys()):
        sop = ds.get("SOPClassUID")
        kind = f" ({UID(str(sop)).name})" if sop else ""
        raise ImageReadError(
            path,
            f"the file has no Pixel Data element{kind}: it is truncated or not an image object",
            "re-export the image from the archive; skip non-image objects such as reports",
        )
    decoder = _decoder(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GRAY + COLOUR:
        raise ImageReadError(
            path,
            f"photometric interpretation {photometric or '(missing)'!r} is not supported",
            f"supported: {', '.join(GRAY + COLOUR)}; convert the file to one of them",
        )
    return ds, decoder, photometric


class DicomReader:
    """DICOM in the reader registry. It claims every file no earlier reader took: legacy DICOM has no preamble
    and often no suffix, so content, not the name, decides (a non-DICOM file fails with "not a DICOM file")."""

    kind = "dicom"

    def can_read(self, path: Path) -> bool:
        return True

    def read_header(self, path: Path) -> ImageHeader:
        h = read_dicom_header(path)
        if not h.has_pixel_data:
            raise ImageReadError(path, _why_no_pixels(h))
        return ImageHeader(
            kind=self.kind, frames=int(h.frames or 1), channels=int(h.samples_per_pixel or 1),
            rows=int(h.rows or 0), columns=int(h.columns or 0),
            patient_id=h.patient_id, patient_name=h.patient_name, birth_date=h.birth_date,
            accession_number=h.accession_number, study_uid=h.study_uid, series_uid=h.series_uid,
            sop_uid=h.sop_uid, modality=h.modality, sex=h.sex, age=h.age, manufacturer=h.manufacturer,
            institution=h.institution, view=h.view, photometric=h.photometric, transfer_syntax=h.transfer_syntax,
            position=h.position, orientation=h.orientation, instance_number=h.instance_number,
            slice_thickness=h.slice_thickness, slice_spacing=h.slice_spacing,
        )  # fmt: skip

    def read(self, path: Path, frame: Frame = "middle") -> LoadedImage:
        return read_dicom(path, frame=frame)


# --- opening and parsing ------------------------------------------------------------------------------------


def _why_no_pixels(h: DicomHeader) -> str:
    """Tell a cut-off image from an object that never had pixels: both end without Pixel Data, but one needs a
    re-export and the other (a report, a DICOMDIR) only needs leaving out."""
    if h.rows and h.columns:
        return (
            f"DICOM header describes a {h.rows}x{h.columns} image but the file holds no pixel data: truncated, or "
            "exported without pixels; re-export it from the archive"
        )
    if not h.modality:
        return (
            "DICOM file has no pixel data and its header stops early (no Modality, no image size): truncated? "
            "Re-export it from the archive (a DICOMDIR index can simply be left out of the images folder)"
        )
    return f"DICOM file has no pixel data (a {h.modality} object, e.g. a report or a presentation state)"


@contextmanager
def _reading(path: Path, what: str, hint: str) -> Iterator[None]:
    """The library boundary: any pydicom/numpy failure inside becomes an ImageReadError naming the file."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - by contract only ImageReadError leaves a reader
        detail = " ".join(str(exc).split())[:300]
        raise ImageReadError(path, f"{what} ({type(exc).__name__}: {detail})", hint) from exc


@contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; the handle is needed for its position
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found", "check the path") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot open the file ({exc.strerror})", "check the path and permissions") from exc
    with fh:
        yield fh


def _parse(path: Path, fh: BinaryIO, **kwargs: Any) -> Dataset:
    """dcmread, with a fallback for legacy datasets that lack the 128-byte preamble and the file meta."""
    hint = "the file is corrupt or not DICOM; re-export it from the archive"
    with _reading(path, "the DICOM header could not be parsed", hint):
        try:
            return dcmread(fh, **kwargs)
        except InvalidDicomError:
            pass
        fh.seek(0)
        # A preamble-less dataset starts with a group 0x0008 (or 0x0002) element, in either byte order.
        if fh.read(2) not in (b"\x08\x00", b"\x02\x00", b"\x00\x08"):
            raise ImageReadError(path, "not a DICOM file (no 'DICM' marker at byte 128)", hint)
        fh.seek(0)
        ds = dcmread(fh, force=True, **kwargs)
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise ImageReadError(path, "not a DICOM file (no file meta, no SOP Class UID, no image size)", hint)
    # Without file meta the encoding was inferred from the bytes; record it as the syntax the decoder needs.
    syntaxes: dict[tuple[bool | None, bool | None], UID] = {
        (True, True): uid.ImplicitVRLittleEndian, (False, True): uid.ExplicitVRLittleEndian,
    }  # fmt: skip
    ds.file_meta.TransferSyntaxUID = syntaxes.get(ds.original_encoding, uid.ExplicitVRBigEndian)
    return ds


def _pixel_data_follows(fh: BinaryIO, little_endian: bool) -> bool:
    """After ``stop_before_pixels`` pydicom leaves the file at the pixel element's tag: peek at it."""
    raw = fh.read(4)
    if len(raw) < 4:
        return False
    group, element = struct.unpack("<HH" if little_endian else ">HH", raw)
    return (group << 16 | element) in _PIXEL_TAGS


def _syntax_of(ds: Dataset) -> UID | None:
    value = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    return UID(str(value)) if value else None


def _decoder(path: Path, ds: Dataset) -> Decoder:
    """The pydicom decoder for the file's syntax, checked *before* decoding so the hint is precise."""
    syntax = _syntax_of(ds)
    if syntax is None:
        raise ImageReadError(path, "the file meta has no Transfer Syntax UID", "re-export it from the archive")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(
            path,
            f"pixel data are encoded as {syntax.name} ({syntax}), which pydicom cannot decode",
            "transcode the file to an uncompressed, JPEG, JPEG 2000 or RLE transfer syntax first",
        ) from None
    if not decoder.is_available:
        package = _DECODER_PACKAGES.get(syntax, "a pydicom decoding plugin")
        reasons = "; ".join(decoder.missing_dependencies)
        raise ImageReadError(
            path,
            f"no decoder is installed for {syntax.name} ({syntax})" + (f": {reasons}" if reasons else ""),
            f"install it with `pip install pylibjpeg {package}`",
        )
    return decoder


# --- frames -------------------------------------------------------------------------------------------------


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _frame_indices(path: Path, frame: object, count: int) -> list[int] | None:
    """``None`` means every frame (``"mean"``)."""
    hint = f"pass an index in 0..{count - 1}, 'middle' or 'mean'"
    if frame == "mean":
        return None
    if frame == "middle":
        return [count // 2]
    if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
        if not 0 <= frame < count:
            raise ImageReadError(path, f"frame {frame} is out of range: the object has {count} frame(s)", hint)
        return [int(frame)]
    raise ImageReadError(path, f"frame={frame!r} is not a frame index, 'middle' or 'mean'", hint)


def _frames(ds: Dataset, decoder: Decoder, indices: list[int] | None) -> Iterator[tuple[int, np.ndarray, str]]:
    """Yield ``(index, array, photometric after decoding)``, decoding only the requested frames."""
    options = as_pixel_options(ds)
    chosen = range(_frame_count(ds)) if indices is None else indices
    decoded = decoder.iter_array(ds, indices=indices, **options)
    for index, (arr, changes) in zip(chosen, decoded):
        yield (
            index,
            arr,
            str(changes.get("photometric_interpretation", options["photometric_interpretation"])),
        )


# --- header values ------------------------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    return text.strip() or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _floats(ds: Dataset, keyword: str, n: int) -> Any:
    """``n`` finite numbers (a tuple, or one float when ``n == 1``); ``None`` when absent, short or not numeric."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(numbers) != n or not all(np.isfinite(numbers)):
        return None
    return numbers[0] if n == 1 else numbers


_AGE = re.compile(r"(\d{1,3})\s*([DWMY])")
_YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _age_years(ds: Dataset) -> float | None:
    """PatientAge (AS, "nnnU") in years; else StudyDate - PatientBirthDate; else ``None``."""
    match = _AGE.fullmatch((_text(ds, "PatientAge") or "").upper())
    if match:
        return int(match.group(1)) * _YEARS_PER_UNIT[match.group(2)]
    birth, study = _date(ds, "PatientBirthDate"), _date(ds, "StudyDate")
    if birth is None or study is None or study < birth:
        return None
    return (study - birth).days / 365.25


def _date(ds: Dataset, keyword: str) -> date | None:
    text = _text(ds, keyword)
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if text else None
    except ValueError:
        return None
