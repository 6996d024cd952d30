"""The one contract every image reader honours.

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
from typing import Literal

import numpy as np

__all__ = ["Frame", "ImageReadError", "LoadedImage", "is_dicom", "read_image"]

#: Which frame of a multi-frame object to return: an index, the middle frame, or the mean of all frames.
Frame = int | Literal["middle", "mean"]

PHOTO_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


class ImageReadError(Exception):
    """A file could not be turned into pixels; ``reason`` is meant for the user, ``hint`` says what to do."""

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


def read_image(path: str | Path, frame: Frame = "middle") -> LoadedImage:
    """Read any supported file (DICOM by content, photos by suffix) into the common contract."""
    path = Path(path)
    if path.suffix.lower() in PHOTO_SUFFIXES and not is_dicom(path):
        from medvision.data.photo import read_photo

        return read_photo(path)
    from medvision.data.dicom import read_dicom

    return read_dicom(path, frame=frame)
