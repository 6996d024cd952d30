"""read_photo: channel layout, scaling, EXIF orientation and errors, on files Pillow writes to tmp_path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medvision.io import ImageReadError, read_image
from medvision.io.photo import read_photo

RNG = np.random.default_rng(7)


def _rgb(height: int = 6, width: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_gray_png_is_one_channel_scaled_by_255(tmp_path):
    gray = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = read_photo(tmp_path / "g.png")
    assert img.pixels.shape == (1, 5, 7) and img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels[0], gray / 255.0, atol=1e-7)
    assert img.meta == {"format": "PNG", "mode": "L", "width": 7, "height": 5}


def test_rgb_png_is_channels_first(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = read_photo(tmp_path / "c.png")
    assert img.pixels.shape == (3, 6, 8)
    np.testing.assert_allclose(img.pixels, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-7)


def test_rgba_png_drops_alpha_without_premultiplying(tmp_path):
    rgb = _rgb()
    alpha = np.zeros((6, 8, 1), dtype=np.uint8)  # fully transparent: the colour must survive untouched
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(tmp_path / "a.png")
    img = read_photo(tmp_path / "a.png")
    assert img.pixels.shape == (3, 6, 8) and img.meta["mode"] == "RGBA"
    np.testing.assert_allclose(img.pixels, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-7)


def test_palette_png_becomes_rgb(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    index = RNG.integers(0, 3, (4, 5), dtype=np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "p.png")
    img = read_photo(tmp_path / "p.png")
    assert img.meta["mode"] == "P" and img.pixels.shape == (3, 4, 5)
    np.testing.assert_allclose(img.pixels, np.moveaxis(palette[index], -1, 0) / 255.0, atol=1e-7)


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    gray = np.array([[0, 1, 255, 256], [4095, 32768, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    img = read_photo(tmp_path / "g16.png")
    assert img.pixels.shape == (1, 2, 4)
    np.testing.assert_allclose(img.pixels[0], gray / 65535.0, rtol=1e-6)
    assert img.pixels[0, 0, 2] < 0.01  # 255 is dark in 16 bits, not white as an 8-bit scale would make it


def test_jpeg_decodes_close_to_source(tmp_path):
    smooth = np.stack(np.meshgrid(np.linspace(0, 255, 32), np.linspace(40, 200, 24)), -1)
    rgb = np.concatenate([smooth, smooth[..., :1]], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    img = read_photo(tmp_path / "c.jpg")
    assert img.meta["format"] == "JPEG" and img.pixels.shape == (3, 24, 32)
    assert np.abs(img.pixels - np.moveaxis(rgb, -1, 0) / 255.0).max() < 8 / 255


@pytest.mark.parametrize("suffix", [".tif", ".bmp"])
def test_tiff_and_bmp(tmp_path, suffix):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / f"c{suffix}")
    np.testing.assert_allclose(read_photo(tmp_path / f"c{suffix}").pixels, np.moveaxis(rgb, -1, 0) / 255.0)


@pytest.mark.parametrize(("orientation", "upright"), [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1))])
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    rgb = _rgb(4, 6)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation  # Orientation: 3 = rotate 180, 6 = rotate 90 clockwise to display
    image.save(tmp_path / "o.png", exif=exif)
    img = read_photo(tmp_path / "o.png")
    expected = upright(rgb)
    assert (img.meta["height"], img.meta["width"]) == expected.shape[:2]
    np.testing.assert_allclose(img.pixels, np.moveaxis(expected, -1, 0) / 255.0, atol=1e-7)


def test_corrupt_and_truncated_files_raise_image_read_error(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for path in (garbage, truncated):
        with pytest.raises(ImageReadError) as info:
            read_photo(path)
        assert str(path) in str(info.value) and info.value.hint


def test_missing_file_and_float_image_are_reported(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_photo(tmp_path / "nope.png")
    Image.fromarray(np.ones((3, 3), dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="floating-point"):
        read_photo(tmp_path / "f.tif")


def test_read_image_dispatches_photos_by_suffix(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").meta["format"] == "PNG"
