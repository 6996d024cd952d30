"""read_dicom / read_dicom_header on real files written into tmp_path by pydicom.

Every expected image is computed here by hand from the DICOM formulae (PS3.3 C.11, C.7.6.3), never by
calling the pydicom helper the reader itself uses.
"""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import pytest
from dicom_factory import IDENTIFIERS, dicom_image, write
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from medvision.io import ImageReadError, read_image
from medvision.io.dicom import DicomHeader, read_dicom, read_dicom_header

RNG = np.random.default_rng(20240601)


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR window (PS3.3 C.11.2.1.2.1), already scaled to [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


def _read(tmp_path, ds, frame="middle", syntax=ExplicitVRLittleEndian):
    return read_dicom(write(ds, tmp_path / "image.dcm", syntax), frame=frame)


# --- grayscale pipeline -------------------------------------------------------------------------------------


def test_rescale_is_applied_before_the_window(tmp_path):
    stored = RNG.integers(0, 4096, (6, 7), dtype=np.uint16)
    ds = dicom_image(
        stored, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=-1000, WindowCenter=-400, WindowWidth=600
    )
    img = _read(tmp_path, ds)
    assert img.pixels.shape == (1, 6, 7) and img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels[0], _window(stored * 0.5 - 1000, -400, 600), atol=1e-6)


def test_modality_lut_sequence_replaces_rescale(tmp_path):
    stored = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint16)
    table = np.array([0, 100, 2900, 3000], dtype=np.uint16)  # non-linear: raw min-max would differ
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = table.astype("<u2").tobytes()  # OW: its byte order comes from the transfer syntax
    img = _read(tmp_path, dicom_image(stored, bits_stored=12, ModalityLUTSequence=[item]))
    np.testing.assert_allclose(img.pixels[0], table[stored] / 3000.0, atol=1e-6)


def test_voi_lut_sequence_wins_over_window_and_scales_by_its_bits(tmp_path):
    stored = RNG.integers(0, 400, (5, 6), dtype=np.uint16)
    table = RNG.integers(0, 4096, 256, dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 100, 12]  # 256 entries, first mapped input 100, 12-bit output
    item.add_new("LUTData", "US", table.tolist())
    ds = dicom_image(stored, bits_stored=12, VOILUTSequence=[item], WindowCenter=200, WindowWidth=50)
    img = _read(tmp_path, ds)
    expected = table[np.clip(stored.astype(int) - 100, 0, 255)] / 4095.0
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-6)


def test_multi_valued_window_uses_the_first_pair(tmp_path):
    stored = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    img = _read(tmp_path, dicom_image(stored, WindowCenter=[60, 200], WindowWidth=[41, 11]))
    np.testing.assert_allclose(img.pixels[0], _window(stored, 60, 41), atol=1e-6)
    assert not np.allclose(img.pixels[0], _window(stored, 200, 11), atol=0.1)


