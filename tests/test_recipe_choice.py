"""What ``recipe: auto`` decides before and after it trains: the fingerprint and the candidates rule, then the paired
validation rule (the simpler recipe is kept unless a more expensive one is better with its interval above zero),
recorded as a typed, versioned document."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medvision.recipes.selection import DECISION_RULE, compare_candidates
from medvision.training.recipe import (
    FEW_LABELS_PER_CLASS,
    CohortFingerprint,
    RecipeDecision,
    fingerprint,
    plan_candidates,
)


def _rows(per_class: dict[int, int], images_per_patient: int = 2) -> pd.DataFrame:
    rows, patient = [], 0
    for label, patients in per_class.items():
        for _ in range(patients):
            rows += [{"label_idx": label, "patient_id": f"p{patient}", "site": "A", "modality": "XC"}] * (
                images_per_patient
            )
            patient += 1
    return pd.DataFrame(rows)


def _fp(per_class: dict[int, int], classes=("a", "b", "c")) -> CohortFingerprint:
    return fingerprint(_rows(per_class), list(classes), label_fraction=0.1, image_size=96, channels=3)


def test_fingerprint_counts_labelled_patients_and_images_per_class():
    fp = _fp({0: 5, 1: 10, 2: 20, 3: 4})  # label 3 is a training outlier condition (HOD)
    assert fp.patients_per_class == {"a": 5, "b": 10, "c": 20}
    assert fp.images_per_class == {"a": 10, "b": 20, "c": 40}
    assert fp.labelled_images == 70 and fp.labelled_patients == 35 and fp.outlier_images == 8
    assert fp.min_patients_per_class == 5 and fp.class_balance == pytest.approx(0.25)
    assert (fp.modality, fp.sites, fp.image_size, fp.channels) == ("XC", 1, 96, 3)


def test_few_labels_per_class_leave_full_fine_tuning_out():
    few = plan_candidates(_fp({0: FEW_LABELS_PER_CLASS, 1: 200, 2: 200}), "hod")
    assert few.candidates == ["linear-probe", "lp-ft"]
    assert "Woerner" in few.rule and str(FEW_LABELS_PER_CLASS) in few.rule
    enough = plan_candidates(_fp({0: FEW_LABELS_PER_CLASS + 1, 1: 200, 2: 200}), "linear")
    assert enough.candidates == ["linear-probe", "lp-ft", "finetune"]
    het = plan_candidates(_fp({0: 5, 1: 5, 2: 5}), "het")
    assert het.candidates == ["finetune"] and "het" in het.rule


def _validation(rng: np.random.Generator, n_patients: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary validation labels, two images per patient, and the patient of each image."""
    patients = np.repeat(np.arange(n_patients), 2)
    return np.repeat(rng.integers(0, 2, n_patients), 2), patients


def _probs(y: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """A model's probabilities: the label's sign plus noise of the given size (smaller noise = better model)."""
    z = (2 * y - 1) + rng.normal(size=len(y)) * noise
    p = 1 / (1 + np.exp(-z))
    return np.c_[1 - p, p]


def test_a_better_point_estimate_inside_the_noise_keeps_the_simpler_recipe():
    rng = np.random.default_rng(0)
    y, patients = _validation(rng, 40)
    probe = _probs(y, rng, 2.0)
    nudged = probe.copy()
    wrong = np.flatnonzero((probe[:, 1] > 0.5) != (y == 1))[:1]  # fix a single ranking mistake: a tiny gain
    nudged[wrong] = np.c_[1 - y[wrong], y[wrong]]
    winner, scores = compare_candidates(y, patients, {"linear-probe": probe, "lp-ft": nudged}, n_resamples=500)
    diff = scores[1].difference
    assert diff is not None and diff.point > 0 and diff.low <= 0  # better, but the paired interval holds zero
    assert winner == "linear-probe" and not scores[1].adopted and scores[1].versus == "linear-probe"


def test_a_clearly_better_expensive_recipe_replaces_the_simpler_one_and_becomes_the_incumbent():
    rng = np.random.default_rng(1)
    y, patients = _validation(rng, 150)
    probs = {
        "linear-probe": _probs(y, rng, 3.0),
        "lp-ft": _probs(y, rng, 0.7),  # much sharper
        "finetune": _probs(y, rng, 0.7),  # as sharp as lp-ft: no clear gain over it
    }
    winner, scores = compare_candidates(y, patients, probs, {"lp-ft": "run-lpft"}, n_resamples=500)
    assert [s.recipe for s in scores] == ["linear-probe", "lp-ft", "finetune"]
    assert scores[1].adopted and scores[1].difference.low > 0 and scores[1].run_id == "run-lpft"
    assert scores[2].versus == "lp-ft"  # compared with the recipe kept so far, not with the first
    assert not scores[2].adopted and winner == "lp-ft"


def test_the_difference_is_paired_on_the_same_patients():
    """Identical predictions differ by exactly zero in every resample; independent bootstraps would not."""
    rng = np.random.default_rng(2)
    y, patients = _validation(rng, 30)
    p = _probs(y, rng, 1.0)
    _, scores = compare_candidates(y, patients, {"linear-probe": p, "finetune": p.copy()}, n_resamples=200)
    assert scores[1].difference.low == scores[1].difference.high == 0.0
    assert scores[0].val_auroc.low < scores[0].val_auroc.point < scores[0].val_auroc.high


def test_a_validation_set_of_one_class_keeps_the_simplest_and_still_records(tmp_path):
    y, patients = np.zeros(20, int), np.arange(20)
    rng = np.random.default_rng(5)
    winner, scores = compare_candidates(y, patients, {"linear-probe": _probs(y, rng, 1), "lp-ft": _probs(y, rng, 1)})
    assert winner == "linear-probe" and not scores[1].adopted
    assert scores[0].val_auroc.point is None and scores[1].difference.low is None  # undefined, not NaN
    doc = RecipeDecision(
        fingerprint=_fp({0: 5, 1: 5, 2: 5}),
        candidates_rule="r",
        decision_rule=DECISION_RULE,
        candidates=scores,
        winner=winner,
        winner_run_id=None,
        val_images=20,
        val_patients=20,
        n_resamples=1000,
        confidence=0.95,
    )
    assert RecipeDecision.read(doc.write(tmp_path / "d.json")) == doc


def test_unknown_candidates_are_refused():
    with pytest.raises(ValueError, match="candidates among"):
        compare_candidates(np.zeros(4), np.arange(4), {"auto": np.zeros((4, 2))})


def test_the_decision_document_round_trips_and_refuses_other_versions(tmp_path):
    rng = np.random.default_rng(3)
    y, patients = _validation(rng, 30)
    probs = {"linear-probe": _probs(y, rng, 1.0), "lp-ft": _probs(y, rng, 1.0)}
    fp = _fp({0: 5, 1: 5, 2: 5})
    winner, scores = compare_candidates(y, patients, probs, n_resamples=100)
    doc = RecipeDecision(
        fingerprint=fp,
        candidates_rule=plan_candidates(fp, "linear").rule,
        decision_rule=DECISION_RULE,
        candidates=scores,
        winner=winner,
        winner_run_id=None,
        val_images=len(y),
        val_patients=30,
        n_resamples=100,
        confidence=0.95,
    )
    path = doc.write(tmp_path / "decision.json")
    assert RecipeDecision.read(path) == doc
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema_version is 2.*re-run the auto fine-tune"):
        RecipeDecision.read(path)
