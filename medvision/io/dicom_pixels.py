"""Decoded DICOM frames -> display values in ``[0, 1]``: the standard's grayscale pipeline and its colour models.

This is where a model's input is decided: what a radiologist's viewer shows (PS3.4 N.2: Modality LUT -> VOI LUT
-> polarity), not the stored values. Each step is pydicom's; this module finds the values in force for each frame
and scales by each step's output range. Opening files, choosing frames and decoding stay in
:mod:`medvision.io.dicom`, which turns any failure here into an ``ImageReadError``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, convert_color_space

__all__ = ["COLOUR", "GRAY", "colour_pixels", "gray_pixels"]

#: The photometric interpretations with a pipeline here; read_dicom refuses any other before decoding.
GRAY = ("MONOCHROME1", "MONOCHROME2")
#: YBR_ICT / YBR_RCT are JPEG 2000's internal component transforms; the codec undoes them while decoding.
_RGB_AFTER_DECODE = ("RGB", "YBR_ICT", "YBR_RCT")
_YBR = ("YBR_FULL", "YBR_FULL_422")
COLOUR = (*_RGB_AFTER_DECODE, *_YBR, "PALETTE COLOR")


# --- grayscale pipeline -------------------------------------------------------------------------------------

_LUT_KEYWORDS = (
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence",
)  # fmt: skip


def _lut_dataset(ds: Dataset, index: int) -> Dataset:
    """The Modality/VOI LUT attributes in force for frame ``index``.

    Enhanced multi-frame objects keep them in functional groups (shared, then per frame) instead of at the top
    level; pydicom's LUT functions read the top level only, so the values in force are lifted into a small
    dataset.
    """
    lut = Dataset()
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            lut.add(ds[keyword])
    shared = list(ds.get("SharedFunctionalGroupsSequence") or [])
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    for item in shared[:1] + per_frame[index : index + 1]:  # per-frame values win over shared ones
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if item.get(macro):
                for element in item[macro][0]:
                    lut.add(element)
    lut.file_meta = ds.file_meta
    lut.set_original_encoding(*ds.original_encoding)
    return lut


def _voi(values: np.ndarray, lut: Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the VOI step; return its output and the output range (``None``: no VOI, use the data range)."""
    sequence = lut.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        entries, first, bits = (int(v) for v in sequence[0].LUTDescriptor)
        # LUT inputs are integers; clip to the table so pydicom's uint16 index arithmetic cannot wrap.
        inputs = np.clip(np.rint(values), first, first + (entries or 2**16) - 1).astype(np.int64)
        return apply_voi(inputs, lut, index=0).astype(np.float64), (0.0, 2.0**bits - 1)
    if lut.get("WindowCenter") not in (None, "") and lut.get("WindowWidth") not in (None, ""):
        windowed = apply_windowing(values, lut, index=0)
        # The window's output range [y_min, y_max] is what pydicom maps -inf and +inf to.
        with np.errstate(over="ignore"):
            y_low, y_high = apply_windowing(np.array([-1e30, 1e30]), lut, index=0)
        return windowed, (float(y_low), float(y_high))
    return np.asarray(values, dtype=np.float64), None


def _to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not np.isfinite(high - low) or high == low:
        return np.zeros_like(values, dtype=np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def gray_pixels(ds: Dataset, frames: Iterator[tuple[int, np.ndarray, str]], photometric: str) -> np.ndarray:
    """Mean over the given frames of the scaled VOI output; frames without VOI share one data range."""
    scaled_sum: np.ndarray | float = 0.0
    raw_sum: np.ndarray | float = 0.0
    n_scaled = n_raw = 0
    low, high = np.inf, -np.inf
    for index, arr, _ in frames:
        if arr.ndim != 2:
            raise ValueError(f"a {photometric} frame must be 2-D, got shape {arr.shape}")
        lut = _lut_dataset(ds, index)
        values, out_range = _voi(apply_modality_lut(arr, lut), lut)
        if out_range is None:
            raw_sum, n_raw = raw_sum + values, n_raw + 1
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        else:
            scaled_sum, n_scaled = scaled_sum + _to_unit(values, *out_range), n_scaled + 1
    if n_raw:  # mean of (v - low) / (high - low) over frames == that of the summed frames
        scaled_sum = scaled_sum + n_raw * _to_unit(np.asarray(raw_sum) / n_raw, low, high)
    if n_scaled + n_raw == 0:
        raise ValueError("the decoder returned no frames")
    unit = np.asarray(scaled_sum, dtype=np.float64) / (n_scaled + n_raw)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return unit[None].astype(np.float32)


# --- colour -------------------------------------------------------------------------------------------------


def colour_pixels(ds: Dataset, frames: Iterator[tuple[int, np.ndarray, str]], photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        # 8 or 16 bits per table entry (third descriptor value); the tables may add an alpha channel.
        scale = 2.0 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1
    else:
        scale = 2.0 ** int(ds.BitsStored) - 1
    total: np.ndarray | float = 0.0
    count = 0
    for _, arr, decoded_as in frames:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)[..., :3]
        elif decoded_as in _YBR:  # pydicom normally converts YBR while decoding; this covers when it did not
            rgb = convert_color_space(arr, "YBR_FULL", "RGB")
        else:
            rgb = arr
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"a {photometric} frame must be (rows, columns, 3), got shape {rgb.shape}")
        total, count = total + rgb.astype(np.float64) / scale, count + 1
    if count == 0:
        raise ValueError("the decoder returned no frames")
    return np.clip(np.moveaxis(np.asarray(total) / count, -1, 0), 0.0, 1.0).astype(np.float32)
