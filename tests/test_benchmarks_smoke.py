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
