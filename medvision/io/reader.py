"""The one contract every image reader honours, and the protocol a new format implements.

Every later stage (cache, dataset, saliency) sees images only through this contract, so a
DICOM file, a JPEG photo or a MedMNIST array are interchangeable once read:

* pixels: ``(C, H, W)`` float32 in ``[0, 1]`` (C = 1 for grayscale, 3 for colour);
* meta: a flat dict of *non-identifying* tags (modality, photometric interpretation, ...).

A reader never raises anything but :class:`ImageReadError`, which names the file and says,
in words a user can act on, what went wrong. The cohort builder turns it into a quarantine
row instead of a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from medvision.errors import MedvisionError

__all__ = ["PHOTO_SUFFIXES", "Frame", "ImageHeader", "ImageReadError", "LoadedImage", "Reader", "is_dicom"]

#: Which frame of a multi-frame object to return: an index, the middle frame, or the mean of all frames.
Frame = int | Literal["middle", "mean"]

PHOTO_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


class ImageReadError(MedvisionError):
    """A file could not be turned into pixels; ``reason`` is meant for the user, ``hint`` says what to do.

    Exit code 2 when it ends a command: the file is the user's input (a cohort build quarantines it instead).
    """

    exit_code = 2

    def __init__(self, path: str | Path, reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        msg = f"{self.path}: {reason}"
        super().__init__(f"{msg} ({hint})" if hint else msg)


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # (C, H, W) float32 in [0, 1]
    meta: dict[str, object] = field(default_factory=dict)


def is_dicom(path: str | Path) -> bool:
    """True when the file carries the DICOM preamble magic (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class ImageHeader:
    """What indexing needs from one file, read without decoding its pixels.

    The first seven fields identify a patient or an examination: the cohort layer turns them into pseudonyms and
    they never travel further. Formats without such tags (photos) leave them ``None``.
    """

    kind: str  # the reader's kind: "dicom" | "photo" | ...
    frames: int
    channels: int
    rows: int
    columns: int
    patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    modality: str | None = None
    sex: str | None = None
    age: float | None = None
    manufacturer: str | None = None
    institution: str | None = None
    view: str | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None
    #: Where the slice lies (cross-sectional DICOM; ``None`` elsewhere or when the header lacks or garbles them):
    #: ImagePositionPatient (mm, the first pixel's centre), ImageOrientationPatient (row and column direction
    #: cosines), InstanceNumber, SliceThickness and SpacingBetweenSlices (mm). Series-level cases order their
    #: slices from these (:mod:`medvision.cohort.cases`); none of them identifies a patient.
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    instance_number: int | None = None
    slice_thickness: float | None = None
    slice_spacing: float | None = None


class Reader(Protocol):
    """One image format. Registering a class with this shape (:func:`medvision.io.register_reader`) is all a new
    format needs: indexing calls :meth:`read_header`, decoding calls :meth:`read`, both through the same ordered
    list, so the two can never disagree about which reader owns a file.
    """

    kind: str

    def can_read(self, path: Path) -> bool:
        """Cheap ownership test (suffix, magic bytes); the first reader in the registry that says yes wins."""
        ...

    def read_header(self, path: Path) -> ImageHeader:
        """Header only, no pixels; raises :class:`ImageReadError` for a file that cannot become an image."""
        ...

    def read(self, path: Path, frame: Frame = "middle") -> LoadedImage:
        """Pixels in the common contract; raises :class:`ImageReadError` only."""
        ...
