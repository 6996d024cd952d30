"""The ordered list of readers that both indexing and decoding consult.

One list for both paths is the point: a file indexed as DICOM is decoded as DICOM. Order matters - the first reader
whose ``can_read`` says yes owns the file - so photos (by suffix, unless the content says DICOM) come before DICOM,
which accepts anything else because legacy DICOM files have neither a preamble nor a suffix.
"""

from __future__ import annotations

from pathlib import Path

from medvision.io.dicom import DicomReader
from medvision.io.photo import PhotoReader
from medvision.io.reader import Frame, ImageHeader, ImageReadError, LoadedImage, Reader

__all__ = ["read_header", "read_image", "reader_for", "readers", "register_reader"]

_READERS: list[Reader] = [PhotoReader(), DicomReader()]


def register_reader(reader: Reader, *, first: bool = True) -> None:
    """Add a format. ``first`` (the default) puts it before the built-ins so it can claim files they would take."""
    if first:
        _READERS.insert(0, reader)
    else:
        _READERS.insert(len(_READERS) - 1, reader)  # the DICOM catch-all stays last


def readers() -> tuple[Reader, ...]:
    """The registry in lookup order."""
    return tuple(_READERS)


def reader_for(path: str | Path) -> Reader:
    """The first registered reader that claims ``path``."""
    path = Path(path)
    for reader in _READERS:
        if reader.can_read(path):
            return reader
    raise ImageReadError(path, "no reader accepts this file", "see medvision.io.readers() for the supported formats")


def read_header(path: str | Path) -> ImageHeader:
    """Header of any supported file, through the same reader that :func:`read_image` would use."""
    return reader_for(path).read_header(Path(path))


def read_image(path: str | Path, frame: Frame = "middle") -> LoadedImage:
    """Read any supported file (DICOM by content, photos by suffix) into the common contract."""
    return reader_for(path).read(Path(path), frame=frame)
