"""Deterministic preprocessing from a read image to the array the cache stores.

Only geometry and storage type are fixed here (size, channels, fit, dtype); everything random
(augmentation) happens later in the dataset, so one cached array serves every epoch and run.
"""

from __future__ import annotations

import numpy as np

from medvision.cohort.spec import PreprocessSpec

__all__ = ["preprocess"]

# ITU-R BT.601 luma weights, the usual choice when a colour photo must feed a 1-channel model.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocess(pixels: np.ndarray, params: PreprocessSpec) -> np.ndarray:
    """``(C, H, W)`` float32 in [0, 1] -> ``(channels, size, size)`` in the cache's dtype."""
    c = pixels.shape[0]
    if params.channels == 1 and c == 3:
        pixels = np.tensordot(_LUMA, pixels, axes=1)[None]
    hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0), dtype=np.float32)
    hwc = _resize(hwc, params.size, params.fit)
    if hwc.ndim == 2:
        hwc = hwc[:, :, None]
    if params.channels == 3 and hwc.shape[2] == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    chw = np.clip(hwc.transpose(2, 0, 1), 0.0, 1.0)
    if params.dtype == "uint8":
        return np.rint(chw * 255.0).astype(np.uint8)
    return chw.astype(np.float16)


def _resize(hwc: np.ndarray, size: int, fit: str) -> np.ndarray:
    h, w = hwc.shape[:2]
    if fit == "stretch":
        return _resize_to(hwc, size, size)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _resize_to(hwc, nh, nw)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    out = np.zeros((size, size, hwc.shape[2]), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def _resize_to(hwc: np.ndarray, h: int, w: int) -> np.ndarray:
    if hwc.shape[:2] == (h, w):
        return hwc
    # Area averaging when shrinking avoids aliasing of fine structure (e.g. CXR lines); linear when growing.
    shrinking = h < hwc.shape[0] or w < hwc.shape[1]
    import cv2  # here: importing the cohort recipe (as the GPU benchmark does) needs no OpenCV (scripts/device_kit.py)

    return cv2.resize(hwc, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