def test_sigmoid_window(tmp_path):
    stored = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    img = _read(tmp_path, dicom_image(stored, WindowCenter=100, WindowWidth=80, VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(img.pixels[0], 1 / (1 + np.exp(-4 * (stored - 100.0) / 80)), atol=1e-6)


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    stored = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    img = _read(tmp_path, dicom_image(stored, "MONOCHROME1", WindowCenter=60, WindowWidth=41))
    np.testing.assert_allclose(img.pixels[0], 1.0 - _window(stored, 60, 41), atol=1e-6)
    inverted_first = _window(255 - stored.astype(float), 60, 41)  # the wrong order, for contrast
    assert np.abs(img.pixels[0] - inverted_first).max() > 0.5


def test_without_voi_the_modality_output_is_min_max_scaled(tmp_path):
    stored = RNG.integers(-500, 1500, (6, 6)).astype(np.int16)
    img = _read(tmp_path, dicom_image(stored, bits_stored=12, RescaleSlope=-2, RescaleIntercept=7))
    np.testing.assert_allclose(img.pixels[0], _minmax(stored * -2.0 + 7), atol=1e-6)
    assert img.pixels[0][stored == stored.max()].max() == 0.0  # negative slope: the brightest stored is dark


def test_constant_image_maps_to_zero(tmp_path):
    img = _read(tmp_path, dicom_image(np.full((4, 4), 77, dtype=np.uint16)))
    assert np.isfinite(img.pixels).all() and (img.pixels == 0).all()


def test_enhanced_multi_frame_uses_per_frame_windows(tmp_path):
    stored = np.stack([np.arange(64, dtype=np.uint16).reshape(8, 8) * 50] * 2)
    per_frame = []
    for center, width in ((800, 400), (2400, 1600)):
        voi, group = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    transform, shared = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -10, "US"
    shared.PixelValueTransformationSequence = [transform]
    ds = dicom_image(
        stored,
        bits_stored=12,
        PerFrameFunctionalGroupsSequence=per_frame,
        SharedFunctionalGroupsSequence=[shared],
    )
    path = write(ds, tmp_path / "enhanced.dcm")
    np.testing.assert_allclose(read_dicom(path, 0).pixels[0], _window(stored[0] - 10.0, 800, 400), atol=1e-6)
    np.testing.assert_allclose(read_dicom(path, 1).pixels[0], _window(stored[1] - 10.0, 2400, 1600), atol=1e-6)


# --- colour -------------------------------------------------------------------------------------------------


def _rgb_to_ybr(rgb: np.ndarray) -> np.ndarray:
    """YBR_FULL from RGB (PS3.3 C.7.6.3.1.2), rounded to 8 bits."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


def _channels_first(rgb: np.ndarray) -> np.ndarray:
    return np.moveaxis(rgb, -1, 0) / 255.0


def test_rgb_is_scaled_by_bits_stored(tmp_path):
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    img = _read(tmp_path, dicom_image(rgb, "RGB"))
    assert img.pixels.shape == (3, 4, 6)
    np.testing.assert_allclose(img.pixels, _channels_first(rgb), atol=1e-7)


def test_ybr_full_becomes_rgb(tmp_path):
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    img = _read(tmp_path, dicom_image(_rgb_to_ybr(rgb), "YBR_FULL"))
    assert img.meta["photometric"] == "YBR_FULL"
    np.testing.assert_allclose(img.pixels, _channels_first(rgb), atol=2.5 / 255)


def test_ybr_full_422_becomes_rgb(tmp_path):
    pairs = RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    rgb = np.repeat(pairs, 2, axis=1)  # horizontally paired pixels share their chroma, as 4:2:2 stores it
    ybr = _rgb_to_ybr(rgb)
    # Native 4:2:2 layout (PS3.5 8.2.1): Y1 Y2 Cb Cr for every two pixels.
    packed = np.stack([ybr[:, 0::2, 0], ybr[:, 1::2, 0], ybr[:, 0::2, 1], ybr[:, 0::2, 2]], -1)
    ds = dicom_image(ybr, "YBR_FULL", PhotometricInterpretation="YBR_FULL_422", PixelData=packed.tobytes())
    img = _read(tmp_path, ds)
    np.testing.assert_allclose(img.pixels, _channels_first(rgb), atol=2.5 / 255)


def test_palette_color_goes_through_the_tables(tmp_path):
    index = np.array([[0, 1, 2, 3], [4, 9, 1, 2]], dtype=np.uint8)
    tables = RNG.integers(0, 65536, (3, 4), dtype=np.uint16)  # 4 entries, first mapped index 1, 16 bits
    attributes = {}
    for colour, table in zip(("Red", "Green", "Blue"), tables):
        attributes[f"{colour}PaletteColorLookupTableDescriptor"] = [4, 1, 16]
        attributes[f"{colour}PaletteColorLookupTableData"] = table.astype("<u2").tobytes()
    img = _read(tmp_path, dicom_image(index, "PALETTE COLOR", **attributes))
    looked_up = tables[:, np.clip(index.astype(int) - 1, 0, 3)]  # below the first entry -> entry 0; above -> last
    np.testing.assert_allclose(img.pixels, looked_up / 65535.0, atol=1e-7)


# --- frames -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_frame_selection(tmp_path, syntax):
    frames = np.stack([RNG.integers(0, 1000, (4, 5)) + 500 * k for k in range(5)]).astype(np.uint16)
    path = write(dicom_image(frames, bits_stored=12, WindowCenter=1500, WindowWidth=3000), tmp_path / "m.dcm", syntax)
    expected = _window(frames, 1500, 3000)
    np.testing.assert_allclose(read_dicom(path, frame=1).pixels[0], expected[1], atol=1e-6)
    middle = read_dicom(path)
    np.testing.assert_allclose(middle.pixels[0], expected[2], atol=1e-6)
    assert middle.meta["frames"] == 5 and middle.meta["frame"] == 2
    np.testing.assert_allclose(read_dicom(path, frame="mean").pixels[0], expected.mean(0), atol=1e-6)


def test_mean_without_voi_scales_by_the_range_of_all_frames(tmp_path):
    frames = np.stack([np.arange(20).reshape(4, 5) * (k + 1) for k in range(3)]).astype(np.uint16)
    path = write(dicom_image(frames), tmp_path / "m.dcm")
    mean = frames.mean(0)
    np.testing.assert_allclose(read_dicom(path, "mean").pixels[0], mean / frames.max(), atol=1e-6)


@pytest.mark.parametrize("frame", [3, -1, "first", True])
def test_bad_frame_is_an_image_read_error(tmp_path, frame):
    path = write(dicom_image(np.zeros((3, 2, 2), dtype=np.uint8)), tmp_path / "m.dcm")
    with pytest.raises(ImageReadError, match="frame") as info:
        read_dicom(path, frame=frame)
    assert str(path) in str(info.value) and "0..2" in info.value.hint


# --- transfer syntaxes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEG2000Lossless,
    ],
)
def test_lossless_round_trip(tmp_path, syntax, dtype):
    stored = RNG.integers(-2048 if dtype == np.int16 else 0, 2048, (32, 40)).astype(dtype)
    img = _read(tmp_path, dicom_image(stored, bits_stored=12), syntax=syntax)
    assert img.meta["transfer_syntax"] == syntax
    np.testing.assert_allclose(img.pixels[0], _minmax(stored), atol=1e-6)


def _jpeg_dicom(path, rgb: np.ndarray, **save_options) -> tuple:
    """A JPEG Baseline DICOM around a Pillow-encoded JPEG, and Pillow's own decoding of the same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95, **save_options)
    photometric = "MONOCHROME2" if rgb.ndim == 2 else "RGB"
    ds = dicom_image(rgb, photometric, 8)
    if rgb.ndim == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"  # what a JFIF colour JPEG holds
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    return path, np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def test_jpeg_baseline_colour_decodes_close_to_source_as_rgb(tmp_path):
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.stack([x * 5, y * 7, 255 - x * 5], -1).astype(np.uint8)
    path, pillow = _jpeg_dicom(tmp_path / "jpeg.dcm", rgb)
    img = read_dicom(path)
    assert img.pixels.shape == (3, 32, 48) and img.meta["transfer_syntax"] == JPEGBaseline8Bit
    # Same RGB as an independent decoder (a missed or doubled YCbCr conversion is off by far more).
    np.testing.assert_allclose(img.pixels, _channels_first(pillow), atol=3 / 255)
    assert np.abs(img.pixels - _channels_first(rgb)).mean() < 3 / 255


def test_jpeg_baseline_gray(tmp_path):
    gray = np.add.outer(np.arange(16) * 8, np.arange(16) * 4).astype(np.uint8)
    path, _ = _jpeg_dicom(tmp_path / "jpeg.dcm", gray)
    img = read_dicom(path, frame=0)
    np.testing.assert_allclose(img.pixels[0], _minmax(gray), atol=6 / 255)


# --- errors -------------------------------------------------------------------------------------------------


def _raises(path, match: str) -> ImageReadError:
    with pytest.raises(ImageReadError, match=match) as info:
        read_dicom(path)
    assert str(path) in str(info.value) and info.value.hint
    assert not any(value in str(info.value) for value in IDENTIFIERS.values())  # no PHI in the message
    return info.value


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_files(tmp_path):
    native = write(dicom_image(RNG.integers(0, 4096, (32, 32), dtype=np.uint16)), tmp_path / "native.dcm")
    data = native.read_bytes()
    cut_pixels, cut_header = tmp_path / "cut_pixels.dcm", tmp_path / "cut_header.dcm"
    cut_pixels.write_bytes(data[:-100])
    cut_header.write_bytes(data[:300])
    _raises(cut_pixels, "less than expected")
    _raises(cut_header, "no Pixel Data")
    rle = write(dicom_image(RNG.integers(0, 4096, (32, 32), dtype=np.uint16)), tmp_path / "rle.dcm", RLELossless)
    cut_rle = tmp_path / "cut_rle.dcm"
    cut_rle.write_bytes(rle.read_bytes()[:-200])
    _raises(cut_rle, "truncated")


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_indexing_tells_a_cut_off_image_from_an_object_without_pixels(tmp_path):
    from medvision.io import read_header

    native = write(dicom_image(RNG.integers(0, 4096, (32, 32), dtype=np.uint16)), tmp_path / "native.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(native.read_bytes()[:300])  # ends inside the header: a transfer that stopped
    with pytest.raises(ImageReadError, match=r"header stops early .* truncated\? Re-export it"):
        read_header(cut)
    nopix = write(dicom_image(np.zeros((2, 2), dtype=np.uint8), PixelData=None), tmp_path / "nopix.dcm")
    with pytest.raises(ImageReadError, match=r"describes a 2x2 image but the file holds no pixel data: truncated"):
        read_header(nopix)
    report = dicom_image(np.zeros((2, 2), dtype=np.uint8), PixelData=None, Rows=None, Columns=None, Modality="SR")
    with pytest.raises(ImageReadError, match=r"no pixel data \(a SR object, e\.g\. a report"):
        read_header(write(report, tmp_path / "report.dcm"))


def test_missing_pixel_data(tmp_path):
    path = write(dicom_image(np.zeros((2, 2), dtype=np.uint8), PixelData=None), tmp_path / "nopix.dcm")
    error = _raises(path, "no Pixel Data")
    assert "Secondary Capture" in error.reason


def test_not_dicom(tmp_path):
    text, png, empty = tmp_path / "notes.dcm", tmp_path / "photo.dcm", tmp_path / "empty.dcm"
    text.write_text("patient doing well\n" * 20)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(png, format="PNG")
    empty.write_bytes(b"")
    for path in (text, png, empty):
        _raises(path, "not a DICOM file")
    _raises(tmp_path / "absent.dcm", "file not found")


def test_transfer_syntax_pydicom_cannot_decode(tmp_path):
    ds = dicom_image(np.zeros((4, 4), dtype=np.uint8))
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])  # an MPEG-2 sequence header, not decodable
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    error = _raises(path, "cannot decode")
    assert "MPEG2" in error.reason and "transcode" in error.hint


def test_garbage_in_a_decodable_syntax(tmp_path):
    ds = dicom_image(np.zeros((8, 8), dtype=np.uint8))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"garbage!" * 8])
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    path = tmp_path / "garbage.dcm"
    ds.save_as(path, enforce_file_format=True)
    _raises(path, "could not decode the JPEG 2000")


