"""Greedy ensemble selection with replacement picks the right members; kNN ranking equals brute force LOO 1-NN."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from medvision.evaluation.calibration import nll
from medvision.evaluation.ensemble import greedy_ensemble, knn_rank_backbones


def test_greedy_selection_repeats_a_member_when_best():
    y = np.zeros(10, dtype=int)
    a = np.array([[0.99, 0.01]] * 9 + [[0.02, 0.98]])  # sharp, one confident mistake
    b = np.full((10, 2), [0.7, 0.3])  # cautious
    c = np.full((10, 2), 0.5)  # useless
    sel = greedy_ensemble({"c": c, "b": b, "a": a}, y)
    # singles: a 0.400, b -log .7 = 0.357, c log 2 -> b; then b+a (0.254) beats b+b / b+c;
    # then weight 2/3 on a (0.2415) beats 1/3 (0.279); weight 3/4 on a (0.2436) is worse -> stop at 3
    assert sel.members == ["b", "a", "a"]
    assert np.all(np.diff(sel.history) < 0)
    assert sel.history[-1] == pytest.approx(nll(y, (2 * a + b) / 3))
    assert sel.weights.to_dict() == pytest.approx({"b": 1 / 3, "a": 2 / 3})
    np.testing.assert_allclose(sel.predict_proba({"a": a, "b": b}), (2 * a + b) / 3)


def test_greedy_respects_max_size():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    runs = {f"r{i}": np.eye(3)[y] * 0.2 + rng.dirichlet(np.ones(3), 200) * 0.8 for i in range(8)}
    sel = greedy_ensemble(runs, y, max_size=3)
    assert len(sel.members) == 3
    assert len(greedy_ensemble(runs, y).members) == 5  # default size limit; every step still improves here
    with pytest.raises(ValueError, match="shape"):
        greedy_ensemble({"a": np.full((4, 2), 0.5), "b": np.full((4, 3), 1 / 3)}, [0, 1, 0, 1])


def test_knn_rank_equals_brute_force_leave_one_out():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    good = rng.normal(size=(150, 16)) + 3.0 * np.eye(16)[labels]  # class signal
    noise = rng.normal(size=(150, 32))  # none
    ranked = knn_rank_backbones({"noise": noise, "good": good}, labels, chunk_size=40)
    assert list(ranked.index) == ["good", "noise"] and list(ranked["rank"]) == [1, 2]
    for name, feats in {"good": good, "noise": noise}.items():
        d = cdist(feats, feats, metric="cosine")
        np.fill_diagonal(d, np.inf)
        expected = np.mean(labels[d.argmin(axis=1)] == labels)
        assert ranked.loc[name, "loo_1nn_accuracy"] == pytest.approx(expected)
