"""The evaluate stage fits the conformal sets and the referral rule on validation patients and evaluates them on
every set; metrics.json carries them as typed records; the report's "When to trust this model" section quotes them,
with held-out sets flagged (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_dom import _parse

from medvision.config import parse_config
from medvision.evaluation.document import Evaluation, MetricsDocument
from medvision.evaluation.predict import Predictions
from medvision.evaluation.settings import EvaluationSettings
from medvision.evaluation.stage import EvaluationRequest, evaluate_models
from medvision.evaluation.trust import TrustInputs, trust_record
from medvision.evaluation.trust_document import Trust
from medvision.report.build import report_from_evaluation
from medvision.training import FinetuneConfig, finetune

K = 3


def _predictions(rng: np.random.Generator, n: int, flatten: float = 1.0) -> Predictions:
    """``n`` one-image patients whose labels are drawn from the model's own probabilities (a calibrated model), or
    from probabilities flattened towards uniform (``flatten`` < 1: an overconfident model, as at another site)."""
    p = rng.dirichlet(np.ones(K) * 0.4, n)
    truth = p**flatten
    truth /= truth.sum(1, keepdims=True)
    y = np.array([rng.choice(K, p=row) for row in truth])
    frame = pd.DataFrame({"patient_id": [f"p{rng.integers(1e12)}-{i}" for i in range(n)], "label_idx": y})
    frame["sex"] = rng.choice(["F", "M"], n)
    return Predictions(frame, np.log(p), p, np.zeros((n, 2)), None)


def test_the_promises_hold_on_exchangeable_patients_and_are_flagged_where_they_cannot():
    rng = np.random.default_rng(0)
    val, test, site = _predictions(rng, 1000), _predictions(rng, 1000), _predictions(rng, 400, flatten=0.2)
    settings = EvaluationSettings(subgroups=["sex"], bootstrap=50, min_patients=20, abstain={"alpha": 0.1})
    inputs = TrustInputs(["a", "b", "c"], 0, val, {"test": test, "site_ood": site}, [], {})
    trust = trust_record(inputs, settings)
    cov = {r.set: r for r in trust.conformal.coverage if r.method == "marginal" and r.attribute == "all"}
    # a finite-sample guarantee: loose tolerance, but a broken calibration (or a set calibrated on test) fails it
    assert 0.87 <= cov["test"].coverage <= 0.93 and cov["test"].guarantee == "holds"
    assert cov["site_ood"].guarantee == "does_not_carry_over" and cov["site_ood"].coverage < 0.85
    rule = trust.abstain
    assert rule.feasible and 0.4 < rule.threshold < 1
    risk = {r.set: r for r in rule.sets if r.attribute == "all"}
    assert risk["test"].accepted_error <= 0.1 + 0.03 and 0 < risk["test"].referral_rate < 1
    assert risk["site_ood"].guarantee == "does_not_carry_over" and risk["site_ood"].accepted_error > 0.1
    assert "the held-out site" in trust.sentences.coverage and "does not hold there" in trust.sentences.coverage
    assert "the promise does not carry over there" in trust.sentences.abstention
    assert trust.held_out_sets == ["site_ood"] and set(trust.calibration_by_group) == {"test", "site_ood"}
    assert Trust.model_validate_json(trust.model_dump_json()) == trust  # the record survives JSON unchanged

    multi = trust_record(TrustInputs(["a", "b", "c"], 0, val, {"test": test}, [], {}, multilabel=True), settings)
    assert multi.conformal is None and "multi-label" in multi.skipped["conformal"]
    missing = EvaluationSettings(subgroups=["sex"], bootstrap=1, abstain={"ood": "hod"})
    assert "no such score" in trust_record(inputs, missing).skipped["abstain"]  # a linear model has no HOD score


def test_a_version_2_metrics_document_is_read_with_no_trust_record(tmp_path: Path):
    doc = {
        "schema_version": 2,
        "code_version": {"package": "0", "commit": None, "dirty": False, "label": "0", "key": "0"},
        "cohort": {"name": "c", "manifest_sha256": "0" * 64, "classes": ["a", "b"], "dir": str(tmp_path)},
        "settings": {"sets": ["test"], "subgroups": [], "bootstrap": 0, "min_patients": 20, "referral_rate": 0.1,
                     "seed": 0, "outlier_sets": [], "costs": {}, "risk": {}},
        "primary_model": None,
        "models": [],
    }  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    read = Evaluation.open(tmp_path).metrics
    assert read.schema_version == 4 and read.settings.conformal is None


@pytest.fixture(scope="module")
def evaluated(synth_cxr_cohort, tmp_path_factory):
    """A two-epoch fine-tune on the shared synthetic cohort, evaluated on test, the held-out site and conditions."""
    tmp = tmp_path_factory.mktemp("trust")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    raw = {
        "data": {"cohort_dir": str(synth_cxr_cohort), "batch_size": 64},
        "backbone": {"name": "resnet-tiny", "weights": "none"},
        "head": {"name": "linear"},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 2, "warmup_epochs": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
        "output_dir": str(tmp / "run"),
        "tracking": {"tracking_uri": uri, "experiment": "trust", "run_name": "finetune/lf1.0"},
    }
    run_id = finetune(parse_config(raw, FinetuneConfig)).run_id
    request = EvaluationRequest(
        cohort_dir=synth_cxr_cohort,
        models=[{"run_id": run_id}],
        tracking_uri=uri,
        subgroups=["sex", "site"],
        bootstrap=50,
        min_patients=5,
        saliency=0,
        conformal={"mondrian": ["class"]},
        abstain={"alpha": 0.4},
    )
    evaluate_models(request, tmp / "eval")
    return tmp / "eval"


def test_evaluate_writes_the_trust_record_and_the_report_quotes_it(evaluated, tmp_path):
    ev = Evaluation.open(evaluated)
    assert MetricsDocument.read(evaluated / "metrics.json") == ev.metrics  # one writer, one reader, no loss
    trust = ev.metrics.primary.trust
    assert ev.metrics.settings.conformal.mondrian == ["class"] and trust.skipped == {}
    cov = {(r.method, r.set): r for r in trust.conformal.coverage if r.attribute == "all"}
    assert set(cov) == {(m, s) for m in ("marginal", "class") for s in ("test", "site_ood", "condition_ood")}
    test = cov[("marginal", "test")]
    assert abs(test.coverage - 0.9) <= 0.12 and test.coverage_high >= 0.9  # a finite-sample promise, loosely
    assert cov[("marginal", "site_ood")].guarantee == "does_not_carry_over"
    assert cov[("marginal", "condition_ood")].coverage == 0  # no class of the model is a held-out condition
    rule = trust.abstain
    risk = {r.set: r for r in rule.sets if r.attribute == "all"}
    if rule.feasible:  # the certified rule's error among answered test patients, within the bound plus slack
        assert risk["test"].accepted_error <= 0.4 + 0.15
    else:  # nothing certified: every case referred, and said so
        assert risk["test"].referral_rate == 1 and risk["test"].flag == "nothing_answered"
    assert risk["site_ood"].guarantee == "does_not_carry_over" or risk["site_ood"].flag == "nothing_answered"

    out = report_from_evaluation(evaluated, tmp_path / "report.html", title="trust")
    text = " ".join(_parse(out.read_text(encoding="utf-8")).text["trust"].split())
    assert trust.sentences.coverage in text and trust.sentences.abstention in text
    cells = text.replace(" ", "")
    shown = f"{test.coverage:.3f}({test.coverage_low:.3f}–{test.coverage_high:.3f})"
    assert f"marginaltest{test.n_patients}{shown}" in cells  # the table's numbers are metrics.json's
    assert "site_ood" in text and "HELD-OUT: does not carry over" in text and "not exchangeable" in text
    bins = trust.calibration_by_group[trust.reference].reliability
    assert any(b.accuracy is not None for b in bins)  # so the section draws the per-subgroup reliability diagrams
    html = out.read_text(encoding="utf-8")
    assert f"Reliability per subgroup and site on {trust.reference}" in html
    summary = " ".join(_parse(html).text["summary"].split())
    assert trust.sentences.coverage in summary  # the one-page summary says when to trust it too
    assert 'data-topic="trust"' in html
