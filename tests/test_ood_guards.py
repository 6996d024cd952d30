"""Frozen-feature OOD guards (issue 20 item 3): kNN and Mahalanobis on the *pretrained* backbone's embeddings beside
the fine-tuned model's detectors, every detector with its interval, HOD with several outlier classes, and the best
detector named on validation only when validation holds outliers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from report_dom import _parse
from sklearn.neighbors import NearestNeighbors

from medvision.cohort.cohort import open_cohort
from medvision.config import parse_config
from medvision.data.dataset import CohortDataset
from medvision.evaluation.document import Evaluation, PretrainedGuards
from medvision.evaluation.guards import (
    PretrainedFeatures,
    StartingWeights,
    choose_detector,
    guards_on,
    pretrained_backbone,
)
from medvision.evaluation.predict import Predictions
from medvision.evaluation.stage import EvaluationRequest, evaluate_models
from medvision.evaluation.tables import detector_scores, fit_detectors, ood_tables
from medvision.heads import create_head
from medvision.models import create_backbone, save_backbone
from medvision.report.build import report_from_evaluation
from medvision.tracking import load_run_classifier
from medvision.training import FinetuneConfig, finetune

K, M = 3, 2  # inlier classes, HOD training-outlier classes


def _hod_predictions(rng: np.random.Generator, labels: np.ndarray, dim: int = 8) -> tuple[Predictions, np.ndarray]:
    """A real HOD head (K inlier + M outlier logits) on class-shifted features; returns the predictions (fine-tuned
    embeddings) and a second, independent set of "pretrained" embeddings of the same images."""
    n = len(labels)
    centres = rng.normal(0, 3, (K + M, dim))
    feats = centres[labels] + rng.normal(0, 1, (n, dim))
    head = create_head("hod", dim, K, num_outlier_classes=M)
    torch.manual_seed(0)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    x, y = torch.tensor(feats, dtype=torch.float32), torch.tensor(labels)
    for _ in range(60):
        opt.zero_grad()
        head.loss(head(x), y).backward()
        opt.step()
    with torch.no_grad():
        out = head(x)
    names = [f"c{i}" for i in range(K + M)]
    frame = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],  # two images per patient: the bootstrap resamples pairs
            "label": [names[j] for j in labels],
            "label_idx": labels,
        }
    )
    pred = Predictions(frame, out.logits.numpy(), out.probs.numpy(), feats, out.ood_score.numpy(), "hod")
    pretrained = rng.normal(0, 1, (n, dim)) + 2.0 * centres[labels][:, ::-1]
    return pred, pretrained


@pytest.fixture(scope="module")
def hod_sets():
    rng = np.random.default_rng(0)
    labels = np.r_[np.repeat(np.arange(K), 40), np.repeat([K, K + 1], 20), np.repeat(np.arange(K), 20)]
    pred, pretrained = _hod_predictions(rng, labels)
    part = np.r_[np.zeros(160, int), np.ones(60, int)]  # train: 120 inliers + 40 outliers (both outlier classes)
    features = PretrainedFeatures({str(i): j for j, i in enumerate(pred.frame["image_id"])}, pretrained)
    return pred.subset(part == 0), pred.subset(part == 1), features, pretrained


def test_pretrained_guards_equal_sklearn_and_numpy_on_the_same_embeddings(hod_sets):
    train, test, features, pretrained = hod_sets
    guards = guards_on(features, train, K, PretrainedGuards(source="file:x"))
    assert guards.record.detectors == ["mahalanobis_pretrained", "knn_pretrained"]
    scores = detector_scores(test, guards.detectors, K)

    inl = (train.frame["label_idx"] < K).to_numpy()  # fitted on training inliers only (outlier classes left out)
    x_tr, x_te, y_tr = pretrained[:160][inl], pretrained[160:], train.frame["label_idx"].to_numpy()[inl]
    k = min(10, int(inl.sum()) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x_tr).kneighbors(x_te)
    np.testing.assert_allclose(scores["knn_pretrained"], dist[:, -1], atol=1e-9)

    means = np.stack([x_tr[y_tr == c].mean(0) for c in range(K)])
    centred = x_tr - means[y_tr]
    ridge = 1e-6 * np.eye(x_tr.shape[1])  # MahalanobisDetector's documented ridge on the pooled covariance
    precision = np.linalg.inv(centred.T @ centred / len(x_tr) + ridge)
    d = x_te[:, None, :] - means[None]
    maha = np.einsum("nkd,de,nke->nk", d, precision, d).min(1)
    np.testing.assert_allclose(scores["mahalanobis_pretrained"], maha, rtol=1e-6)

    # and they are not the fine-tuned detectors: those read the model's own embeddings
    own = detector_scores(test, fit_detectors(train, K), K)
    assert not np.allclose(own["knn"], scores["knn_pretrained"])


def test_hod_with_two_outlier_classes_is_screened_and_chosen_on_validation(hod_sets):
    train, val, features, _ = hod_sets
    # validation: the last 60 images are inliers; add this set's train outliers of both classes as val outliers
    outl = train.subset((train.frame["label_idx"] >= K).to_numpy())
    val = Predictions.concat([val, outl])
    detectors = {**fit_detectors(train, K), **guards_on(features, train, K, PretrainedGuards(source="s")).detectors}
    inl = val.subset((val.frame["label_idx"] < K).to_numpy())
    rows, _, _ = ood_tables(inl, outl, detectors, n_resamples=30, seed=0)
    by = {r["detector"]: r for r in rows}
    assert set(by) == {"msp", "max_logit", "energy", "hod", "mahalanobis", "knn", *detectors}
    for r in rows:  # every detector with its patient-level interval around it
        assert r["auroc_low"] <= r["auroc"] <= r["auroc_high"], r
    full = torch.tensor(val.logits).softmax(-1).numpy()  # p_out sums both abstention classes
    np.testing.assert_allclose(val.ood_score, full[:, K:].sum(1), atol=1e-5)

    choice = choose_detector(val, detectors, K, "hod", n_resamples=30, seed=0)
    assert choice.on_validation and choice.validation_outliers == 40 and choice.validation_conditions == ["c3", "c4"]
    top = max(r.auroc for r in choice.validation)
    tied = [r.detector for r in choice.validation if r.auroc == top]
    assert top > 0.9 and choice.chosen == ("hod" if "hod" in tied else tied[0])  # the declared score wins a tie
    assert all(r.auroc_low is not None and r.auroc_low <= r.auroc <= r.auroc_high for r in choice.validation)
    assert choice.reason.startswith(f"{choice.chosen} has the highest OOD AUROC on validation")

    # no outliers on validation: nothing is chosen there, the head's declared score is kept and the record says why
    none = choose_detector(inl, detectors, K, "hod", n_resamples=30, seed=0)
    assert not none.on_validation and none.chosen == "hod" and none.validation == []
    assert "no detector can be chosen on validation" in none.reason and "(hod) is kept" in none.reason


def test_no_guard_without_usable_starting_weights_and_the_record_says_why(tmp_path):
    bb = create_backbone("resnet-tiny", in_chans=1)
    pretrained, why = pretrained_backbone(StartingWeights("resnet-tiny", "none", {}, None), bb)
    assert pretrained is None and "random weights" in why
    saved = save_backbone(bb, tmp_path / "start")
    same, why = pretrained_backbone(StartingWeights("resnet-tiny", f"file:{saved}", {}, None), bb)
    assert same is None and "unchanged (frozen)" in why  # a frozen backbone's features are the pretrained ones
    moved, why = pretrained_backbone(StartingWeights("resnet-tiny", f"file:{tmp_path / 'gone'}", {}, None), bb)
    assert moved is None and "cannot be loaded here" in why and "gone" in why
    other, why = pretrained_backbone(StartingWeights("resnet-tiny", f"file:{saved}", {}, "0" * 64), bb)
    assert other is None and "restore that file" in why


@pytest.fixture(scope="module")
def evaluated(synth_cxr_cohort, tmp_path_factory):
    """A two-epoch HOD fine-tune that started from saved (file:) weights, evaluated on test and held-out conditions."""
    tmp = tmp_path_factory.mktemp("guards")
    torch.manual_seed(1)
    start = save_backbone(create_backbone("resnet-tiny", in_chans=1), tmp / "pretrained")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 64},
        "backbone": {"name": "resnet-tiny", "weights": f"file:{start}"},
        "head": {"name": "hod"},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 2, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp / "run"),
        "tracking": {"tracking_uri": uri, "experiment": "guards", "run_name": "finetune/lf1.0"},
    }
    run_id = finetune(parse_config(raw, FinetuneConfig)).run_id
    request = EvaluationRequest(
        cohort_dir=synth_cxr_cohort,
        models=[{"run_id": run_id}],
        tracking_uri=uri,
        sets=["test", "condition_ood"],
        outlier_sets=["condition_ood"],
        bootstrap=30,
        saliency=0,
    )
    evaluate_models(request, tmp / "eval")
    return tmp / "eval", run_id, uri, start


def test_evaluate_scores_pretrained_guards_beside_the_fine_tuned_detectors(evaluated, synth_cxr_cohort, tmp_path):
    folder, run_id, uri, start = evaluated
    ev = Evaluation.open(folder)
    ood = ev.metrics.primary.ood
    assert ood.pretrained.source == f"file:{start}" and ood.pretrained.skipped is None
    rows = {r.detector: r for r in ood.detectors}
    assert {"knn", "mahalanobis", "knn_pretrained", "mahalanobis_pretrained", "hod", "msp"} <= set(rows)
    for r in rows.values():  # every detector with its interval
        assert r.auroc_low is not None and r.auroc_low <= r.auroc <= r.auroc_high, r

    scores = ev.ood_scores(ev.metrics.primary)
    by = {d: g["score"].to_numpy() for d, g in scores.groupby("detector")}
    assert not np.allclose(by["knn"], by["knn_pretrained"])  # pretrained features are not the fine-tuned ones
    assert not np.allclose(by["mahalanobis"], by["mahalanobis_pretrained"])

    # the guard equals a direct computation: the saved start weights, a bare forward, sklearn's k-th neighbour
    classifier, _ = load_run_classifier(run_id, uri)
    pretrained, why = pretrained_backbone(StartingWeights.of_run(run_id, uri), classifier.backbone)
    assert why is None
    cohort = open_cohort(synth_cxr_cohort)
    train = cohort.rows("train")
    train = train[train["label_idx"] < K]
    test = pd.read_parquet(folder / "predictions/model/test.parquet")
    held = pd.read_parquet(folder / "predictions/model/condition_ood.parquet")
    ids = [*test.loc[test["label_idx"] < K, "image_id"], *held["image_id"]]
    screened = cohort.manifest.set_index("image_id").loc[ids].reset_index()

    def embed(rows: pd.DataFrame) -> np.ndarray:
        ds = CohortDataset(cohort, rows.reset_index(drop=True))
        with torch.no_grad():
            return pretrained.eval()(torch.stack([ds[i]["image"] for i in range(len(ds))])).numpy()

    dist, _ = NearestNeighbors(n_neighbors=10, metric="cosine").fit(embed(train)).kneighbors(embed(screened))
    np.testing.assert_allclose(by["knn_pretrained"], dist[:, -1], atol=1e-5)

    # this cohort's training outlier condition (nodule) has no validation images: validation cannot choose
    choice = ood.choice
    assert (choice.declared, choice.chosen, choice.on_validation) == ("hod", "hod", False)
    assert choice.validation_outliers == 0 and choice.validation_inliers > 0 and choice.validation == []

    out = report_from_evaluation(folder, tmp_path / "report.html", title="guards")
    text = " ".join(_parse(out.read_text(encoding="utf-8")).text["ood"].split())
    assert "knn_pretrained" in text and "Frozen-feature guards: mahalanobis_pretrained and knn_pretrained" in text
    assert "no detector can be chosen on validation" in text and "(best on validation)" not in text


def test_a_version_3_metrics_document_is_read_without_guards_or_choice(tmp_path):
    doc = {
        "schema_version": 3,
        "code_version": {"package": "0", "commit": None, "dirty": False, "label": "0", "key": "0"},
        "cohort": {"name": "c", "manifest_sha256": "0" * 64, "classes": ["a", "b"], "dir": str(tmp_path)},
        "settings": {"sets": ["test"], "subgroups": [], "bootstrap": 0, "min_patients": 20, "referral_rate": 0.1,
                     "seed": 0, "outlier_sets": [], "costs": {}, "risk": {}},
        "primary_model": None,
        "models": [],
        "ensemble": {"members": ["m"], "val_nll": [0.5], "sets": {},
                     "ood": [{"detector": "ensemble_msp", "auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5,
                              "fpr_at_95_tpr": 0.4}]},
    }  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    read = Evaluation.open(tmp_path).metrics
    assert read.schema_version == 4 and read.ensemble.ood[0].auroc_low is None
