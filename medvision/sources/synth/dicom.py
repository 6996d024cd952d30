"""DICOM objects for synthetic views: real archive headers, fake PHI and seeded UIDs.

Every attribute is a function of the patient plan and the patient's generator, never of the clock or of
pydicom's random UID source, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, RLELossless

from medvision._atomic import atomic_path
from medvision.sources.synth.plan import Patient, Site

__all__ = ["seeded_uids", "write_ct_slice", "write_cxr", "write_derm"]

_SOP = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MF": "1.2.840.10008.5.1.4.1.1.7.3",
    "XC": "1.2.840.10008.5.1.4.1.1.77.1.4",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
}


def seeded_uids(kind: str, seed: int, patient: int, image: int) -> tuple[str, str, str]:
    """Study, series and SOP instance UIDs under pydicom's root, derived from the seed only.

    ``generate_uid(prefix=None)`` ignores its entropy sources (it returns a random UUID), and a 2.25 UID
    is one long digit run that could spell a planted birth date; short components avoid both.
    """
    h = hashlib.sha256(f"medvision-synth:{kind}:{seed}".encode()).digest()
    a, b = (int.from_bytes(h[i : i + 4], "big") % 9_000_000 + 1_000_000 for i in (0, 4))
    root = f"{PYDICOM_ROOT_UID}{a}.{b}"
    return f"{root}.1.{patient}", f"{root}.2.{patient}.{image}", f"{root}.3.{patient}.{image}"


def _dataset(
    p: Patient,
    site: Site,
    sop_class: str,
    modality: str,
    k: int,
    uids: tuple[str, str, str],
    phi: dict[str, set[str]],
) -> Dataset:
    """Patient, study, series and equipment modules, with the fake PHI a real archive would carry."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uids[2])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uids[2]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids[0], uids[1]
    ds.PatientName, ds.PatientID = p.name, p.mrn
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = p.birth.strftime("%Y%m%d"), p.sex, f"{p.age:03d}Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = p.study.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + k:02d}1500"
    ds.AccessionNumber, ds.ReferringPhysicianName = p.accession, p.physician
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", k + 1, 1
    ds.Modality = modality
    ds.InstitutionName, ds.Manufacturer, ds.ManufacturerModelName = site.institution, site.manufacturer, site.model
    for key, value in (
        ("patient_names", p.name),
        ("patient_ids", p.mrn),
        ("accession_numbers", p.accession),
        ("birth_dates", ds.PatientBirthDate),
        ("referring_physicians", p.physician),
    ):
        phi[key].add(value)
    return ds


def _save(ds: Dataset, path: Path, arr: np.ndarray, photometric: str, bits: int, rle: bool) -> None:
    # generate_instance_uid=False everywhere: pydicom's default would draw a random SOPInstanceUID.
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    if rle:
        ds.compress(RLELossless, generate_instance_uid=False)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_cxr(
    path: Path,
    frames: np.ndarray,
    p: Patient,
    site: Site,
    k: int,
    uids: tuple[str, str, str],
    rng: np.random.Generator,
    phi: dict[str, set[str]],
) -> None:
    """12-bit stored values; rescale + window map them back to the display image, MONOCHROME1 inverted."""
    multi = frames.shape[0] > 1
    ds = _dataset(p, site, _SOP["MF" if multi else site.modality], site.modality, k, uids, phi)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", ("PA", "AP")[int(rng.random() < 0.3)]
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED" if multi else "ORIGINAL", "PRIMARY"]
    if site.modality == "DX" and not multi:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = ["0.139", "0.139"]
    mono1 = rng.random() < site.mono1
    low, span = int(rng.integers(80, 300)), int(rng.integers(3000, 3700))
    stored = np.round(low + (1 - frames if mono1 else frames) * span).astype(np.uint16)
    slope, intercept = site.rescale
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    lo, hi = slope * low + intercept, slope * (low + span) + intercept
    ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.1f}", f"{hi - lo:.1f}"
    ds.VOILUTFunction = "LINEAR"
    if multi:
        ds.ConversionType = "WSD"
    _save(
        ds, path, stored if multi else stored[0], "MONOCHROME1" if mono1 else "MONOCHROME2", 12, rng.random() < site.rle
    )


def write_derm(
    path: Path,
    rgb: np.ndarray,
    p: Patient,
    site: Site,
    k: int,
    uids: tuple[str, str, str],
    rng: np.random.Generator,
    phi: dict[str, set[str]],
) -> None:
    ds = _dataset(p, site, _SOP["XC"], "XC", k, uids, phi)
    ds.BodyPartExamined = ("ARM", "BACK", "CHEST", "LEG", "FACE")[int(rng.integers(5))]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ContentQualification = "PRODUCT"
    _save(ds, path, rgb, "RGB", 8, rng.random() < site.rle)


def write_ct_slice(
    path: Path,
    hu: np.ndarray,
    p: Patient,
    site: Site,
    uids: tuple[str, str, str],
    k: int,
    instance_number: int,
    geometry: tuple[np.ndarray, np.ndarray] | None,
    spacing: tuple[float, float],
    window: tuple[float, float],
    rng: np.random.Generator,
    phi: dict[str, set[str]],
) -> None:
    """One CT Image Storage slice: Hounsfield units stored through the site's Rescale Slope/Intercept (signed
    16-bit when the intercept is 0, else unsigned 12-bit), with the slice geometry when ``geometry`` (position,
    orientation) is given; without it the slice carries InstanceNumber alone, as a badly exported series does."""
    study, series, _ = uids
    sop = f"{series}.{k + 1}"
    ds = _dataset(p, site, _SOP["CT"], "CT", 0, (study, series, sop), phi)
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "FFS" if site.feet_first else "HFS"
    ds.FrameOfReferenceUID = f"{series}.0"
    ds.KVP, ds.ConvolutionKernel = ("120", "STANDARD") if site.gain >= 1 else ("100", "B30f")
    pixel, between = spacing
    ds.PixelSpacing = [f"{pixel:.4f}", f"{pixel:.4f}"]
    ds.SliceThickness, ds.SpacingBetweenSlices = f"{between:g}", f"{between:g}"
    if site.tilt:
        ds.GantryDetectorTilt = f"{site.tilt:g}"
    if geometry is not None:
        position, orientation = geometry
        ds.ImagePositionPatient = [f"{v:.3f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.SliceLocation = f"{position[2]:.3f}"
    slope, intercept = site.rescale
    stored = np.round((hu - intercept) / slope)
    if intercept == 0:  # signed storage: HU as they are
        arr, bits = np.clip(stored, -32768, 32767).astype(np.int16), 16
    else:
        arr, bits = np.clip(stored, 0, 4095).astype(np.uint16), 12
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
    ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    _save(ds, path, arr, "MONOCHROME2", bits, rng.random() < site.rle)
