"""Case cohorts (``unit: series | study | patient``): one manifest row per instance with its case, every case whole
or quarantined whole with the reason, and the card counting both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.config import ConfigError, parse_config
from medvision.data.bags import BagDataset, CaseIndex
from medvision.pipeline import load_pipeline
from medvision.sources.synth import DEFECTS, synthesize
from medvision.training import FinetuneConfig, finetune

KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY)


@pytest.fixture(scope="module")
def ct_source(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("ct") / "src", "ct-series", patients=20, seed=4, size=16, slices=10)


@pytest.fixture(scope="module")
def ct_cohort(ct_source, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDVISION_PSEUDONYM_KEY", KEY)
        out = tmp_path_factory.mktemp("ct") / "cohort"
        build_cohort(ct_source, out)
    return out


def test_every_series_is_one_case_in_slice_order(ct_source, ct_cohort):
    cohort = open_cohort(ct_cohort)
    m = cohort.manifest
    assert cohort.unit == "series"
    truth = pd.read_csv(ct_source.parent / "slices_truth.csv", keep_default_na=False).set_index("relpath")
    m = m.join(truth, on="relpath")
    for _, case in m.groupby("case_id"):
        case = case.sort_values("instance_index")
        assert case["instance_index"].tolist() == list(range(len(case)))
        assert case["slice_index"].is_monotonic_increasing, "instances follow the slices' true order"
        assert case[["series_id", "label", "split", "patient_id", "sex", "age_band", "site"]].nunique().max() == 1
    ordered = m.drop_duplicates("case_id").set_index("defect")["case_ordering"]
    assert ordered.get("instance-number-only") == "instance_number"
    assert set(ordered.drop(index="instance-number-only", errors="ignore")) == {"position"}
    # the label of a series went to every one of its slices (labels.csv has one row per series)
    assert m["label"].notna().all() and m.groupby("case_id")["label"].nunique().max() == 1


def test_defective_series_are_quarantined_whole_with_the_reason(ct_source, ct_cohort):
    q = pd.read_csv(ct_cohort / "quarantine.csv")
    truth = pd.read_csv(ct_source.parent / "slices_truth.csv", keep_default_na=False)
    for defect, fate in DEFECTS.items():
        files = set(truth.loc[truth["defect"] == defect, "relpath"])
        if fate == "quarantine":
            assert files <= set(q["relpath"]), f"every file of the {defect} series is quarantined"
        else:
            assert not files & set(q["relpath"])
    reasons = " ".join(q["reason"])
    for words in ("cannot be ordered", "missing slice", "duplicate slice positions"):
        assert words in reasons
    assert (q["stage"] == "case").all()


def test_the_card_counts_cases_and_instances(ct_cohort):
    card = json.loads((ct_cohort / "cohort.json").read_text())
    cases, m = card["cases"], pd.read_parquet(ct_cohort / "manifest.parquet")
    assert cases["unit"] == "series" and cases["instances"] == card["images"] == len(m)
    assert cases["cases"] == m["case_id"].nunique() == sum(cases["by_split"].values())
    assert cases["quarantined_cases"] == sum(1 for d in DEFECTS.values() if d == "quarantine")
    assert any("resampled" in note for note in cases["notes"])
    assert sum(cases["ordering"].values()) == cases["cases"]


def test_no_planted_phi_in_any_output(ct_source, ct_cohort):
    planted = json.loads((ct_source.parent / "phi_planted.json").read_text())
    text = (
        "".join(p.read_text(errors="ignore") for p in ct_cohort.glob("*.json"))
        + (ct_cohort / "quarantine.csv").read_text()
    )
    text += pd.read_parquet(ct_cohort / "manifest.parquet").to_csv()
    for values in planted.values():
        for v in values:
            assert v not in text


def test_a_slice_that_cannot_be_decoded_takes_its_whole_case(ct_source, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    spec = yaml.safe_load(ct_source.read_text())
    spec["labels"]["csv"] = str(ct_source.parent / "labels.csv")
    images = tmp_path / "images"
    shutil.copytree(ct_source.parent / "images", images)
    spec["images"] = str(images)
    truth = pd.read_csv(ct_source.parent / "slices_truth.csv", keep_default_na=False)
    victim = truth[truth["defect"] == ""].iloc[3]
    path = images / victim["relpath"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 60])  # the header is intact; the pixel data end early
    (src / "cohort.yaml").write_text(yaml.safe_dump(spec))
    card = build_cohort(src / "cohort.yaml", tmp_path / "out")
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    series = victim["relpath"].rsplit("/", 1)[0]
    mates = set(truth.loc[truth["relpath"].str.startswith(series + "/"), "relpath"])
    assert mates <= set(q["relpath"]), "the whole series left the cohort, not just the broken slice"
    kept = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert not kept["relpath"].str.startswith(series + "/").any()
    assert "could not be decoded" in " ".join(q.loc[q["stage"] == "case", "reason"])
    assert card.cases is not None
    assert card.cases.quarantined_cases == sum(1 for d in DEFECTS.values() if d == "quarantine") + 1


def test_a_second_copy_of_a_slice_is_a_duplicate_not_a_doubled_slice(ct_source, tmp_path):
    """Cases are formed after one copy per SOP instance is kept: a slice copied into a second folder of the
    series is quarantined as a duplicate, and its series stays whole (not refused for 'duplicate slice positions')."""
    spec = yaml.safe_load(ct_source.read_text())
    spec["labels"]["csv"] = str(ct_source.parent / "labels.csv")
    images = tmp_path / "images"
    shutil.copytree(ct_source.parent / "images", images)
    spec["images"] = str(images)
    truth = pd.read_csv(ct_source.parent / "slices_truth.csv", keep_default_na=False)
    victim = truth[truth["defect"] == ""].iloc[2]
    series = victim["relpath"].rsplit("/", 1)[0]
    copy = f"{series}/zz-copy.dcm"
    shutil.copyfile(images / victim["relpath"], images / copy)
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(spec))
    card = build_cohort(tmp_path / "cohort.yaml", tmp_path / "out")
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert q.loc[q["relpath"] == copy, "reason"].str.contains("duplicate SOP Instance UID").all()
    assert (q["relpath"] == copy).sum() == 1
    kept = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    mates = set(truth.loc[truth["relpath"].str.startswith(series + "/"), "relpath"])
    assert mates <= set(kept["relpath"]), "the series is kept whole, with one copy of the copied slice"
    assert card.cases is not None
    assert card.cases.quarantined_cases == sum(1 for d in DEFECTS.values() if d == "quarantine")


def test_patient_cases_over_several_views(tmp_path):
    spec = synthesize(tmp_path / "src", "cxr", patients=40, seed=2, size=16)
    text = spec.read_text() + "unit: patient\n"
    spec.write_text(text)
    build_cohort(spec, tmp_path / "out")
    cohort = open_cohort(tmp_path / "out")
    m = cohort.manifest
    assert m.groupby("case_id")["patient_id"].nunique().max() == 1
    assert m.groupby("patient_id")["case_id"].nunique().max() == 1
    assert m.groupby("case_id").size().max() >= 2  # patients with several views are one bag
    bags = BagDataset(cohort, cohort.rows("train"))
    item = bags[0]
    assert item["image"].shape[0] == bags.rows["n_instances"].iloc[0]
    assert len(CaseIndex.from_rows(cohort.rows("train"))) == len(bags)


def test_check_refuses_a_single_image_head_on_a_series_cohort(tmp_path):
    recipe = yaml.safe_load((Path(__file__).resolve().parent.parent / "pipelines" / "series-mil.yaml").read_text())
    recipe["stages"]["mean"]["config"] = {**recipe["stages"]["attention"]["config"], "head": {"name": "linear"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(ConfigError, match=r"stages.mean: cohort 'cohort' is series-level .* head 'linear'"):
        load_pipeline(path)


def test_check_reads_the_unit_from_a_cohort_stages_overrides(tmp_path):
    """A patient-level cohort made from an image-level source by ``overrides: {unit: patient}``: the check knows."""
    recipe = {
        "name": "p",
        "stages": {
            "cohort": {"kind": "cohort", "synth": {"kind": "cxr", "patients": 20}, "overrides": {"unit": "patient"}},
            "probe": {
                "kind": "finetune",
                "cohort": "cohort",
                "config": {"backbone": {"name": "resnet-tiny", "weights": "none"}, "head": {"name": "hod"}},
            },
        },
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(ConfigError, match=r"stages.probe: cohort 'cohort' is patient-level .* head 'hod'"):
        load_pipeline(path)
    recipe["stages"]["probe"]["config"]["head"] = {"name": "mil", "options": {"pooling": "mean"}}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    load_pipeline(path)


class _BagShapes(Callback):
    """Records how many instances each training and validation bag batch holds."""

    def __init__(self) -> None:
        self.train: list[int] = []
        self.val: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(int(batch["mask"].sum(1).max()))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val += [(int(n), len(ids)) for n, ids in zip(batch["mask"].sum(1), batch["case_id"])]


@pytest.mark.slow
def test_full_fine_tuning_reads_at_most_the_cap_per_training_bag_and_every_slice_to_validate(ct_cohort, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {
        "data": {"cohort_dir": str(ct_cohort), "batch_size": 4, "max_instances": 3, "num_workers": 0},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "mode": "full",
        "head": {"name": "mil", "options": {"pooling": "attention", "attention_dim": 8}},
        "optim": {"name": "adamw", "lr": 0.001, "epochs": 1, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp_path / "run"),
        "resume": "never",
        "tracking": {"tracking_uri": uri, "experiment": "bag-full"},
    }
    shapes = _BagShapes()
    result = finetune(parse_config(raw, FinetuneConfig), callbacks=[shapes])
    assert shapes.train and max(shapes.train) == 3  # a 10-slice series never costs more than the cap
    sizes = open_cohort(ct_cohort).manifest.groupby("case_id").size()
    assert shapes.val and max(n for n, _ in shapes.val) == sizes[open_cohort(ct_cohort).rows("val")["case_id"]].max()
    assert np.isfinite(result.metrics["train/loss"])
