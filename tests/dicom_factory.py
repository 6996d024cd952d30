"""Small synthetic DICOM objects for tests, built with pydicom alone (no files from elsewhere, no network).

``dicom_image`` gives a valid Secondary Capture dataset around a numpy array; keyword arguments set or (with
``None``) delete any attribute. ``write`` saves it in a chosen transfer syntax. The patient identifiers are
synthetic and fixed so tests can check that they never leak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = ["IDENTIFIERS", "dicom_image", "write"]

#: Synthetic identifiers every factory dataset carries (keyword -> value).
IDENTIFIERS = {
    "PatientID": "MV-SYNTH-0001",
    "PatientName": "Synthetic^Patient",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-SYNTH-77",
}


def dicom_image(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **attributes: object
) -> FileDataset:
    """A dataset holding ``pixels`` (shaped as ``Dataset.set_pixel_data`` expects) and ``attributes``.

    Args:
        pixels: uint8/uint16/int8/int16 array: (rows, cols), (frames, rows, cols), (rows, cols, 3) or
            (frames, rows, cols, 3).
        photometric: the Photometric Interpretation to record.
        bits_stored: defaults to the dtype's full width.
        attributes: DICOM keyword -> value, applied last; ``None`` deletes the attribute.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("synthetic.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write(ds: FileDataset, path: str | Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Save ``ds`` (native little-endian pixel data) to ``path`` in ``transfer_syntax``.

    ``ds`` is changed in place. Compressed syntaxes go through ``Dataset.compress`` (needs an installed
    encoder; openjpeg refuses images under about 32 x 32); big endian swaps the pixel bytes, since pydicom
    writes Pixel Data bytes as given.
    """
    syntax = UID(transfer_syntax)
    if syntax.is_encapsulated:
        ds.compress(syntax)
    elif syntax != ds.file_meta.TransferSyntaxUID:
        if syntax == ExplicitVRBigEndian and int(ds.BitsAllocated) > 8:
            width = int(ds.BitsAllocated) // 8
            ds.PixelData = np.frombuffer(ds.PixelData, dtype=f"<u{width}").astype(f">u{width}").tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        little = syntax != ExplicitVRBigEndian
        ds.set_original_encoding(syntax == ImplicitVRLittleEndian, little)
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path
