"""The offline device kit (``make device-kit``) installs with no index into an environment that holds PyTorch only,
and both GPU-side benchmarks run there (README: "On a lent GPU machine").

Nothing here uses the network: ``scripts/device_kit.py`` packs its wheels from this environment's installed
distributions and builds medvision's own wheel from the working tree. The fresh environment sees nothing of this
one but PyTorch: a folder of links to exactly the files of torch, torchvision and what they require, named by a
``.pth`` file, stands in for the lent machine's PyTorch install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("device_kit", ROOT / "scripts" / "device_kit.py")
device_kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_kit)


def _clean_env(**extra: str) -> dict[str, str]:
    """No index, no find-links but the kit's, no PYTHONPATH leading back to this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "OMP_NUM_THREADS": "1", **extra}


def _torch_only(site: Path) -> None:
    """``site``: links to the top-level files of torch, torchvision and their requirements, nothing else."""
    site.mkdir()
    for dist in device_kit.closure(device_kit.PROVIDED).values():
        base = Path(str(dist._path)).parent  # type: ignore[attr-defined]
        for top in {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}:
            wanted = top != "__pycache__" and not top.endswith(".pth") and (base / top).exists()
            if wanted and not (site / top).exists():
                (site / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def kit_python(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("device-kit")
    kit = tmp / "kit"
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "device_kit.py"), "--out", str(kit)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    size = sum(p.stat().st_size for p in kit.iterdir())
    assert size <= device_kit.MAX_MIB * 2**20 and f"{size / 2**20:.1f} MiB" in built.stdout
    wheels = {p.name.split("-")[0].lower() for p in kit.glob("*.whl")}
    assert "medvision" in wheels and not wheels & {"torch", "torchvision", "numpy", "pillow", "mlflow"}

    venv.EnvBuilder(with_pip=False).create(tmp / "env")
    python = tmp / "env" / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    _torch_only(tmp / "torch-site")
    (site / "torch-only.pth").write_text(f"{tmp / 'torch-site'}\n")
    # The README's command, run by this environment's pip on behalf of the fresh one (which has no pip of its own).
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps"]
        + ["--find-links", str(kit), "-r", str(kit / "requirements.txt")],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def _run(python: Path, cwd: Path, *args: str) -> dict:
    proc = subprocess.run([str(python), *args], capture_output=True, text=True, env=_clean_env(), cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_fresh_environment_has_pytorch_and_the_kit_only(kit_python, tmp_path):
    probe = (
        "import importlib.util, json, medvision, torch\n"
        "print(json.dumps({'medvision': medvision.__file__, 'torch': torch.__file__,"
        " 'absent': [m for m in ('cv2', 'sklearn', 'scipy', 'pyarrow', 'albumentations', 'matplotlib')"
        " if importlib.util.find_spec(m) is None]}))"
    )
    out = _run(kit_python, tmp_path, "-c", probe)
    assert str(kit_python.parents[1]) in out["medvision"]  # the kit's wheel, not this checkout
    assert out["absent"] == ["cv2", "sklearn", "scipy", "pyarrow", "albumentations", "matplotlib"]


def test_gpu_throughput_runs_from_the_kit(kit_python, tmp_path):
    out = _run(
        kit_python,
        tmp_path,
        str(ROOT / "benchmarks" / "gpu_throughput.py"),
        *("--models", "resnet-tiny", "--size", "32", "--batch", "4", "--steps", "2", "--warmup-steps", "1"),
        *("--rounds", "2", "--warmup-rounds", "1", "--accelerator", "cpu"),
    )
    assert out["benchmark"] == "gpu_throughput" and out["cuda"] is False
    (model,) = out["models"]
    assert model["model"] == "resnet-tiny" and model["medvision_images_per_s"] > 0 and model["bare_images_per_s"] > 0


def _recipe_store(folder: Path) -> str:
    """A tracking store with one ``auto`` run (its decision document) and one fixed-recipe run, as a pipeline
    leaves them; written by this environment's MLflow, read by the kit's."""
    from mlflow import MlflowClient

    from medvision.recipes.selection import DECISION_RULE, compare_candidates
    from medvision.training.recipe import DECISION_ARTIFACT, CohortFingerprint, RecipeDecision

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kit-smoke", artifact_location=(folder / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    y, patients = np.repeat(rng.integers(0, 2, 20), 2), np.repeat(np.arange(20), 2)

    def probs(noise: float) -> np.ndarray:
        p = 1 / (1 + np.exp(-((2 * y - 1) + rng.normal(size=len(y)) * noise)))
        return np.c_[1 - p, p]

    winner, scores = compare_candidates(y, patients, {"linear-probe": probs(1.0), "lp-ft": probs(0.5)}, n_resamples=50)
    per_class = {"a": 10, "b": 10}
    fp = CohortFingerprint(
        label_fraction=0.1,
        classes=["a", "b"],
        images_per_class={"a": 20, "b": 20},
        patients_per_class=per_class,
        labelled_images=40,
        labelled_patients=20,
        image_size=32,
        channels=3,
        class_balance=1.0,
    )
    decision = RecipeDecision(
        fingerprint=fp,
        candidates_rule="test",
        decision_rule=DECISION_RULE,
        candidates=scores,
        winner=winner,
        winner_run_id=None,
        val_images=len(y),
        val_patients=20,
        n_resamples=50,
        confidence=0.95,
    )
    for recipe in ("auto", "linear-probe"):
        run = client.create_run(exp, tags={"medvision.recipe": recipe}).info.run_id
        for key, value in {"data.label_fraction": "0.1", "seed": "0", "recipe": recipe}.items():
            client.log_param(run, key, value)
        if recipe == "auto":
            client.log_text(run, decision.to_json(), DECISION_ARTIFACT)
        else:
            client.log_metric(run, "probe/C", 0.1)
            client.log_metric(run, "best/val/auroc", 0.8)
        client.set_terminated(run)
    return uri


def test_the_recipe_benchmark_runs_from_the_kit(kit_python, tmp_path):
    uri = _recipe_store(tmp_path)
    out = _run(kit_python, tmp_path, str(ROOT / "benchmarks" / "recipe_choices.py"), uri, "--experiment", "kit-smoke")
    (choice,) = out["auto"]
    assert choice["label_fraction"] == 0.1 and [c["recipe"] for c in choice["candidates"]] == ["linear-probe", "lp-ft"]
    assert choice["winner"] in ("linear-probe", "lp-ft")
    (fixed,) = out["fixed"]
    assert fixed["recipe"] == "linear-probe" and fixed["C"] == 0.1 and fixed["val_auroc"] == 0.8
