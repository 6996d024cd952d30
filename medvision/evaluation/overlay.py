"""The saliency overlay: an attribution map blended over the image it explains, the one picture of "where the model
looked" that medvision shows.

Why one module: the report's gallery and the DICOM Secondary Captures of ``medvision predict --saliency``
(:mod:`medvision.serving.saliency_capture`) must show a clinician the same picture for the same map, so the blend
is written once, here, below both (the report and serving are peers and import nothing from each other). It needs
numpy, Pillow and matplotlib's colour maps only, so neither torch nor captum is imported to draw it.

The blend: the map's magnitude, scaled by its own maximum, picks a colour of "magma" (perceptually uniform, readable
in grey and with the common colour-vision deficiencies) and is also its opacity, up to :data:`MAX_OPACITY`; where
the map is zero the image shows unchanged, so what is coloured is exactly where the attribution is.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = ["COLORMAP", "MAX_OPACITY", "display_image", "overlay"]

#: The colour map of the attribution's magnitude.
COLORMAP = "magma"
#: The opacity of the colour where the attribution is at its maximum (it falls linearly to 0 with the magnitude):
#: the image stays readable under the hottest spot.
MAX_OPACITY = 0.65


def display_image(image: np.ndarray) -> np.ndarray:
    """A model input image, ``(C, H, W)`` float in ``[0, 1]`` with ``C`` = 1 (grey) or 3 (RGB), as the uint8
    ``(H, W, 3)`` picture the overlay is drawn on (grey repeated in the three channels; values outside ``[0, 1]``
    clipped).

    Raises:
        ValueError: not ``(C, H, W)`` with ``C`` = 1 or 3.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C = 1 or 3, got shape {image.shape}")
    image = np.clip(np.nan_to_num(image), 0.0, 1.0)
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    return (rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Blend ``heatmap``'s magnitude over ``image`` (module docstring: colour map and opacity).

    Args:
        image: uint8 ``(H, W)`` (grey) or ``(H, W, 3|4)`` (RGB; alpha ignored), e.g. from :func:`display_image`.
        heatmap: a 2-D attribution map of any dtype and scale (its absolute value is divided by its maximum; NaN
            counts as 0); bilinearly resized to ``(H, W)`` when its shape differs.

    Returns:
        uint8 ``(H, W, 3)`` RGB; equal to the image (grey stays grey) wherever the map is zero.

    Raises:
        ValueError: ``image`` not uint8 ``(H, W)`` or ``(H, W, 3|4)``, or ``heatmap`` not 2-D.

    Example:
        >>> grey = display_image(np.full((1, 2, 2), 0.5))
        >>> picture = overlay(grey, np.array([[0.0, 0.0], [0.0, 2.0]]))
        >>> picture[0, 0].tolist(), picture[1, 1].tolist()  # untouched where the map is 0, coloured at its peak
        ([128, 128, 128], [208, 209, 169])
    """
    image, heat = np.asarray(image), np.asarray(heatmap)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heat.shape}")
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    base = rgb.astype(np.float32) / 255.0
    h = np.abs(np.nan_to_num(heat.astype(np.float32)))
    h = h / h.max() if h.max() > 0 else h
    if h.shape != base.shape[:2]:
        h = np.asarray(Image.fromarray(h).resize((base.shape[1], base.shape[0]), Image.Resampling.BILINEAR))
    colour = colormaps[COLORMAP](h)[..., :3]
    alpha = MAX_OPACITY * h[..., None]
    out = (1 - alpha) * base + alpha * colour
    return (out * 255).round().clip(0, 255).astype(np.uint8)
