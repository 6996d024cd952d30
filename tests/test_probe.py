"""The linear probe: C is chosen by cross-validation that never splits a patient, and the head it writes is
scikit-learn's logistic regression to float precision (multi-class, binary, HOD, absent classes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvision.classifier import Classifier
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.training.probe import ABSENT_LOGIT, LogisticProbe, probe_layer, probe_supports

GRID = np.logspace(-3, 2, 6)  # a short grid keeps these tests to a second or two


def _cohort(rng: np.random.Generator, patients: int = 60, classes: int = 3, dim: int = 12, signal: float = 1.5):
    """Patients with 1-4 images each; every image of a patient shares its class and a patient effect."""
    counts = rng.integers(1, 5, size=patients)
    groups = np.repeat(np.arange(patients), counts)
    label = rng.integers(0, classes, size=patients)
    centres = rng.normal(size=(classes, dim)) * signal
    patient_effect = rng.normal(size=(patients, dim)) * 0.5
    x = centres[label[groups]] + patient_effect[groups] + rng.normal(size=(len(groups), dim))
    return x, label[groups], groups


def test_c_is_chosen_by_folds_that_never_split_a_patient():
    rng = np.random.default_rng(0)
    x, y, groups = _cohort(rng)
    probe = LogisticProbe(folds=5, seed=1).fit(x, y, groups, num_outputs=3)
    assert len(probe.folds_) == 5
    held_out = np.concatenate([te for _, te in probe.folds_])
    assert sorted(held_out.tolist()) == list(range(len(y)))  # every row held out exactly once
    for train, held in probe.folds_:
        assert not set(groups[train]) & set(groups[held]), "a patient sits in both parts of a fold"
    assert probe.cv_loss_.shape == (5, len(probe.c_grid))
    assert probe.c_grid[int(np.nanargmin(probe.cv_loss_.mean(axis=0)))] == probe.C_


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_c_path_stops_once_the_held_out_loss_has_risen_and_picks_the_full_grids_c(seed):
    """The walk up the C grid stops ``patience`` points past the best held-out loss (the weak-penalty end is the
    slow one), and the C it picks is the one the whole grid picks."""
    rng = np.random.default_rng(seed)
    x, y, groups = _cohort(rng, patients=80, dim=40, signal=0.6)
    full = LogisticProbe(patience=None, seed=seed).fit(x, y, groups, num_outputs=3)
    early = LogisticProbe(seed=seed).fit(x, y, groups, num_outputs=3)
    assert early.patience == 3 and not np.isnan(full.cv_loss_).any()
    walked = int(np.isfinite(early.cv_loss_[0]).sum())
    best = int(np.nanargmin(early.cv_loss_.mean(axis=0)))
    assert walked == best + 1 + 3 < len(early.c_grid), (walked, best)  # stopped: three points past the best
    assert np.isnan(early.cv_loss_[:, walked:]).all()
    np.testing.assert_allclose(early.cv_loss_[:, :walked], full.cv_loss_[:, :walked])  # the same fits, in step
    assert early.C_ == full.C_
    np.testing.assert_allclose(early.coef_, full.coef_)


def test_the_cross_validated_c_follows_the_signal():
    """Pure noise wants the strongest regularisation (the class prior); a strong signal a weak one."""
    rng = np.random.default_rng(3)
    x, y, groups = _cohort(rng, patients=80, signal=0.0)
    noise = LogisticProbe(GRID, seed=0).fit(rng.normal(size=x.shape), y, groups, num_outputs=3)
    x, y, groups = _cohort(rng, patients=80, signal=3.0)
    signal = LogisticProbe(GRID, seed=0).fit(x, y, groups, num_outputs=3)
    assert noise.C_ < signal.C_
    assert noise.C_ <= 1e-2


def test_features_the_backbone_left_nearly_constant_do_not_drown_the_signal():
    """A collapsed embedding (most coordinates float noise around a constant, as EfficientNet's at 32 px) keeps its
    geometry under the default global scaling; standardising each feature would make that noise as loud as the few
    informative coordinates, and the held-out ranking falls (the PneumoniaMNIST finding in RESULTS.md)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)

    def embed(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n)
        informative = rng.normal(size=(n, 8)) + 0.8 * y[:, None]
        collapsed = 0.5 + 1e-6 * rng.normal(size=(n, 400))  # constant to float noise, but not exactly
        return np.hstack([informative, collapsed]), y

    x, y = embed(60)
    xt, yt = embed(2000)
    auc = {}
    for scaling in ("global", "per-feature"):
        probe = LogisticProbe(GRID, seed=0, scaling=scaling).fit(x, y, np.arange(len(y)), num_outputs=2)
        auc[scaling] = roc_auc_score(yt, probe.predict_proba(xt)[:, 1])
    assert LogisticProbe().scaling == "global"
    assert auc["global"] > 0.85
    assert auc["global"] - auc["per-feature"] > 0.05, auc


