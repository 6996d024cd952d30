"""Image readers: files in, ``(C, H, W)`` float32 pixels in ``[0, 1]`` plus non-identifying metadata out.

Just above the stack's base (it imports only the error base and the entry-point loader): DICOM
(:mod:`medvision.io.dicom`), photos (:mod:`medvision.io.photo`), the reader contract (:mod:`medvision.io.reader`)
and the ordered registry both indexing and decoding use (:mod:`medvision.io.registry`).
"""

from medvision.io.dicom import DicomHeader, DicomReader, read_dicom, read_dicom_header
from medvision.io.photo import PhotoReader, read_photo
from medvision.io.reader import PHOTO_SUFFIXES, Frame, ImageHeader, ImageReadError, LoadedImage, Reader, is_dicom
from medvision.io.registry import (
    load_reader_plugins,
    read_header,
    read_image,
    reader_for,
    readers,
    register_reader,
)

__all__ = [
    "PHOTO_SUFFIXES",
    "DicomHeader",
    "DicomReader",
    "Frame",
    "ImageHeader",
    "ImageReadError",
    "LoadedImage",
    "PhotoReader",
    "Reader",
    "is_dicom",
    "load_reader_plugins",
    "read_dicom",
    "read_dicom_header",
    "read_header",
    "read_image",
    "read_photo",
    "reader_for",
    "readers",
    "register_reader",
]
