"""A hospital's images folder and labels CSV, written by someone careless or hostile (issue 13, cohort half).

Each test plants one bad input (a folder named after a patient, a 1 KB file claiming 60000 x 60000 pixels, a decoder
that dies, a lost key, a full disk, links, undecodable names, spreadsheet CSVs) and checks what medvision promises in
docs/SECURITY.md: the build finishes or stops with a message naming the fix, every file is accounted for, and no
identifier reaches a log line, a warning or an output file.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import IDENTIFIERS, dicom_image, write
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from medvision.cohort.build import CohortBuildError, build_cohort
from medvision.cohort.cache import recipe_id
from medvision.cohort.cohort import CohortOpenError, open_cohort
from medvision.cohort.identifiers import check_paths, scrub
from medvision.cohort.logscrub import Scrubber, scrubbed_output
from medvision.cohort.spec import CohortSpec, PreprocessSpec, spec_from_folder
from medvision.io import ImageHeader, registry

KEY_A = "00112233445566778899aabbccddeeff"
KEY_B = "ffeeddccbbaa99887766554433221100"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY_A)


def _dicom(path: Path, seed: int = 0, **attributes: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((16, 16)) * 255).astype(np.uint8)
    return write(dicom_image(pixels, Modality="DX", **attributes), path)


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)).save(path)
    return path


def _spec(root: Path, **kw: object) -> CohortSpec:
    raw = {"name": "hostile", "images": root, "preprocess": {"size": 8, "channels": 1}, "workers": 1, **kw}
    return CohortSpec.model_validate(raw)


def _accounted(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / "manifest.parquet"), pd.read_csv(out / "quarantine.csv")


# --- 13.1 and 12.10: identifiers in logs and paths -------------------------------------------------------------


def test_scrubber_removes_identifiers_as_whole_words_only():
    text = "DOE^JANE does not match; misplaced file of doe, id MRN77"
    assert scrub(text, {"doe", "jane", "place", "mrn77"}) == (
        "[redacted]^[redacted] does not match; misplaced file of [redacted], id [redacted]"
    )


def test_library_log_lines_and_warnings_carry_no_path_when_paths_are_withheld(tmp_path, caplog):
    """pydicom logs the full path of a truncated encapsulated file ("... in file .../A002304/axial/x.dcm")."""
    root = tmp_path / "images"
    _dicom(root / "site" / "ok.dcm")
    bad = write(dicom_image(np.zeros((16, 16), np.uint8)), tmp_path / "rle.dcm", RLELossless)
    (root / "A002304" / "axial").mkdir(parents=True)
    (root / "A002304" / "axial" / "19001231-077.dcm").write_bytes(bad.read_bytes()[:-12])  # no delimiter
    with caplog.at_level(logging.DEBUG):
        build_cohort(_spec(root, record_paths=False), tmp_path / "out")
    assert "End of file" in caplog.text  # the library did speak ...
    # ... through the scrubber (the output folder may be named: filelock logs its cache lock at DEBUG)
    assert "A002304" not in caplog.text and str(root) not in caplog.text
    assert "A002304" not in (tmp_path / "out" / "quarantine.csv").read_text()

    scrubber = Scrubber(identifiers={"a002304"}, roots=[root], withhold_paths=True)
    with warnings.catch_warnings(record=True) as seen, scrubbed_output(scrubber):
        warnings.simplefilter("always")
        warnings.warn(f"cannot read {root}/x/1.dcm of patient A002304", UserWarning, stacklevel=1)
        logging.getLogger("PIL.PngImagePlugin").error("failed on %s", root / "A002304.png")
    assert [str(w.message) for w in seen] == ["cannot read <path withheld> of patient [redacted]"]
    assert "failed on <path withheld>" in caplog.text


def test_an_identifier_inside_a_hashed_file_name_is_no_leak_and_real_leaks_are_shown_redacted(tmp_path):
    root = tmp_path / "images"
    _png(root / "3d4364c0.png")
    _png(root / "364" / "scan-7.png", 1)
    pd.DataFrame({"image": ["3d4364c0", "scan-7"], "label": ["a", "b"], "patient": ["364", "364"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    spec = spec_from_folder(root, labels=tmp_path / "labels.csv", patient_column="patient", name="derm")
    rows = pd.DataFrame({"relpath": ["3d4364c0.png"], "csv_patient": ["364"]})
    check_paths(rows, spec)  # the hex name matches no whole token
    rows = pd.DataFrame({"relpath": ["3d4364c0.png", "364/scan-7.png"], "csv_patient": ["364", "364"]})
    with pytest.raises(CohortBuildError, match=r"1 image path\(s\).*<patient>/scan-7\.png") as err:
        check_paths(rows, spec)
    assert "364/" not in str(err.value)


# --- 13.3: hostile image sizes and dying decoders ----------------------------------------------------------------


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming ``width x height`` RGB, with a few bytes of pixel data (never decodable)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_a_tiny_file_claiming_a_huge_image_is_quarantined_before_decoding(tmp_path):
    root = tmp_path / "images"
    _dicom(root / "ok.dcm")
    rle = write(dicom_image(np.zeros((16, 16), np.uint8)), root / "huge.dcm", RLELossless)
    ds = pydicom.dcmread(rle)
    ds.Rows = ds.Columns = 60000
    ds.save_as(rle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _png_claiming(root / "huge.png", 12000, 12000)
        build_cohort(_spec(root), tmp_path / "out")
    manifest, quarantine = _accounted(tmp_path / "out")
    assert len(manifest) == 1
    reasons = dict(zip(quarantine["relpath"], quarantine["reason"]))
    assert reasons["huge.dcm"].startswith("image too large (60000×60000×1 = 3,600 MP, cap 200 MP")
    assert "12000×12000×1×3 samples" in reasons["huge.png"] and "raise `max_megapixels`" in reasons["huge.png"]


class _DyingReader:
    """A registered format whose decoder kills its own process, as the OOM killer or a codec segfault would."""

    kind = "photo"

    def can_read(self, path: Path) -> bool:
        return path.suffix == ".die"

    def read_header(self, path: Path) -> ImageHeader:
        return ImageHeader(kind=self.kind, frames=1, channels=1, rows=8, columns=8)

    def read(self, path: Path, frame: object = "middle"):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_decoder_process_that_dies_costs_one_file_not_the_build(tmp_path, monkeypatch):
    root = tmp_path / "images"
    for i in range(40):
        _png(root / f"p{i:02d}.png", i)
    (root / "p17.die").write_bytes(b"boom")
    monkeypatch.setattr(registry, "_READERS", [_DyingReader(), *registry._READERS])
    build_cohort(_spec(root, workers=2), tmp_path / "out")
    manifest, quarantine = _accounted(tmp_path / "out")
    assert len(manifest) == 40
    assert quarantine["relpath"].tolist() == ["p17.die"]
    assert "decoding process died" in quarantine["reason"][0]


# --- 13.4: the pseudonym key -------------------------------------------------------------------------------------


def test_a_rebuild_with_another_key_is_refused_unless_asked_for(tmp_path, monkeypatch, caplog):
    root = tmp_path / "images"
    for i in range(3):
        _dicom(root / f"{i}.dcm", i)
    card = build_cohort(_spec(root), tmp_path / "out")
    assert len(card.pseudonym_key_fingerprint) == 16 and KEY_A not in card.to_json()
    first = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY_B)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with pytest.raises(CohortBuildError, match="another pseudonym key.*--new-key") as refused:
        build_cohort(_spec(root), tmp_path / "out")
    assert str(tmp_path / "xdg" / "medvision" / "pseudonym.key") in str(refused.value)  # where the key really is
    assert pd.read_parquet(tmp_path / "out" / "manifest.parquet").equals(first)  # left as it was
    build_cohort(_spec(root), tmp_path / "out", new_key=True)
    assert set(pd.read_parquet(tmp_path / "out" / "manifest.parquet")["image_id"]).isdisjoint(first["image_id"])

    monkeypatch.delenv("MEDVISION_PSEUDONYM_KEY")
    key_file = tmp_path / "keys" / "k.key"
    key_file.parent.mkdir()
    key_file.write_text(KEY_B + "\n")
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="medvision.cohort"):
        build_cohort(_spec(root, pseudonym_key_file=key_file), tmp_path / "out")
    assert "can be read by other users" in caplog.text and "chmod 600" in caplog.text


# --- 13.5: atomic outputs ----------------------------------------------------------------------------------------


def test_a_full_disk_during_a_rebuild_keeps_the_previous_cohort(tmp_path):
    """The kernel refuses the rebuild's writes (a file-size limit: EFBIG, as a full disk gives ENOSPC) in a child
    process; the cohort built before is intact and nothing half-written is left."""
    root = tmp_path / "images"
    for i in range(3):
        _dicom(root / f"{i}.dcm", i)
    out = tmp_path / "out"
    card = build_cohort(_spec(root), out)
    for i in range(3, 40):
        _dicom(root / f"{i}.dcm", i)
    code = (
        "import resource, signal\n"
        "from medvision.cohort.build import build_cohort\n"
        "from medvision.cohort.spec import CohortSpec\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))\n"
        f"build_cohort(CohortSpec.model_validate({_spec(root).model_dump(mode='json')!r}), {str(out)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "DiskFullError: disk full at " + str(out) in result.stderr
    assert open_cohort(out).manifest_sha256 == card.manifest_sha256  # the old cohort, intact
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_full_disk_while_caching_names_the_folder_and_leaves_no_partial_shard(tmp_path):
    """The kernel refuses the shard write (a file-size limit, EFBIG) in a child process; a stale shard of a killed
    build is removed."""
    root = tmp_path / "images"
    for i in range(12):
        _png(root / f"{i}.png", i)
    out = tmp_path / "out"
    stale = out / "cache" / recipe_id(PreprocessSpec(size=64, channels=3)) / "shard-00007.tmp.npy"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    code = (
        "import resource, signal, sys\n"
        "from medvision.cohort.build import build_cohort\n"
        "from medvision.cohort.spec import CohortSpec\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        f"spec = CohortSpec.model_validate({{'name': 'c', 'images': {str(root)!r}, 'workers': 1,"
        " 'preprocess': {'size': 64, 'channels': 3}})\n"
        f"build_cohort(spec, {str(out)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "DiskFullError: disk full at " + str(out / "cache") in result.stderr
    assert not list(out.rglob("*.tmp.npy"))


def test_a_manifest_that_does_not_match_its_card_is_refused(tmp_path):
    root = tmp_path / "images"
    for i in range(3):
        _dicom(root / f"{i}.dcm", i)
    build_cohort(_spec(root), tmp_path / "out")
    m = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    m.iloc[1:].to_parquet(tmp_path / "out" / "manifest.parquet", index=False)  # as a kill between the two writes
    with pytest.raises(CohortOpenError, match="does not match cohort.json"):
        open_cohort(tmp_path / "out")
    (tmp_path / "out" / "manifest.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(CohortOpenError, match="cannot be read.*rebuild"):
        open_cohort(tmp_path / "out")


# --- 13.8: identifiers through the side door ---------------------------------------------------------------------


def test_an_images_folder_named_after_a_patient_names_neither_the_cohort_nor_the_card(tmp_path):
    root = tmp_path / IDENTIFIERS["PatientID"]
    _dicom(root / "1.dcm", InstitutionName="St Elsewhere General")
    with pytest.raises(CohortBuildError, match="cohort name.*spells a patient identifier.*--name"):
        build_cohort(spec_from_folder(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    spec = spec_from_folder(root, name="ward", record_paths=False).model_copy(
        update={
            "subgroups": CohortSpec.model_fields["subgroups"]
            .default_factory()
            .model_copy(update={"site_from": "institution_pseudonym"})
        }
    )
    build_cohort(spec, tmp_path / "out")
    text = (tmp_path / "out" / "cohort.json").read_text() + pd.read_parquet(
        tmp_path / "out" / "manifest.parquet"
    ).to_csv()
    assert IDENTIFIERS["PatientID"] not in text and str(tmp_path) not in text
    assert "Elsewhere" not in text and pd.read_parquet(tmp_path / "out" / "manifest.parquet")["site"][0].startswith(
        "H-"
    )


# --- 13.9: files silently left out --------------------------------------------------------------------------------


def test_links_duplicates_and_screenshots_are_each_accounted_for(tmp_path, caplog):
    root = tmp_path / "images"
    elsewhere = tmp_path / "elsewhere"
    for i in range(3):
        _dicom(elsewhere / f"{i}.dcm", i)
    first = _dicom(root / "a" / "1.dcm", 10)
    shutil.copy(first, root / "a" / "2-copy.dcm")  # the same SOP instance at two paths
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "gone.dcm").symlink_to(tmp_path / "missing.dcm")
    _png(root / "a" / "screenshot.png")
    with caplog.at_level(logging.WARNING, logger="medvision.cohort"):
        card = build_cohort(_spec(root), tmp_path / "out")
    manifest, quarantine = _accounted(tmp_path / "out")
    assert sorted(manifest["relpath"]) == [
        "a/1.dcm",
        "a/screenshot.png",
        "linked/0.dcm",
        "linked/1.dcm",
        "linked/2.dcm",
    ]
    reasons = dict(zip(quarantine["relpath"], quarantine["reason"]))
    assert set(reasons) == {"a/2-copy.dcm", "a/loop", "gone.dcm"}
    assert "duplicate SOP Instance UID" in reasons["a/2-copy.dcm"] and "link loop" in reasons["a/loop"]
    assert "broken symbolic link" in reasons["gone.dcm"]
    assert manifest["image_id"].is_unique
    assert "--kinds dicom" in caplog.text and card.warnings
    build_cohort(_spec(root, kinds=["dicom"]), tmp_path / "out2")
    manifest, quarantine = _accounted(tmp_path / "out2")
    assert "a/screenshot.png" not in set(manifest["relpath"]) and "a/screenshot.png" in set(quarantine["relpath"])


# --- 13.10: crashes instead of messages ---------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_quarantined_by_a_safe_name(tmp_path):
    root = tmp_path / "images"
    _dicom(root / "ok.dcm")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.dcm"), "wb") as fh:
        fh.write((root / "ok.dcm").read_bytes())
    build_cohort(_spec(root), tmp_path / "out")
    manifest, quarantine = _accounted(tmp_path / "out")
    assert manifest["relpath"].tolist() == ["ok.dcm"]
    assert quarantine["relpath"].tolist() == ["caf\\xe9.dcm"] and "not valid UTF-8" in quarantine["reason"][0]


def test_a_folder_without_images_says_so(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("hello")
    (tmp_path / "images" / "readme.md").write_text("hello")
    with pytest.raises(CohortBuildError, match=r"no images found under .*images \(2 other file\(s\).*supported: DICOM"):
        build_cohort(_spec(tmp_path / "images"), tmp_path / "out")


@pytest.mark.parametrize("dialect", ["utf-8-sig", "semicolon"])
def test_spreadsheet_csvs_join_without_extra_options(tmp_path, dialect):
    root = tmp_path / "images"
    for i in range(4):
        _png(root / f"img{i}.png", i)
    table = pd.DataFrame({"image": [f"img{i}" for i in range(4)], "label": ["a", "b", "a", "b"]})
    csv = tmp_path / "labels.csv"
    if dialect == "utf-8-sig":  # Excel's "CSV UTF-8"
        table.to_csv(csv, index=False, encoding="utf-8-sig")
    else:
        table.to_csv(csv, index=False, sep=";")
    spec = spec_from_folder(root, labels=csv, size=8, channels=1)
    assert spec.labels.key_column == "image"
    build_cohort(spec.model_copy(update={"workers": 1}), tmp_path / "out")
    assert pd.read_parquet(tmp_path / "out" / "manifest.parquet")["label"].notna().all()


def test_an_empty_labels_csv_names_the_file(tmp_path):
    (tmp_path / "labels.csv").write_bytes(b"")
    _png(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match=r"labels CSV .*labels\.csv is empty \(0 bytes\)"):
        spec_from_folder(tmp_path / "images", labels=tmp_path / "labels.csv")
    spec = spec_from_folder(tmp_path / "images", labels=tmp_path / "labels.csv", key_column="image")
    with pytest.raises(ValueError, match=r"labels\.csv is empty"):
        build_cohort(spec, tmp_path / "out")


def test_cli_refuses_another_key_and_accepts_new_key_and_kinds(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medvision.cli import app

    root = tmp_path / "ward"
    for i in range(2):
        _dicom(root / f"{i}.dcm", i)
    _png(root / "shot.png")
    args = ["cohort", "build", "--images", str(root), "--size", "8", "--channels", "1", "--out", str(tmp_path / "o")]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--kinds", "dicom"]).exit_code == 0
    assert "shot.png" in set(pd.read_csv(tmp_path / "o" / "quarantine.csv")["relpath"])
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY_B)
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--new-key" in refused.output
    assert runner.invoke(app, [*args, "--new-key"]).exit_code == 0


def test_the_card_prints_labels_and_reasons_literally(tmp_path):
    from rich.console import Console

    from medvision.cohort.card import print_card

    root = tmp_path / "images"
    for i in range(4):
        _png(root / f"img{i}.png", i)
    (root / "notes.txt").write_text("x")
    pd.DataFrame({"image": [f"img{i}" for i in range(4)], "label": ["a[/]b", "[bold]c", "a[/]b", "[bold]c"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    card = build_cohort(spec_from_folder(root, labels=tmp_path / "labels.csv", size=8, channels=1), tmp_path / "o")
    card = card.model_copy(update={"quarantine_reasons": {"name [redacted] in header": 1}})
    console = Console(record=True, width=200)
    print_card(card, console)
    text = console.export_text()
    assert "a[/]b" in text and "[bold]c" in text and "name [redacted] in header" in text


# --- issue 21: scrubbing gaps ------------------------------------------------------------------------------------


def test_short_name_parts_and_whole_names_are_scrubbed_as_whole_tokens(tmp_path):
    """Name parts under three characters were never scrubbed (``LI^WU``, ``NG``): a log line quoting them kept
    them. They go now, as whole tokens (so "split" and "wine" keep their letters), and a name with an initial goes
    whole in its usual spellings; paths are still refused only for identifiers of three characters and more."""
    from medvision.cohort.identifiers import identifier_set
    from medvision.cohort.index import index_files, list_files

    root = tmp_path / "images"
    _dicom(root / "a.dcm", 0, PatientName="LI^WU", PatientID="P-000123")
    _dicom(root / "b.dcm", 1, PatientName="NG^J", PatientID="P-000124")
    rows = pd.DataFrame([vars(f) for f in index_files(root, list_files(root))])
    scrubber = Scrubber(identifiers=identifier_set(rows))
    line = "cannot read LI^WU (Wu Li, li wu), NG^J, J Ng and Ng, J: split the wine with wulf"
    assert scrubber(line) == (
        "cannot read [redacted] ([redacted], [redacted]), [redacted], [redacted] and [redacted]: "
        "split the wine with wulf"
    )
    assert scrub("a note by NG", {"ng"}) == "a note by [redacted]"
    check_paths(rows.assign(relpath=["ct/a.dcm", "wu/b.dcm"]), _spec(root))  # "ct" and "wu" refuse no path


def test_url_encoded_identifiers_are_scrubbed_like_plain_ones():
    """HTTP libraries log request URLs, in which a patient ID or name is percent-encoded."""
    scrubber = Scrubber(identifiers={"PID 0042/7", "doe", "jane", "doe^jane", "MÜLLER"})
    line = "GET /studies?PatientID=PID%200042%2F7&PatientName=DOE%5EJANE&x=PID+0042%2F7&n=M%C3%9CLLER 50% done"
    assert scrubber(line) == (
        "GET /studies?PatientID=[redacted]&PatientName=[redacted]&x=[redacted]&n=[redacted] 50% done"
    )


_SPAWN_BUILD = """
import logging, multiprocessing, sys, warnings
from pathlib import Path
import numpy as np
from medvision.cohort.build import build_cohort
from medvision.cohort.spec import CohortSpec
from medvision.io import ImageHeader, LoadedImage, register_reader

