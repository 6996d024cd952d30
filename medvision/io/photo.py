"""Photographs and exported screenshots (PNG, JPEG, TIFF, BMP) -> the reader contract.

Dermatology, fundus and pathology sets mostly ship as ordinary image files. Pillow decodes them; this
module only fixes what a camera leaves ambiguous (EXIF orientation), settles the channel count (grayscale
stays one channel, everything else becomes RGB without alpha) and scales by the format's own range, so a
16-bit PNG and an 8-bit JPEG of the same scene land on the same ``[0, 1]`` values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medvision.io.reader import PHOTO_SUFFIXES, Frame, ImageHeader, ImageReadError, LoadedImage, is_dicom

__all__ = ["PhotoReader", "read_photo"]

_GRAY_8 = frozenset({"1", "L", "LA", "La"})
#: Pillow opens 16-bit grayscale PNG/TIFF as "I;16*" or as 32-bit "I" holding 16-bit values.
_GRAY_16 = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def read_photo(path: str | Path) -> LoadedImage:
    """Decode an image file into ``(C, H, W)`` float32 pixels in ``[0, 1]``.

    Grayscale (1-bit, 8-bit, 16-bit; alpha dropped) gives ``(1, H, W)``, scaled by 255 or 65535. Every
    other mode (RGB, RGBA, palette, CMYK, YCbCr) is converted to RGB by Pillow and gives ``(3, H, W)``
    scaled by 255.
    The EXIF orientation tag is applied first, so pixels are upright as a viewer shows them.

    Args:
        path: a PNG, JPEG, TIFF or BMP file (anything Pillow can open works).

    Returns:
        :class:`LoadedImage`; meta holds ``format`` and ``mode`` of the file and ``width``/``height`` of the
        returned (upright) pixels.

    Raises:
        ImageReadError: missing, unreadable, truncated or corrupt file, or a floating-point image whose
            intensity range is undefined.

    Example (needs real files, a run or the network, so it is shown, not run)::

            read_photo("lesion_0001.jpg").pixels.shape
            # -> (3, 450, 600)
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            file_format, mode = opened.format, opened.mode
            upright = ImageOps.exif_transpose(opened)
            upright.load()
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found", "check the path") from exc
    except Exception as exc:  # noqa: BLE001 - by contract only ImageReadError leaves a reader
        detail = " ".join(str(exc).split())[:300]
        raise ImageReadError(
            path,
            f"the image could not be decoded ({type(exc).__name__}: {detail})",
            "the file is corrupt, truncated or not an image; re-export it as PNG or JPEG",
        ) from exc
    pixels = _to_unit(path, upright)
    meta: dict[str, object] = {
        "format": file_format,
        "mode": mode,
        "width": upright.width,
        "height": upright.height,
    }
    return LoadedImage(pixels=pixels, meta=meta)


def _to_unit(path: Path, image: Image.Image) -> np.ndarray:
    """``(C, H, W)`` float32 in ``[0, 1]``: one channel for grayscale, RGB otherwise."""
    if image.mode in _GRAY_8:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return gray[None]
    if image.mode in _GRAY_16:
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.clip(gray, 0.0, 1.0)[None]
    if image.mode == "F":
        raise ImageReadError(
            path,
            "32-bit floating-point images have no defined intensity range",
            "save the image as 8- or 16-bit PNG/TIFF, or as DICOM with a window",
        )
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (ValueError, OSError) as exc:
        raise ImageReadError(
            path, f"Pillow cannot convert mode {image.mode!r} to RGB ({exc})", "re-export the image as RGB"
        ) from exc
    return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))


class PhotoReader:
    """Photos in the reader registry: claimed by suffix, unless the content is DICOM (some archives export
    DICOM files named ``.png``)."""

    kind = "photo"

    def can_read(self, path: Path) -> bool:
        return path.suffix.lower() in PHOTO_SUFFIXES and not is_dicom(path)

    def read_header(self, path: Path) -> ImageHeader:
        try:
            with Image.open(path) as im:
                width, height = im.size
                if im.mode == "F":
                    raise ImageReadError(path, "floating-point photos are not supported; export as 8/16-bit")
                channels = 1 if im.mode in ("1", "L", "LA", "La", "I") or im.mode.startswith("I;16") else 3
                fmt = im.format
        except (UnidentifiedImageError, OSError) as e:
            raise ImageReadError(path, f"photo could not be opened: {e.__class__.__name__}") from e
        return ImageHeader(
            kind=self.kind, frames=1, channels=channels, rows=height, columns=width, modality="XC", photometric=f"{fmt}"
        )

    def read(self, path: Path, frame: Frame = "middle") -> LoadedImage:
        return read_photo(path)
