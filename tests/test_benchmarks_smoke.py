"""The speed and scale benchmarks run end to end at toy sizes, and their shared timing loop does what it says.

Speed itself is never asserted here (that is what benchmarks/RESULTS.md records); these tests make sure the
scripts a user runs on a GPU node or a big archive still work, and that their JSON last line has its fields.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _timing():
    spec = importlib.util.spec_from_file_location("_timing", BENCHMARKS / "_timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script: str, *args: str, timeout: int = 240) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_timing_loop_warms_every_side_then_alternates_who_goes_first():
    timing = _timing()
    calls: list[str] = []

    def side(name: str, rate: float):
        def run() -> float:
            calls.append(name)
            return rate + len(calls)  # a rate that drifts, as on a loaded machine

        return run

    rates = timing.alternate({"a": side("a", 100.0), "b": side("b", 50.0)}, rounds=5, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert rates["a"] == [103.0, 106.0, 107.0, 110.0, 111.0]  # the warm-up rounds (calls 1 and 2) are not kept
    s = timing.spread(rates["a"])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"]) == (107.0, 103.0, 111.0, 106.0, 110.0)
    assert timing.paired_ratios([2.0, 3.0], [1.0, 4.0]) == [2.0, 0.75]
    with pytest.raises(ValueError, match="rounds"):
        timing.alternate({"a": side("a", 1.0)}, rounds=0)


@pytest.mark.slow
def test_gpu_throughput_runs_on_cpu_with_a_tiny_model():
    out = _run(
        "gpu_throughput.py",
        "--models",
        "resnet-tiny",
        "--size",
        "32",
        "--batch",
        "4",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--rounds",
        "2",
        "--warmup-rounds",
        "1",
        "--accelerator",
        "cpu",
    )
    assert out["benchmark"] == "gpu_throughput" and out["cuda"] is False and out["precision"] == "bf16-mixed"
    (model,) = out["models"]
    assert model["model"] == "resnet-tiny" and model["flops_per_image"] > 0
    for side in ("medvision", "bare"):
        assert model[f"{side}_images_per_s"] > 0 and 0 < model[f"mfu_{side}"] < 1
        spread = model[f"{side}_spread"]
        assert spread["min"] <= spread["median"] <= spread["max"]
    assert out["ratio"] == model["ratio"] > 0 and out["targets"] == {"ratio": 0.95, "vit_b16_mfu": 0.45}


@pytest.mark.slow
def test_cohort_scale_builds_two_sizes_and_reports_rate_and_memory(tmp_path):
    out = _run("cohort_scale.py", "--sizes", "40,90", "--reports", "0.1", "--workdir", str(tmp_path))
    small, large = out["sizes"]
    assert small["files"] < large["files"] and small["images"] < small["files"]  # the reports were quarantined
    for size in (small, large):
        assert size["files_per_s"] > 0 and size["files_per_cpu_s"] > 0 and size["peak_rss_mb"] > 0
        assert 0 < size["peak_pss_mb"] <= size["peak_rss_mb"]
    assert out["ratio"] == pytest.approx(large["files_per_s"] / small["files_per_s"], rel=0.05)  # rates are rounded
    assert {"cpu_ratio", "peak_rss_mb_at_largest", "targets", "meets_targets"} <= set(out)
    assert list(tmp_path.iterdir()) == []  # the synthetic cohorts were deleted


@pytest.mark.slow
def test_embed_benchmark_compares_the_feature_cache_with_a_bare_forward():
    out = _run(
        "embed.py",
        "--backbone",
        "resnet-tiny",
        "--weights",
        "none",
        "--size",
        "32",
        "--patients",
        "24",
        "--rounds",
        "2",
    )
    assert out["benchmark"] == "embed" and out["images"] > 0 and out["rounds"] == 2
    for side in ("feature_cache_images_per_s", "bare_images_per_s"):
        assert 0 < out[side]["min"] <= out[side]["median"] <= out[side]["max"]
    assert out["ratio"] == pytest.approx(
        out["feature_cache_images_per_s"]["median"] / out["bare_images_per_s"]["median"], rel=1e-3
    )
    assert out["max_embedding_diff"] < 1e-5  # the cache stores the bare forward's numbers
    assert out["target"] == 0.9 and isinstance(out["meets_target"], bool)


def _run_failing(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_ingest_gives_both_sides_the_same_workers_and_reports_per_core_rates():
    # 50 patients: about 70 files, past the size below which either side stays in one process
    out = _run("ingest.py", "--patients", "50", "--size", "32", "--cache-size", "16", "--rounds", "1", "--workers", "2")
    serial, parallel = out["settings"]
    assert (serial["workers"], parallel["workers"]) == (1, 2)
    for s in (serial, parallel):
        assert s["index_files_per_s"] > 0 and s["plain_header_files_per_s"] > 0 and s["monai_images_per_s"] > 0
        assert s["index_files_per_s_per_core"] == pytest.approx(s["index_files_per_s"] / s["workers"], abs=0.1)
        assert s["decode_images_per_s_per_core"] == pytest.approx(s["decode_images_per_s"] / s["workers"], abs=0.1)
    assert out["files"] >= 64 and out["decode_ratio_vs_monai"] == serial["decode_ratio_vs_monai"]  # serial headline
    assert set(out["meets_targets"]) == {"workers=1", "workers=2"}


def test_bootstrap_times_a_plain_numpy_sklearn_loop_beside_fairlearn_and_agrees_with_both():
    out = _run("bootstrap.py", "--images", "400", "--groups", "2", "--resamples", "20", "--baseline-resamples", "5",
               "--rounds", "1")  # fmt: skip
    assert out["plain_loop_s"] > 0 and out["speedup_vs_plain"] > 0 and out["speedup_vs_fairlearn"] > 0
    assert out["fairlearn_resamples_timed"] == 5 and out["fairlearn_extrapolated"] is True
    assert set(out["max_diff"]) == {"fairlearn point", "plain point", "fairlearn replicates", "plain replicates"}
    assert max(out["max_diff"].values()) <= 1e-12


def test_quarantine_scrub_times_the_old_loop_against_the_scrubber_and_both_redact():
    out = _run("quarantine_scrub.py", "--sizes", "100,300", "--rounds", "1")
    small, large = out["sizes"]
    assert small["identifiers"] < large["identifiers"] and small["messages"] < large["messages"]
    for size in (small, large):
        assert size["current_s"] > 0 and size["previous_s"] > 0 and size["previous_extrapolated"] is False
    capped = _run("quarantine_scrub.py", "--sizes", "300", "--rounds", "1", "--baseline-messages", "2")
    assert capped["sizes"][0]["previous_messages_timed"] == 2 and capped["sizes"][0]["previous_extrapolated"] is True


def _evaluation(
    folder: Path,
    models: dict[str, np.ndarray],
    names: dict[str, str] | None = None,
    meta: dict[str, dict] | None = None,
) -> Path:
    """A minimal evaluation folder: a valid metrics.json naming the models, each with its test predictions (``meta``
    overrides a model's entry: its stage, seed, label fraction, name)."""
    n = 60
    y = np.arange(n) % 2
    entries = []
    for i, (stage, probs) in enumerate(models.items()):
        entry = {"name": (names or {}).get(stage, f"{stage}-1.0"), "run_id": f"run{i}", "stage": stage,
                 "label_fraction": 1.0, "classes": ["neg", "pos"], "positive_class": "pos", "temperature": 1.0,
                 "sets": {}, **(meta or {}).get(stage, {})}  # fmt: skip
        name = entry["name"]
        entries.append(entry)
        (folder / "predictions" / name).mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)]})
        frame["label_idx"] = y
        frame["p:neg"], frame["p:pos"] = 1 - probs, probs
        frame.to_parquet(folder / "predictions" / name / "test.parquet")
    doc = {
        "schema_version": 2,
        "code_version": {"package": "0", "commit": None, "dirty": None, "label": "test", "key": "k"},
        "cohort": {"name": "c", "manifest_sha256": "0" * 64, "classes": ["neg", "pos"], "dir": "."},
        "settings": {"sets": ["test"], "subgroups": [], "bootstrap": 10, "min_patients": 1, "referral_rate": 0.1,
                     "seed": 0, "outlier_sets": [], "costs": {}, "risk": {}},
        "primary_model": None,
        "models": entries,
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(doc))
    return folder