log = logging.getLogger("talkative_reader")


class TalkativeReader:
    # A third-party reader that, like pydicom, quotes the path it was handed in its log lines and warnings.
    kind = "talk"

    def can_read(self, path):
        return path.suffix == ".talk"

    def read_header(self, path):
        log.warning("reading the header of %s", path)
        warnings.warn(f"odd header in {path}", UserWarning, stacklevel=1)
        return ImageHeader(kind="talk", frames=1, channels=1, rows=8, columns=8)

    def read(self, path, frame="middle"):
        log.warning("decoding %s", path)
        return LoadedImage(np.full((1, 8, 8), int(path.stem) / 100, np.float32))


register_reader(TalkativeReader())  # at import: spawned workers import this main module again, and register it

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    for i in range(70):
        (root / "A002304").mkdir(parents=True, exist_ok=True)
        (root / "A002304" / f"{i}.talk").write_bytes(b"talk")
    spec = CohortSpec(
        name="talk", images=root, record_paths=False, workers=2, preprocess={"size": 8, "channels": 1},
        splits={"stratify": []},
    )
    card = build_cohort(spec, out)
    print("images", sum(c.images for c in card.counts.values()))
"""


def test_spawned_index_and_decode_workers_scrub_what_libraries_log(tmp_path):
    """Index workers got no scrubber under spawn (forkserver is Linux's default from Python 3.14): a reader's log
    line or warning in a worker printed the raw path of a folder named after a patient."""
    script = tmp_path / "build.py"
    script.write_text(_SPAWN_BUILD)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "images"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images 70" in done.stdout
    assert "reading the header of <path withheld>" in done.stderr  # index workers spoke, scrubbed ...
    assert "odd header in <path withheld>" in done.stderr
    assert "decoding <path withheld>" in done.stderr  # ... and decode workers
    assert "A002304" not in done.stderr and str(tmp_path / "images") not in done.stderr


# --- issue 21: identifiers in subgroup values, duplicates whose first copy is corrupt ---------------------------


def test_a_neutral_csv_column_holding_patient_ids_is_refused_as_a_subgroup(tmp_path):
    """Issue 21 probe #4: a CSV column with a neutral name (``code``) holding the DICOM PatientIDs, used as
    ``--subgroup grp=code``, put the raw IDs into manifest.parquet, cohort.json and the printed card."""
    from typer.testing import CliRunner

    from medvision.cli import app

    root = tmp_path / "images"
    ids = [f"MRN-{7000 + i}" for i in range(8)]
    for i, pid in enumerate(ids):
        _dicom(root / f"{i}.dcm", i, PatientID=pid, PatientName=f"Doe{i}^Jane{i}")
    table = pd.DataFrame(
        {
            "image": [str(i) for i in range(8)],
            "label": ["a", "b"] * 4,
            "code": ids,  # the patient IDs, under a name nothing flags
            "note": [f"seen by {'Jane3 Doe3' if i == 3 else 'the team'}" for i in range(8)],  # a name in free text
            "arm": ["x", "y"] * 4,
        }
    )
    table.to_csv(tmp_path / "labels.csv", index=False)
    runner = CliRunner()

    def build(subgroup: str, out: str):
        return runner.invoke(
            app,
            ["cohort", "build", "--images", str(root), "--labels", str(tmp_path / "labels.csv"), "--size", "8",
             "--subgroup", subgroup, "--out", str(tmp_path / out)],
        )  # fmt: skip

    for subgroup in ("grp=code", "grp=note"):
        result = build(subgroup, subgroup)
        assert result.exit_code == 1, result.output
        assert "labels.subgroup_columns.grp" in result.output and "holds patient identifiers" in result.output
        assert "labels.patient_column" in result.output  # says what to do
        assert not any(pid in result.output for pid in ids) and "Jane3" not in result.output
        assert not (tmp_path / subgroup / "manifest.parquet").exists()
    result = build("grp=arm", "arm")  # an ordinary attribute still builds
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(tmp_path / "arm" / "manifest.parquet")["grp"]) == {"x", "y"}


def test_duplicates_keep_the_first_readable_copy_when_the_first_one_is_corrupt(tmp_path):
    """Issue 21 probe #6 (pydicom's own test corpus: ``badVR.dcm``): copies of one SOP instance were deduplicated
    by sorted path alone, so a corrupt first copy was kept (and quarantined) and the readable copies were
    quarantined as duplicates: the instance was lost."""
    import copy

    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    instance = dicom_image((rng.random((32, 32)) * 4000).astype(np.uint16), Modality="DX")
    corrupt = copy.deepcopy(instance)
    corrupt.PixelData = corrupt.PixelData[:300]  # the header reads, the pixels cannot be decoded
    write(corrupt, root / "0-first.dcm")
    write(copy.deepcopy(instance), root / "1-readable.dcm")
    write(copy.deepcopy(instance), root / "2-readable-implicit.dcm", ImplicitVRLittleEndian)
    _dicom(root / "3-other.dcm", 3)
    build_cohort(_spec(root), tmp_path / "out")
    manifest, quarantine = _accounted(tmp_path / "out")
    assert sorted(manifest["relpath"]) == ["1-readable.dcm", "3-other.dcm"]
    reasons = dict(zip(quarantine["relpath"], zip(quarantine["stage"], quarantine["reason"])))
    assert set(reasons) == {"0-first.dcm", "2-readable-implicit.dcm"}
    stage, reason = reasons["0-first.dcm"]
    assert stage == "decode" and reason.endswith("a readable copy of the same instance, file #1, is kept")
    assert reasons["2-readable-implicit.dcm"] == (
        "index",
        "duplicate SOP Instance UID: the same DICOM instance as file #1 (kept)",
    )
    assert manifest["image_id"].is_unique