@pytest.mark.parametrize(
    ("syntax", "package"), [(JPEG2000Lossless, "pylibjpeg-openjpeg"), (JPEGBaseline8Bit, "pylibjpeg-libjpeg")]
)
def test_missing_decoder_hint_names_the_package(tmp_path, syntax, package):
    ds = dicom_image(np.zeros((8, 8), dtype=np.uint8))
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "compressed.dcm"
    ds.save_as(path, enforce_file_format=True)
    # Simulate an installation without the plugins through pydicom's own plugin API, then restore them
    # (pydicom registers both as pydicom.pixels.decoders.<label>._decode_frame, pylibjpeg first).
    decoder = get_decoder(syntax)
    installed = [label for label in ("pylibjpeg", "pillow") if label in decoder.available_plugins]
    assert installed, "this test needs the decoders the project installs"
    for label in installed:
        decoder.remove_plugin(label)
    try:
        error = _raises(path, "no decoder is installed")
    finally:
        for label in installed:
            decoder.add_plugin(label, (f"pydicom.pixels.decoders.{label}", "_decode_frame"))
    assert package in error.hint
    assert get_decoder(syntax).is_available


def test_unsupported_photometric_interpretation(tmp_path):
    ds = dicom_image(np.zeros((2, 2, 3), dtype=np.uint8), "RGB", PhotometricInterpretation="HSV")
    error = _raises(write(ds, tmp_path / "hsv.dcm"), "photometric interpretation 'HSV' is not supported")
    assert "MONOCHROME2" in error.hint


