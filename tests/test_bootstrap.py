"""Patient-level bootstrap: per-resample values equal scikit-learn on the explicit resample, intervals cover the
truth about 95% of the time under patient clustering, and an image-level bootstrap does not."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from medvision.evaluation.bootstrap import Bootstrap, register_batched_metric


def _clustered_data(rng: np.random.Generator, n_patients: int = 60):
    images = rng.integers(1, 5, n_patients)  # 1-4 images per patient
    patients = np.repeat(np.arange(n_patients) * 7 + 3, images)  # non-contiguous ids
    rng.shuffle(patients)
    n = len(patients)
    y = rng.integers(0, 2, n)
    score = np.round(y + rng.normal(size=n), 1)  # ties on purpose
    return patients, y, score


def test_resample_weights_are_patient_multiplicities():
    rng = np.random.default_rng(0)
    patients, y, score = _clustered_data(rng)
    boot = Bootstrap(patients, n_resamples=50, seed=3)
    w = boot.weights()
    for b in (0, 17, 49):
        idx = boot.resample_indices(b)
        np.testing.assert_array_equal(np.bincount(idx, minlength=len(patients)), w[b])
        # all images of a drawn patient come together
        drawn = np.unique(patients[idx])
        assert set(np.flatnonzero(np.isin(patients, drawn))) == set(idx.tolist())


def test_vectorised_auroc_and_accuracy_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(1)
    patients, y, score = _clustered_data(rng)
    boot = Bootstrap(patients, n_resamples=40, seed=0)
    reps = boot.replicates("auroc", y, score)
    acc_reps = boot.replicates("accuracy", y, score > 0.5)
    w = boot.weights()
    for b in range(40):
        assert abs(reps[b] - roc_auc_score(y, score, sample_weight=w[b])) < 1e-12
        idx = boot.resample_indices(b)
        assert abs(reps[b] - roc_auc_score(y[idx], score[idx])) < 1e-12
        assert abs(acc_reps[b] - accuracy_score(y[idx], score[idx] > 0.5)) < 1e-12
    assert boot.point("auroc", y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_chunking_and_seed_give_identical_replicates():
    rng = np.random.default_rng(2)
    patients, y, score = _clustered_data(rng)
    whole = Bootstrap(patients, n_resamples=100, seed=5).replicates("auroc", y, score)
    chunked = Bootstrap(patients, n_resamples=100, seed=5, max_chunk=500).replicates("auroc", y, score)
    np.testing.assert_array_equal(whole, chunked)
    other = Bootstrap(patients, n_resamples=100, seed=6).replicates("auroc", y, score)
    assert not np.array_equal(whole, other)


def test_paired_difference_between_models_and_groups():
    rng = np.random.default_rng(3)
    patients, y, score = _clustered_data(rng, 120)
    worse = score + rng.normal(scale=2.0, size=len(score))
    boot = Bootstrap(patients, n_resamples=300, seed=0)
    a, b = boot.ci("auroc", y, score), boot.ci("auroc", y, worse)
    diff = a - b
    assert diff.point == pytest.approx(a.point - b.point)
    np.testing.assert_allclose(diff.replicates, a.replicates - b.replicates)
    assert diff.low > 0  # the noisier model is clearly worse, paired resamples show it
    with pytest.raises(ValueError, match="same one"):
        _ = a - Bootstrap(patients, n_resamples=300, seed=0).ci("auroc", y, score)


def _coverage(clustered: bool, n_sims: int = 300) -> float:
    """Share of 95% intervals for the mean that contain the true mean (0), patients with correlated images."""
    rng = np.random.default_rng(11)
    hits = 0
    for s in range(n_sims):
        n_pat = 80
        sizes = rng.integers(1, 5, n_pat)
        pid = np.repeat(np.arange(n_pat), sizes)
        values = rng.normal(size=n_pat)[pid] + 0.5 * rng.normal(size=len(pid))  # ICC 0.8
        groups = pid if clustered else np.arange(len(pid))
        res = Bootstrap(groups, n_resamples=500, seed=s).ci("mean", values)
        hits += res.low <= 0.0 <= res.high
    return hits / n_sims


def test_patient_bootstrap_covers_and_image_bootstrap_undercovers():
    patient_level = _coverage(clustered=True)
    image_level = _coverage(clustered=False)
    assert 0.92 <= patient_level <= 0.98, patient_level
    assert image_level < 0.85, image_level  # treats correlated images as independent -> intervals too narrow


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_batched_metric("auroc")(lambda *a: a)
    boot = Bootstrap([1, 1, 2], n_resamples=5)
    with pytest.raises(KeyError, match="unknown batched metric"):
        boot.ci("f1", [0, 1, 1])
    with pytest.raises(ValueError, match="rows but `groups` has 3"):
        boot.ci("mean", [0.1, 0.2])


def test_patient_weighted_ratio_is_the_mean_over_drawn_patients_of_their_own_means():
    from medvision.evaluation.bootstrap import patient_weights

    rng = np.random.default_rng(7)
    patients, y, _ = _clustered_data(rng)
    w = patient_weights(patients)
    assert abs(w.sum() - len(np.unique(patients))) < 1e-9  # every patient weighs one in all
    boot = Bootstrap(patients, n_resamples=30, seed=2)
    reps = boot.replicates("ratio", y * w, w)
    own = {p: y[patients == p].mean() for p in np.unique(patients)}
    for b in range(30):
        drawn = boot.patient_ids[boot.patient_draws[b]]
        assert abs(reps[b] - np.mean([own[p] for p in drawn])) < 1e-12
    assert np.isnan(boot.point("ratio", y, np.zeros_like(w)))  # nothing in the denominator: undefined, not 0


def test_ratio_from_patient_sums_equals_the_image_weighted_ratio():
    rng = np.random.default_rng(8)
    patients, y, score = _clustered_data(rng)
    boot = Bootstrap(patients, n_resamples=200, seed=4, max_chunk=3000)
    mask = score > 0
    slow = boot.ci("ratio", y * score, score**2, mask=mask)
    fast = boot.ratio_ci(y * score, score**2, mask=mask)
    np.testing.assert_allclose(fast.replicates, slow.replicates, rtol=1e-12)
    assert abs(fast.point - slow.point) < 1e-12 and abs(fast.low - slow.low) < 1e-12
    assert (fast - slow).high < 1e-12  # paired: same resamples, so the difference is zero
