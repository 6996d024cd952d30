"""A fine-tuned HOD run exported as a MONAI bundle: MONAI's own offline checks pass, and its inference config,
fed the original files (DICOM of any size and polarity, 8- and 16-bit PNG, RGB photos into a grey model), gives
medvision's own probabilities for the same files through the cohort build and the classifier.

Why original files: a bundle test fed images already at the training size and range cannot see a train/serve skew
(a stretch where training padded, a 16-bit PNG divided by 255, an RGB photo without luma, a ``*.png`` glob over a
folder of DICOM).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medvision.classifier import save_classifier
from medvision.cli import app
from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.cohort.recipe import prepare_file
from medvision.cohort.spec import CohortSpec
from medvision.config import parse_config
from medvision.data.dataset import CohortDataset
from medvision.export import BUNDLE_SCHEMA, export_monai_bundle
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, finetune
from tests.dicom_factory import dicom_image, write


@pytest.fixture(scope="module")
def hod_run(synth_cxr_cohort, tmp_path_factory):
    """A one-epoch HOD fine-tune of a tiny ResNet in its own SQLite store: ``(run_id, tracking_uri)``."""
    tmp = tmp_path_factory.mktemp("bundle-run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 64},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "hod"},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp / "run"),
        "tracking": {"tracking_uri": uri, "experiment": "bundle", "run_name": "hod-bundle"},
    }
    return finetune(parse_config(raw, FinetuneConfig)).run_id, uri


@pytest.fixture(scope="module")
def bundle(hod_run, tmp_path_factory) -> Path:
    """The run exported through the CLI."""
    run_id, uri = hod_run
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    result = CliRunner().invoke(
        app, ["export", f"runs:/{run_id}", "--format", "monai-bundle", "--out", str(out), "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    return out


def _run_bundle(bundle: Path, images: Path, out: Path) -> pd.DataFrame:
    """The bundle's own inference config, through MONAI's bundle runner."""
    from monai.bundle import run

    run(
        run_id="run",
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle),
        dataset_dir=str(images),
        output_file=str(out / "predictions.csv"),
    )
    return pd.read_csv(out / "predictions.csv")


def _medvision_probs(clf, cohort_dir: Path, relpaths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """medvision's own outputs for files of a built cohort: the cached images through the classifier."""
    cohort = open_cohort(cohort_dir)
    rows = cohort.manifest.set_index("relpath").loc[relpaths].reset_index()
    ds = CohortDataset(cohort, rows)
    with torch.no_grad():
        out = clf(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    return out.probs.numpy(), out.ood_score.numpy()


@pytest.mark.slow
def test_bundle_passes_monai_checks_and_predicts_the_dicoms_it_was_trained_on(
    hod_run, bundle, synth_cxr_cohort, tmp_path
):
    from monai.bundle import verify_metadata, verify_net_in_out

    run_id, uri = hod_run
    meta, config = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    assert (bundle / "models" / "model.ts").exists()
    # MONAI's checks, offline: the schema file kept in the repository stands in for the published one.
    verify_metadata(meta_file=str(meta), filepath=str(BUNDLE_SCHEMA))
    verify_net_in_out(
        net_id="network", meta_file=str(meta), config_file=str(config), device="cpu", bundle_root=str(bundle)
    )
    metadata = json.loads(meta.read_text())
    clf, card = load_run_classifier(run_id, tracking_uri=uri)
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert list(pred["channel_def"].values()) == [*card.classes, "p_out"]
    assert card.preprocessing is not None and card.preprocessing == open_cohort(synth_cxr_cohort).card.recipe
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == list(card.input_shape[1:])
    assert metadata["required_packages_version"] == {"medvision": metadata["changelog"]["0.1.0"].split()[3]}

    # Probe: the folder of DICOM files the cohort was built from (the old datalist globbed *.png: 0 inputs).
    cohort = open_cohort(synth_cxr_cohort)
    relpaths = cohort.rows("val")["relpath"].head(12).tolist()
    images = tmp_path / "dicoms"
    for rel in relpaths:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(cohort.card.spec["images"]) / rel, images / rel)
    got = _run_bundle(bundle, images, tmp_path)
    assert list(got.columns) == ["file", *card.classes, "p_out"] and len(got) == len(relpaths)
    assert pd.read_csv(tmp_path / "rejected.csv").empty
    got = got.set_index("file").loc[[str(images / r) for r in relpaths]]
    probs, p_out = _medvision_probs(clf, synth_cxr_cohort, relpaths)
    np.testing.assert_allclose(got[card.classes].to_numpy(), probs, atol=1e-5)
    np.testing.assert_allclose(got["p_out"].to_numpy(), p_out, atol=1e-5)
    assert not np.allclose(p_out, p_out[0])  # the images differ, so must the scores