def test_legacy_file_without_preamble_or_file_meta(tmp_path):
    stored = RNG.integers(0, 4096, (4, 5), dtype=np.uint16)
    ds = dicom_image(stored, bits_stored=12)
    del ds.file_meta
    ds.preamble = None
    path = tmp_path / "legacy.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_dicom(path).pixels[0], _minmax(stored), atol=1e-6)
    assert read_dicom_header(path).rows == 4


def test_meta_is_non_identifying(tmp_path):
    ds = dicom_image(np.zeros((2, 3), dtype=np.uint8), Modality="CR", Manufacturer="Acme", ViewPosition="PA")
    img = _read(tmp_path, ds)
    assert img.meta == {
        "modality": "CR", "photometric": "MONOCHROME2", "transfer_syntax": ExplicitVRLittleEndian,
        "frames": 1, "frame": 0, "rows": 2, "columns": 3, "bits_stored": 8, "manufacturer": "Acme",
        "view": "PA",
    }  # fmt: skip
    assert not set(map(str, img.meta.values())) & set(IDENTIFIERS.values())


def test_read_image_dispatches_dicom_by_content(tmp_path):
    path = write(dicom_image(np.zeros((2, 2), dtype=np.uint8)), tmp_path / "looks_like.png")
    assert read_image(path).meta["modality"] == "OT"


