"""The frozen-feature cache: reused when nothing changed, recomputed when weights, images or preprocessing change,
and a linear head trained from it is the head the end-to-end loop trains."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from medvision.cohort.cache import PreprocessCache, entry_key
from medvision.cohort.cohort import open_cohort
from medvision.cohort.preprocess import preprocess
from medvision.config import parse_config
from medvision.engine.features import FeatureCache, weights_digest
from medvision.models import create_backbone
from medvision.training import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def cohort(synth_cxr_cohort):
    return open_cohort(synth_cxr_cohort)


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("resnet-tiny", weights="none", in_chans=1).eval()


def _keys(cohort, n: int = 40) -> list[str]:
    return cohort.manifest["cache_key"].head(n).tolist()


def test_features_are_reused_when_nothing_changed(cohort, tmp_path):
    keys = _keys(cohort)
    first = FeatureCache(tmp_path, _backbone())
    a = first.features(cohort.cache, keys)
    assert first.computed == len(keys) and a.shape == (len(keys), _backbone().num_features)
    again = FeatureCache(tmp_path, _backbone())  # a new process: same weights rebuilt from the same seed
    b = again.features(cohort.cache, keys)
    assert again.computed == 0
    np.testing.assert_array_equal(a, b)
    with torch.no_grad():  # and they are the backbone's embeddings of the cached images
        x = torch.from_numpy(np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in keys[:5]]))
        np.testing.assert_allclose(b[:5], _backbone()(x).numpy(), rtol=1e-5, atol=1e-6)


def test_changed_weights_miss(cohort, tmp_path):
    keys = _keys(cohort, 16)
    FeatureCache(tmp_path, _backbone()).features(cohort.cache, keys)
    other = _backbone()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3  # one weight nudged
    assert weights_digest(other) != weights_digest(_backbone())
    cache = FeatureCache(tmp_path, other)
    cache.features(cohort.cache, keys)
    assert cache.computed == len(keys)


def test_changed_image_or_preprocessing_miss(cohort, tmp_path):
    rows = cohort.manifest.head(12)
    params = cohort.cache.params
    store = FeatureCache(tmp_path / "features", _backbone())
    store.features(cohort.cache, rows["cache_key"].tolist())

    # One image file changed on disk: its content hash, hence its entry key, changes; the rest are reused.
    edited = rows.copy()
    edited.loc[edited.index[0], "content_sha256"] = "0" * 64
    keys = [entry_key(r.content_sha256, int(r.frame), params) for r in edited.itertuples()]
    assert keys[1:] == rows["cache_key"].tolist()[1:]
    recache = PreprocessCache(tmp_path / "edited", params)
    recache.append((k, np.asarray(cohort.cache.get(old))) for k, old in zip(keys, rows["cache_key"]))
    store.features(recache, keys[:1])
    assert store.computed == 1
    store.features(cohort.cache, rows["cache_key"].tolist())
    assert store.computed == 0

    # Another preprocessing recipe (size): every entry key changes, every feature is recomputed.
    smaller = params.model_copy(update={"size": params.size // 2})
    resized = PreprocessCache(tmp_path / "resized", smaller)
    new_keys = [entry_key(r.content_sha256, int(r.frame), smaller) for r in rows.itertuples()]
    resized.append(
        (k, preprocess(cohort.cache.to_float(cohort.cache.get(old)), smaller))
        for k, old in zip(new_keys, rows["cache_key"])
    )
    store.features(resized, new_keys)
    assert store.computed == len(rows)


def _linear(cohort_dir, tmp_path, name: str, feature_cache: bool) -> dict:
    return {
        "data": {"cohort_dir": str(cohort_dir), "batch_size": 16, "feature_cache": feature_cache},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "mode": "linear",
        "optim": {"name": "sgd", "lr": 0.05, "epochs": 3, "warmup_epochs": 1},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp_path / name),
        "resume": "never",
        "seed": 5,
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "features"},
    }


@pytest.mark.slow
def test_linear_head_from_cached_features_equals_the_end_to_end_one(synth_cxr_cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = shutil.copytree(synth_cxr_cohort, tmp_path / "cohort")
    monkeypatch.setenv("MEDVISION_FEATURE_CACHE", str(tmp_path / "features"))
    before = _listing(own)
    fast = finetune(parse_config(_linear(own, tmp_path, "fast", True), FinetuneConfig))
    assert _listing(own) == before  # the cohort stays read-only: the features went to the feature cache
    assert list((tmp_path / "features").glob("*/index.parquet"))
    slow = finetune(parse_config(_linear(own, tmp_path, "slow", False), FinetuneConfig))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(fast.run_id).data.params["data.feature_path"] == "True"
    assert client.get_run(slow.run_id).data.params["data.feature_path"] == "False"
    a = torch.load(fast.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(slow.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    head = [k for k in a if ".head." in k]
    assert head
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    for name in ("val/auroc", "val/loss", "train/loss"):
        assert fast.metrics[name] == pytest.approx(slow.metrics[name], rel=1e-4, abs=1e-5), name


def test_evaluation_of_a_frozen_backbone_reads_the_cache_and_predicts_the_same(synth_cxr_cohort, tmp_path, monkeypatch):
    from medvision.classifier import Classifier
    from medvision.evaluation.predict import predict_rows
    from medvision.heads import create_head

    monkeypatch.setenv("MEDVISION_FEATURE_CACHE", str(tmp_path / "features"))
    own = open_cohort(shutil.copytree(synth_cxr_cohort, tmp_path / "cohort"))
    before = _listing(own.root)
    rows = own.rows("val")
    torch.manual_seed(0)
    head = create_head("hod", 64, 3, num_outlier_classes=1)
    frozen = Classifier(_backbone(), head, ["a", "b", "c"], freeze_backbone=True)
    trainable = Classifier(_backbone(), head, ["a", "b", "c"], freeze_backbone=False)
    cached, direct = predict_rows(frozen, own, rows), predict_rows(trainable, own, rows)
    np.testing.assert_allclose(cached.probs, direct.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached.embeddings, direct.embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached.ood_score, direct.ood_score, rtol=1e-5, atol=1e-6)
    assert _listing(own.root) == before  # nothing written into the cohort
    store = FeatureCache.for_cohort(own.cache, frozen.backbone)
    assert store.dir.parent == tmp_path / "features"
    store.features(own.cache, rows["cache_key"].tolist())
    assert store.computed == 0  # the evaluation left them there for the next set, detector or re-run


def _listing(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


_EMBED = """
import sys, time
from pathlib import Path
import numpy as np, torch
from medvision.cohort.cohort import open_cohort
from medvision.engine.features import FeatureCache
from medvision.models import create_backbone

