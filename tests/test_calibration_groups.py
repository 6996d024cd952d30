"""Calibration per subgroup and per site: the bootstrap ECE is the module's ECE on every explicit resample, each
group's numbers equal the ungrouped functions on that group's rows, an overconfident site stands out, and a
temperature fitted on that site's validation patients repairs it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.calibration import (
    batched_ece,
    calibration_by_group,
    expected_calibration_error,
    fit_site_temperature,
    reliability_diagram,
)


def _set(rng, n_patients, overconfident_site_b=3.0):
    """Calibrated logits at site A; at site B the model is overconfident (its logits multiplied)."""
    images = rng.integers(1, 4, n_patients)
    patient = np.repeat(np.arange(n_patients), images)
    site = np.where(rng.random(n_patients) < 0.5, "A", "B")[patient]
    logits = 1.5 * rng.normal(size=(len(patient), 3))
    y = (softmax(logits, 1).cumsum(1) > rng.random(len(patient))[:, None]).argmax(1)
    logits[site == "B"] *= overconfident_site_b
    frame = pd.DataFrame({"label_idx": y, "patient_id": patient, "site": site})
    return logits, frame


def test_batched_ece_is_the_module_ece_on_every_explicit_resample():
    rng = np.random.default_rng(0)
    logits, frame = _set(rng, 80)
    p = softmax(logits, 1)
    y = frame["label_idx"].to_numpy()
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    boot = Bootstrap(frame["patient_id"], n_resamples=25, seed=3)
    reps = boot.replicates(lambda c, k, w: batched_ece(c, k, w), conf, correct)
    for b in range(25):
        idx = boot.resample_indices(b)
        assert abs(reps[b] - expected_calibration_error(y[idx], p[idx])) < 1e-12
    assert abs(batched_ece(conf, correct, np.ones((1, len(y))))[0] - expected_calibration_error(y, p)) < 1e-12


def test_each_group_equals_the_ungrouped_functions_on_its_rows_and_the_overconfident_site_stands_out():
    rng = np.random.default_rng(1)
    logits, frame = _set(rng, 300)
    p = softmax(logits, 1)
    result = calibration_by_group(p, frame, attributes=["site"], n_resamples=300)
    ece = result.ece.set_index(["attribute", "group"])
    y = frame["label_idx"].to_numpy()
    for site in "AB":
        rows = (frame["site"] == site).to_numpy()
        assert abs(ece.loc[("site", site), "ece"] - expected_calibration_error(y[rows], p[rows])) < 1e-12
        ours = result.reliability[result.reliability["group"] == site].reset_index(drop=True)
        theirs = reliability_diagram(y[rows], p[rows]).query("count > 0").reset_index(drop=True)
        np.testing.assert_allclose(
            ours[["count", "confidence", "accuracy"]], theirs[["count", "confidence", "accuracy"]]
        )
        assert (ours["accuracy_low"] <= ours["accuracy_high"]).all()
    assert ece.loc[("all", "all"), "ece"] == pytest.approx(expected_calibration_error(y, p), abs=1e-12)
    # the overconfident site's interval lies wholly above the calibrated one's
    assert ece.loc[("site", "B"), "ece_low"] > ece.loc[("site", "A"), "ece_high"]


def test_a_temperature_fitted_on_the_sites_validation_patients_repairs_its_test_calibration():
    rng = np.random.default_rng(2)
    val_logits, val = _set(rng, 400)
    test_logits, test = _set(rng, 400)
    scaler = fit_site_temperature(val_logits, val["label_idx"], val["site"], "B")
    assert scaler.temperature_ == pytest.approx(3.0, rel=0.2)  # it undoes the planted overconfidence
    b = (test["site"] == "B").to_numpy()
    y = test["label_idx"].to_numpy()[b]
    before = expected_calibration_error(y, softmax(test_logits[b], 1))
    after = expected_calibration_error(y, scaler.predict_proba(test_logits[b]))
    assert after < before / 2
    with pytest.raises(ValueError, match=r"site 'b' has no validation images.*Did you mean 'B'\?.*A, B"):
        fit_site_temperature(val_logits, val["label_idx"], val["site"], "b")


def test_small_groups_are_flagged_and_get_no_numbers():
    rng = np.random.default_rng(3)
    logits, frame = _set(rng, 60)
    frame["sex"] = np.where(frame["patient_id"] == 0, "O", "F")
    result = calibration_by_group(softmax(logits, 1), frame, attributes=["sex"], min_patients=5, n_resamples=20)
    small = result.ece.set_index(["attribute", "group"]).loc[("sex", "O")]
    assert small["flag"] == "few_patients" and np.isnan(small["ece"])
    assert "O" not in set(result.reliability["group"])