# --- header -------------------------------------------------------------------------------------------------


def test_header_identifiers_and_public_fields(tmp_path):
    ds = dicom_image(
        np.zeros((3, 2, 4), dtype=np.uint16), bits_stored=10, Modality="DX", PatientSex="F",
        PatientAge="045Y", Manufacturer="Acme", InstitutionName="General", ViewPosition="AP",
        BodyPartExamined="CHEST", ImagePositionPatient=["1.5", "-2", "30"], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        InstanceNumber=7, SliceThickness="2.5",
    )  # fmt: skip
    path = write(ds, tmp_path / "h.dcm", ExplicitVRBigEndian)
    header = read_dicom_header(path)
    assert (header.patient_id, header.patient_name, header.birth_date, header.accession_number) == tuple(
        IDENTIFIERS[k] for k in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber")
    )
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert (header.study_uid, header.series_uid, header.sop_uid) == uids
    assert header.public() == {
        "modality": "DX", "sex": "F", "age": 45.0, "manufacturer": "Acme", "institution": "General",
        "view": "AP", "body_part": "CHEST", "photometric": "MONOCHROME2",
        "transfer_syntax": ExplicitVRBigEndian, "rows": 2, "columns": 4, "frames": 3, "samples_per_pixel": 1,
        "bits_stored": 10, "has_pixel_data": True, "position": (1.5, -2.0, 30.0),
        "orientation": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "instance_number": 7, "slice_thickness": 2.5,
        "slice_spacing": None,
    }  # fmt: skip
    identifiers = {*IDENTIFIERS.values(), *uids}
    assert not set(map(str, header.public().values())) & identifiers
    with pytest.raises(AttributeError):
        header.modality = "CT"  # frozen


def test_malformed_slice_geometry_reads_as_absent(tmp_path):
    ds = dicom_image(
        np.zeros((2, 2), dtype=np.uint8), ImagePositionPatient=["1", "2"], ImageOrientationPatient=["1"] * 5,
    )  # fmt: skip
    header = read_dicom_header(write(ds, tmp_path / "g.dcm"))
    assert (header.position, header.orientation, header.slice_spacing) == (None, None, None)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless])
def test_header_with_missing_tags(tmp_path, syntax):
    removed = ["PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "Modality", "PixelData"]
    ds = dicom_image(np.zeros((2, 2), dtype=np.uint8), **dict.fromkeys(removed))
    ds.file_meta.TransferSyntaxUID = syntax  # no pixels, so any syntax is a valid header
    ds.save_as(tmp_path / "h.dcm", enforce_file_format=True)
    header = read_dicom_header(tmp_path / "h.dcm")
    assert isinstance(header, DicomHeader)
    assert (header.patient_id, header.patient_name, header.birth_date, header.accession_number) == (None,) * 4
    assert (header.modality, header.sex, header.age, header.manufacturer, header.view) == (None,) * 5
    assert header.frames == 1 and header.has_pixel_data is False and header.transfer_syntax == syntax


def test_header_sees_pixel_data_in_every_encoding(tmp_path):
    for syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless):
        path = write(dicom_image(np.ones((8, 8), dtype=np.uint16)), tmp_path / f"{syntax}.dcm", syntax)
        assert read_dicom_header(path).has_pixel_data, syntax.name


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
@pytest.mark.parametrize(
    ("age", "birth", "study", "years"),
    [
        ("045Y", None, None, 45.0),
        ("006M", None, None, 0.5),
        ("026W", None, None, 26 * 7 / 365.25),
        ("003D", None, None, 3 / 365.25),
        (None, "19800301", "20100301", (date(2010, 3, 1) - date(1980, 3, 1)).days / 365.25),
        ("garbled", "20000101", "20000102", 1 / 365.25),
        (None, "20100101", "20000101", None),  # study before birth: not an age
        (None, None, "20000101", None),
    ],
)
def test_header_age(tmp_path, age, birth, study, years):
    ds = dicom_image(np.zeros((2, 2), dtype=np.uint8), PatientAge=age, PatientBirthDate=birth, StudyDate=study)
    header = read_dicom_header(write(ds, tmp_path / "a.dcm"))
    assert header.age == (None if years is None else pytest.approx(years))


def test_header_of_a_non_dicom_file(tmp_path):
    path = tmp_path / "readme.dcm"
    path.write_text("not an image")
    with pytest.raises(ImageReadError, match="not a DICOM file") as info:
        read_dicom_header(path)
    assert str(path) in str(info.value)