cohort_dir, root, start, stop, out, barrier, me = sys.argv[1:]
cohort = open_cohort(cohort_dir)
keys = cohort.manifest["cache_key"].tolist()[int(start):int(stop)]
torch.manual_seed(0)
store = FeatureCache(root, create_backbone("resnet-tiny", weights="none", in_chans=1).eval(), batch_size=16)
Path(barrier, me).touch()
while len(list(Path(barrier).iterdir())) < 2:  # both processes ready: start embedding together
    time.sleep(0.005)
np.save(out, store.features(cohort.cache, keys))
print(store.computed)
"""


def test_two_processes_embedding_one_cohort_at_once_get_identical_uncorrupted_features(cohort, tmp_path):
    """Two runs (a sweep's members, an evaluation beside a probe) embed overlapping sets of one cohort's images
    into one feature store at the same moment. With the old copy of the cache both took shard number 0 and one
    temporary name, and the last index written won: one process's features were read back for the other's keys,
    or entries were lost. Real processes, the real shard store, the real cohort."""
    import subprocess
    import sys

    keys = cohort.manifest["cache_key"].tolist()
    n = len(keys)
    halves = [(0, 2 * n // 3), (n // 3, n)]  # the middle third is embedded by both
    (tmp_path / "barrier").mkdir()
    script = tmp_path / "embed.py"
    script.write_text(_EMBED)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(cohort.root),
                str(tmp_path / "features"),
                str(a),
                str(b),
                str(tmp_path / f"out{i}.npy"),
                str(tmp_path / "barrier"),
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (a, b) in enumerate(halves)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    computed = [int(out.split()[-1]) for out, _ in results]
    # Both usually find the store empty; one starved past the other's whole pass finds the shared third stored.
    assert all(0 < c <= b - a for c, (a, b) in zip(computed, halves)) and sum(computed) >= n, computed
    first, second = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    np.testing.assert_array_equal(first[n // 3 :], second[: 2 * n // 3 - n // 3])  # the shared third agrees

    reader = FeatureCache(tmp_path / "features", _backbone(), batch_size=16)
    stored = reader.features(cohort.cache, keys)
    assert reader.computed == 0  # every entry of both processes was saved ...
    np.testing.assert_array_equal(stored[: 2 * n // 3], first)  # ... and reads back as its writer computed it
    np.testing.assert_array_equal(stored[n // 3 :], second)
    with torch.no_grad():  # and they are the backbone's embeddings of those images, not another image's
        x = torch.from_numpy(np.stack([cohort.cache.to_float(cohort.cache.get(k)) for k in keys]))
        np.testing.assert_allclose(stored, _backbone()(x).numpy(), rtol=1e-4, atol=1e-5)
    index = pd.read_parquet(reader.dir / "index.parquet")
    assert index["key"].is_unique and set(index["key"]) == set(keys)
    assert not [p for p in reader.dir.iterdir() if ".tmp" in p.name]
    assert oct(reader.dir.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in reader.dir.glob("*.*")} == {"0o600"}