def _probe_files(folder: Path) -> dict[str, str]:
    """Original-size files of every kind the cohort build reads, and two it refuses: ``{name: what it probes}``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.linspace(0, 1, 45), np.linspace(0, 1, 70)) / 2  # 0..1
    # 12-bit MONOCHROME1 with a window: inverted polarity and a VOI window, non-square (45 x 70)
    grey = (ramp * 1500 + rng.integers(0, 400, (45, 70))).astype(np.uint16)
    write(
        dicom_image(grey, "MONOCHROME1", bits_stored=12, WindowCenter=1000, WindowWidth=1200, Modality="CR"),
        folder / "mono1_windowed.dcm",
    )
    # MONOCHROME2 with a rescale (Modality LUT) and no window, taller than wide, no suffix (legacy DICOM)
    tall = (rng.integers(0, 2000, (90, 52))).astype(np.uint16)
    write(dicom_image(tall, RescaleSlope=2, RescaleIntercept=-1024, Modality="CT"), folder / "ct_slice")
    rgb = (np.stack([ramp * 255, rng.integers(0, 255, (45, 70)), 255 - ramp * 200], -1)).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "photo_rgb.png")
    Image.fromarray(rgb).save(folder / "photo_rgb.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full((45, 70), 128, np.uint8)])).save(folder / "photo_rgba.png")
    Image.fromarray((ramp * 30000 + 20000).astype(np.uint16)).save(folder / "grey16.png")  # 16-bit: 20000..50000
    Image.fromarray((ramp.T * 127).astype(np.uint8)).save(folder / "grey8.tif")
    (folder / "notes.txt").write_text("not an image")
    (folder / "volume.nii").write_bytes(b"\x5c\x01\x00\x00" + bytes(344))  # a NIfTI header: no medvision reader
    bomb = dicom_image(np.zeros((8, 8), np.uint8))
    bomb.Rows = bomb.Columns = 20000  # 400 MP declared in a few hundred bytes: refused before decoding
    write(bomb, folder / "bomb.dcm")
    return {
        "mono1_windowed.dcm": "grey DICOM, MONOCHROME1, VOI window, 45x70",
        "ct_slice": "grey DICOM, Modality LUT, 90x52, no suffix",
        "photo_rgb.png": "RGB photo into a grey model",
        "photo_rgb.jpg": "RGB JPEG",
        "photo_rgba.png": "RGBA PNG",
        "grey16.png": "16-bit PNG",
        "grey8.tif": "8-bit TIFF",
    }


@pytest.mark.slow
def test_bundle_prepares_every_format_exactly_as_the_cohort_build(hod_run, bundle, tmp_path, monkeypatch):
    run_id, uri = hod_run
    clf, card = load_run_classifier(run_id, tracking_uri=uri)
    recipe = card.preprocessing
    assert recipe is not None and recipe.channels == 1
    probes = _probe_files(tmp_path / "images")

    # medvision's side: the same files through a cohort build with the recipe, then the classifier
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "6d6564766973696f6e2d746573742d6b6579")
    spec = CohortSpec(name="probe", images=tmp_path / "images", preprocess=recipe.spec, frames=recipe.frames)
    built = build_cohort(spec, tmp_path / "cohort")
    assert built.images == len(probes) and built.quarantined == 3
    probs, p_out = _medvision_probs(clf, tmp_path / "cohort", list(probes))

    got = _run_bundle(bundle, tmp_path / "images", tmp_path)
    got = got.set_index("file").loc[[str(tmp_path / "images" / name) for name in probes]]
    diff = np.abs(got[card.classes].to_numpy() - probs).max(axis=1)
    print({name: f"{d:.2e}" for name, d in zip(probes, diff)}, f"max {diff.max():.2e}")
    np.testing.assert_allclose(got[card.classes].to_numpy(), probs, atol=1e-5)
    np.testing.assert_allclose(got["p_out"].to_numpy(), p_out, atol=1e-5)

    # files the build would not ingest are refused by name with the build's reason, never a ConfigExpression error
    rejected = pd.read_csv(tmp_path / "rejected.csv").set_index("file")["reason"]
    assert sorted(rejected.index) == ["bomb.dcm", "notes.txt", "volume.nii"] and rejected.str.len().min() > 10
    assert "image too large" in rejected["bomb.dcm"]  # the cohort's max_megapixels, checked before decoding
    # a 16-bit PNG keeps its range (20000..50000 of 65535), it is not clipped to 1 as "/ 255" did
    grey16 = prepare_file(tmp_path / "images" / "grey16.png", recipe)
    assert grey16[grey16 > 0].min() > 0.25 and grey16.max() < 0.8
    # an RGB photo into this grey model gets BT.601 luma, the same as the build
    rgb = prepare_file(tmp_path / "images" / "photo_rgb.png", recipe)
    assert rgb.shape == recipe.input_shape


def test_export_refuses_a_classifier_without_a_preprocessing_recipe(tmp_path):
    from medvision.heads import create_head
    from medvision.models import create_backbone
    from medvision.training import Classifier

    backbone = create_backbone("resnet-tiny", "none", in_chans=1)
    clf = Classifier(backbone, create_head("linear", backbone.num_features, 2), ["a", "b"])
    save_classifier(clf, tmp_path / "clf", input_shape=(1, 32, 32))  # no recipe: trained on a custom data module
    with pytest.raises(ValueError, match="records no preprocessing recipe"):
        export_monai_bundle(str(tmp_path / "clf"), tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_export_refuses_a_full_folder_and_an_unknown_format(hod_run, tmp_path):
    run_id, uri = hod_run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = CliRunner().invoke(app, ["export", run_id, "--out", str(tmp_path / "full"), "--tracking-uri", uri])
    assert r.exit_code == 2 and "not empty" in r.output
    r = CliRunner().invoke(app, ["export", run_id, "--format", "onnx", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "monai-bundle" in r.output
    r = CliRunner().invoke(app, ["export", "no-such-model", "--out", str(tmp_path / "o"), "--tracking-uri", uri])
    assert r.exit_code == 2 and "models:/NAME/VERSION" in r.output