def _scores(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.arange(60) % 2
    return 1 / (1 + np.exp(-(y + rng.normal(size=60))))


def test_paired_differences_compares_two_different_models(tmp_path):
    folder = _evaluation(tmp_path, {"imagenet": _scores(1), "random": _scores(2)})
    out = _run("paired_differences.py", str(folder), "--compare", "imagenet", "random")
    (row,) = out["compare"]
    assert row["diff"] == pytest.approx(row["first_auroc"] - row["second_auroc"]) and row["diff"] != 0


def test_paired_differences_pairs_seeds_and_holds_a_candidate_to_the_best_fixed_recipe(tmp_path):
    # the recipe study: auto and each fixed recipe at two label fractions x two seeds
    models, meta = {}, {}
    for offset, stage in enumerate(("auto", "linear_probe", "finetune")):
        for fraction in (0.5, 1.0):
            for seed in (0, 1):
                key = f"{stage}-{fraction}-{seed}"
                models[key] = _scores(10 * offset + 3 * seed + int(fraction * 2))
                meta[key] = {"stage": stage, "seed": seed, "label_fraction": fraction, "name": key}
    _evaluation(tmp_path, models, meta=meta)
    out = _run("paired_differences.py", str(tmp_path), "--compare", "auto", "finetune",
               "--best-of", "auto", "linear_probe", "finetune")  # fmt: skip
    rows = out["compare"]
    assert [(r["label_fraction"], r["seed"]) for r in rows] == [
        (0.5, 0), (0.5, 1), (0.5, "mean"), (1.0, 0), (1.0, 1), (1.0, "mean")
    ]  # fmt: skip
    assert rows[0]["first"] == "auto-0.5-0" and rows[0]["second"] == "finetune-0.5-0"  # paired by seed
    for mean, per_seed in ((rows[2], rows[:2]), (rows[5], rows[3:5])):
        assert mean["diff"] == pytest.approx(np.mean([r["diff"] for r in per_seed]))
        assert mean["low"] <= mean["diff"] <= mean["high"]
    low, high = out["best_of"]
    for entry in (low, high):
        means = entry["fixed_means"]
        assert set(means) == {"linear_probe", "finetune"} and entry["best_fixed"] == max(means, key=means.get)
    assert "vs_linear_probe" in low and "vs_linear_probe" not in high  # only the lowest fraction is held to it


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("same stage", "are the same run"),
        ("identical predictions", "made identical test predictions"),
        ("identical files", "made identical test predictions"),
        ("one name for two models", "model name(s) appear more than once (finetune-1.0)"),
    ],
)
def test_paired_differences_refuses_to_compare_a_model_with_itself(tmp_path, case, expected):
    # the study's probe: two starts of one recipe evaluated together, named alike, so one's predictions overwrote
    # the other's and the script printed +0.000 without a warning
    same = _scores(1)
    if case == "same stage":
        _evaluation(tmp_path, {"imagenet": same, "random": _scores(2)})
        compare = ("imagenet", "imagenet")
    elif case == "identical predictions":
        _evaluation(tmp_path, {"imagenet": same, "random": same.copy()})
        path = tmp_path / "predictions" / "random-1.0" / "test.parquet"
        pd.read_parquet(path).to_parquet(path, compression="gzip")  # other bytes, the same predictions
        compare = ("imagenet", "random")
    elif case == "identical files":
        _evaluation(tmp_path, {"imagenet": same, "random": same.copy()})
        compare = ("imagenet", "random")
    else:
        _evaluation(tmp_path, {"imagenet": same, "random": _scores(2)}, names={"imagenet": "finetune-1.0",
                                                                             "random": "finetune-1.0"})  # fmt: skip
        compare = ("imagenet", "random")
    proc = _run_failing("paired_differences.py", str(tmp_path), "--compare", *compare)
    assert proc.returncode == 1, proc.stdout
    assert expected in proc.stderr
    assert "by construction" in proc.stderr or "nothing to compare" in proc.stderr or "overwrote" in proc.stderr
    assert "difference (95% CI)" not in proc.stdout  # no table was printed