def test_folds_shrink_to_the_patients_of_the_rarest_class():
    rng = np.random.default_rng(1)
    x, y, groups = _cohort(rng, patients=40, classes=2)
    rare = np.flatnonzero(y == 1)
    keep_patients = set(groups[rare][:1]) | set(groups[rare][np.isin(groups[rare], np.unique(groups[rare])[:3])])
    mask = (y == 0) | np.isin(groups, list(keep_patients))
    probe = LogisticProbe(GRID, folds=5).fit(x[mask], y[mask], groups[mask], num_outputs=2)
    assert len(probe.folds_) == len(np.unique(groups[mask][y[mask] == 1])) == 3


@pytest.mark.parametrize(("classes", "head", "outliers"), [(3, "linear", 0), (2, "linear", 0), (3, "hod", 2)])
def test_the_probe_classifier_reproduces_sklearn_predict_proba(classes, head, outliers):
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    backbone = create_backbone("resnet-tiny", weights="none", in_chans=1)
    dim = backbone.num_features
    x, y, groups = _cohort(rng, patients=50, classes=classes + outliers, dim=dim)
    options = {"num_outlier_classes": outliers} if outliers else {}
    clf = Classifier(backbone, create_head(head, dim, classes, **options), [f"c{i}" for i in range(classes)])
    probe = LogisticProbe(GRID, folds=3).fit(x, y, groups, num_outputs=clf.head.num_outputs)
    layer = probe_layer(clf.head)
    assert layer is not None
    probe.to_layer(layer)
    clf.eval()
    with torch.no_grad():
        out = clf.from_features(torch.as_tensor(x, dtype=torch.float32))
    full = out.logits.double().softmax(-1).numpy()  # the whole softmax (HOD: inliers and outlier conditions)
    np.testing.assert_allclose(full, probe.predict_proba(x), atol=1e-6)
    if outliers:  # HOD's task probabilities are the inlier softmax, its OOD score the outlier mass
        inlier = full[:, :classes] / full[:, :classes].sum(1, keepdims=True)
        np.testing.assert_allclose(out.probs.numpy(), inlier, atol=1e-5)
        np.testing.assert_allclose(out.ood_score.numpy(), full[:, classes:].sum(1), atol=1e-5)


def test_a_class_without_training_images_gets_no_probability():
    rng = np.random.default_rng(4)
    x, y, groups = _cohort(rng, patients=40, classes=3, dim=6)
    y = np.where(y == 1, 2, y)  # no image of class 1 left
    probe = LogisticProbe(GRID, folds=3).fit(x, y, groups, num_outputs=3)
    head = create_head("linear", 6, 3)
    probe.to_layer(probe_layer(head))
    with torch.no_grad():
        probs = head(torch.as_tensor(x, dtype=torch.float32)).probs.double().numpy()
    assert probe.intercept_[1] == ABSENT_LOGIT and probs[:, 1].max() < 1e-12
    np.testing.assert_allclose(probs[:, [0, 2]], probe.predict_proba(x), atol=1e-6)


def test_heads_without_one_linear_layer_refuse_a_probe():
    assert probe_supports("linear") and probe_supports("hod")
    assert not probe_supports("het") and not probe_supports("multilabel")
    assert probe_layer(create_head("het", 8, 3)) is None
    assert probe_layer(create_head("multilabel", 8, 3)) is None


def test_one_class_or_one_patient_is_a_clear_error():
    x = np.zeros((6, 3))
    with pytest.raises(ValueError, match="at least two classes"):
        LogisticProbe(GRID).fit(x, np.zeros(6, int), np.arange(6), num_outputs=2)
    with pytest.raises(ValueError, match="two training patients"):
        LogisticProbe(GRID).fit(x, np.array([0, 1] * 3), np.zeros(6, int), num_outputs=2)
