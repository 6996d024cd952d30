"""Preprocessing and the on-disk cache: geometry, storage types, keys that never go stale."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medvision.cohort.cache import PreprocessCache, entry_key
from medvision.cohort.preprocess import preprocess
from medvision.cohort.pseudonym import Pseudonymizer, resolve_key
from medvision.cohort.spec import PreprocessSpec


def test_preprocess_shapes_channels_and_dtype():
    rng = np.random.default_rng(0)
    gray = rng.random((1, 40, 60), dtype=np.float32)
    rgb = rng.random((3, 50, 30), dtype=np.float32)
    out = preprocess(gray, PreprocessSpec(size=32, channels=3))
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    out = preprocess(rgb, PreprocessSpec(size=16, channels=1, dtype="float16"))
    assert out.shape == (1, 16, 16) and out.dtype == np.float16
    # luminance of a pure-green image is the BT.601 green weight
    green = np.zeros((3, 8, 8), np.float32)
    green[1] = 1.0
    assert np.allclose(preprocess(green, PreprocessSpec(size=8, channels=1, dtype="float16")), 0.587, atol=1e-3)


def test_preprocess_pad_keeps_aspect_ratio():
    img = np.ones((1, 20, 40), np.float32)  # wide white image
    out = preprocess(img, PreprocessSpec(size=40, channels=1, fit="pad"))
    assert out.shape == (1, 40, 40)
    assert (out[0, :10] == 0).all() and (out[0, 30:] == 0).all() and (out[0, 10:30] == 255).all()


def test_cache_round_trip_and_reopen(tmp_path):
    params = PreprocessSpec(size=8, channels=1)
    cache = PreprocessCache(tmp_path, params)
    arrays = {f"k{i}": np.full((1, 8, 8), i, np.uint8) for i in range(5)}
    assert cache.append(arrays.items()) == 5
    assert cache.append([("k0", arrays["k0"])]) == 0  # existing keys are not written twice
    assert cache.append([("k9", np.full((1, 8, 8), 9, np.uint8))]) == 1  # a second shard
    reopened = PreprocessCache(tmp_path, params)
    assert len(reopened) == 6
    for k, a in arrays.items():
        assert np.array_equal(reopened.get(k), a)
    assert reopened.get("k9")[0, 0, 0] == 9
    assert np.allclose(reopened.to_float(reopened.get("k4")), 4 / 255)
    with pytest.raises(KeyError, match="rebuild"):
        reopened.get("nope")


def test_changed_recipe_or_content_never_hits_a_stale_entry(tmp_path):
    a, b = PreprocessSpec(size=8), PreprocessSpec(size=16)
    assert entry_key("abc", 0, a) != entry_key("abc", 0, b)
    assert entry_key("abc", 0, a) != entry_key("abd", 0, a)
    assert entry_key("abc", 0, a) != entry_key("abc", 1, a)
    PreprocessCache(tmp_path, a).append([(entry_key("abc", 0, a), np.zeros((3, 8, 8), np.uint8))])
    other = PreprocessCache(tmp_path, b)
    assert len(other) == 0 and entry_key("abc", 0, a) not in other


def test_pseudonyms_are_keyed_stable_and_unlinkable(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDVISION_PSEUDONYM_KEY", raising=False)
    key_file = tmp_path / "keys" / "k.key"
    key1, where = resolve_key(key_file, tmp_path / "out")
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600 and where == str(key_file)
    key2, _ = resolve_key(key_file, tmp_path / "out")
    assert key1 == key2  # generated once, then reused
    p1, p2 = Pseudonymizer(key1), Pseudonymizer(b"another-key-0123456789")
    assert p1("patient", "MRN123") == p1("patient", "MRN123")
    assert p1("patient", "MRN123") != p2("patient", "MRN123")
    assert p1("patient", "MRN123") != p1("study", "MRN123")
    assert "MRN123" not in p1("patient", "MRN123")
    with pytest.raises(ValueError, match="inside the output folder"):
        resolve_key(tmp_path / "out" / "k.key", tmp_path / "out")
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "zz")
    with pytest.raises(ValueError, match="hex"):
        resolve_key(None, tmp_path / "out")


def test_cache_appends_many_shards_and_names_them_when_the_index_is_saved(tmp_path):
    # A build appends shard after shard and writes the index once: until then a reader sees only what was
    # saved (never a shard it cannot find), afterwards every shard.
    params = PreprocessSpec(size=8, channels=1)
    cache = PreprocessCache(tmp_path, params)
    for shard in range(3):
        items = [(f"s{shard}-{i}", np.full((1, 8, 8), shard * 10 + i, np.uint8)) for i in range(2)]
        assert cache.append(items, save_index=False) == 2
    assert cache.get("s2-1")[0, 0, 0] == 21  # readable in the writing process at once
    assert len(PreprocessCache(tmp_path, params)) == 0  # nothing named on disk yet
    cache.save_index()
    reopened = PreprocessCache(tmp_path, params)
    assert len(reopened) == 6 and reopened.get("s1-0")[0, 0, 0] == 10
    assert reopened.append([("new", np.zeros((1, 8, 8), np.uint8))]) == 1  # the next shard number follows on
    assert sorted(p.name for p in cache.dir.glob("shard-*.npy")) == [f"shard-0000{i}.npy" for i in range(4)]


def test_two_writers_of_one_cache_lose_no_entry_and_never_share_a_shard(tmp_path):
    # Two builds (or a build and a rebuild) write one recipe folder: each opened it before the other wrote. The
    # second writer must neither take the first one's shard number (overwriting its images) nor drop its index.
    params = PreprocessSpec(size=8, channels=1)
    a, b = PreprocessCache(tmp_path, params), PreprocessCache(tmp_path, params)
    assert a.append([("a1", np.full((1, 8, 8), 1, np.uint8))], save_index=False) == 1
    assert b.append([("b1", np.full((1, 8, 8), 2, np.uint8)), ("a1", np.full((1, 8, 8), 1, np.uint8))]) == 2
    a.save_index()  # after b saved its own: a's index write must keep b's entries
    reopened = PreprocessCache(tmp_path, params)
    assert len(reopened) == 2 and reopened.get("a1")[0, 0, 0] == 1 and reopened.get("b1")[0, 0, 0] == 2
    assert sorted(p.name for p in a.dir.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    assert a.remove_temporaries() == 0 and sorted(p.name for p in a.dir.iterdir() if p.name.startswith(".")) == [
        ".lock"
    ]


def test_private_files_are_owner_only_whatever_the_umask_and_create_only_never_replaces(tmp_path):
    from medvision._atomic import atomic_write_text, private_dir

    old = os.umask(0o022)  # the default that left pulled DICOM and cohorts readable by every local account
    try:
        target = atomic_write_text(tmp_path / "new" / "deep" / "card.json", "{}", private=True)
        cache = PreprocessCache(tmp_path / "cache", PreprocessSpec(size=8, channels=1))
        cache.append([("k", np.zeros((1, 8, 8), np.uint8))])
        open_folder = tmp_path / "shared"
        open_folder.mkdir(mode=0o755)
        private_dir(open_folder)
    finally:
        os.umask(old)
    assert _mode(target) == 0o600 and _mode(target.parent) == _mode(tmp_path / "new") == 0o700
    assert {_mode(p) for p in cache.dir.iterdir()} == {0o600} and _mode(cache.dir) == _mode(cache.dir.parent) == 0o700
    assert _mode(open_folder) == 0o700  # an existing folder is tightened
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "replaced", replace=False)
    assert target.read_text() == "{}" and [p.name for p in target.parent.iterdir()] == ["card.json"]


def _mode(path) -> int:
    return path.stat().st_mode & 0o777