@pytest.mark.slow
def test_mil_cost_embeds_one_series_both_ways_and_states_the_memory_per_cap():
    out = _run(
        "mil_cost.py",
        *("--backbone", "resnet-tiny", "--weights", "none", "--size", "16", "--slices", "24"),
        *("--batch", "8", "--rounds", "1", "--caps", "4,8"),
    )
    assert out["benchmark"] == "mil_cost" and out["slices"] == 24 and out["target"] == 0.9
    assert out["bare_slices_per_s"]["median"] > 0 and out["cache_slices_per_s"]["median"] > 0 and out["ratio"] > 0
    full = [m for m in out["memory"] if m["mode"] == "full"]
    assert [m["instances"] for m in full] == [4, 8, 24]
    saved = [m["saved_mb"] for m in full]
    assert saved[0] < saved[1] < saved[2], "a training bag's activations grow with the cap, not the series"
    (frozen,) = [m for m in out["memory"] if m["mode"] == "frozen"]
    assert frozen["saved_mb"] < saved[0]


@pytest.mark.slow
def test_predict_benchmark_times_medvision_predict_beside_a_bare_decode_and_forward_loop():
    out = _run(
        "predict.py", "--backbone", "resnet-tiny", "--patients", "6", "--size", "32", "--source-size", "48",
        "--rounds", "1", "--workers", "1",
    )  # fmt: skip
    assert out["benchmark"] == "predict" and out["files"] >= 6 and (out["size"], out["workers"]) == (32, 1)
    ours, bare = out["medvision_images_per_s"]["median"], out["bare_images_per_s"]["median"]
    assert ours > 0 and bare > 0
    assert out["ratio"] == pytest.approx(ours / bare, rel=1e-2) and out["meets_target"] == (out["ratio"] >= 0.9)
