"""A tiny validation split (four patients, none of the positive class) supports no operating point and no conformal
calibration: the evaluation must record why, and the report and ``predict`` must say so instead of implying a
threshold or a guarantee that the evaluation never had.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from report_factory import full_context

from medvision.cli.predict import _echo_result
from medvision.evaluation.document import Estimate, ModelMetrics, SetMetrics
from medvision.evaluation.scoring import no_operating_point_reason
from medvision.evaluation.trust_document import Trust
from medvision.report.build import _performance, _trust
from medvision.report.sections import section_blocks
from medvision.report.trust import trust_blocks
from medvision.serving.decisions import apply_evaluation, decision_notes
from medvision.serving.predict import PredictionResult


def _model(**update: object) -> ModelMetrics:
    """A model measured on a test set with AUROC and accuracy only (no threshold: no sensitivity/specificity)."""
    est = Estimate(value=0.7, low=0.5, high=0.9)
    test = SetMetrics(
        n_images=8, n_patients=4, auroc=est, accuracy=est, auroc_kind="binary", class_counts=[4, 4], classes_absent=[]
    )
    fields: dict[str, object] = {
        "name": "model",
        "run_id": "a" * 32,
        "classes": ["nevus", "melanoma"],
        "positive_class": "melanoma",
        "temperature": 1.0,
        "sets": {"test": test},
    }
    return ModelMetrics.model_validate({**fields, **update})


def _performance_text(model: ModelMetrics) -> str:
    section = _performance(model)
    ctx = full_context().model_copy(update={"performance": section})
    return " ".join(b["text"] for b in section_blocks("performance", ctx) if b["kind"] == "p")


def test_the_reason_no_operating_point_was_chosen_names_the_missing_class() -> None:
    assert no_operating_point_reason(np.array([False] * 4), "melanoma") == "validation holds no case of melanoma"
    assert "only cases of melanoma" in str(no_operating_point_reason(np.array([True] * 3), "melanoma"))
    assert no_operating_point_reason(np.array([], bool), "melanoma") == "validation holds no labelled case"
    assert no_operating_point_reason(np.array([True, False]), "melanoma") is None


def test_the_report_says_no_operating_point_was_chosen_and_why() -> None:
    text = _performance_text(_model(no_operating_point="validation holds no case of melanoma"))
    assert "threshold chosen on validation" not in text
    assert "No operating point was chosen on validation (validation holds no case of melanoma)" in text
    # a document that records no reason still says plainly that there is no threshold
    older = _performance_text(_model())
    assert "threshold chosen on validation" not in older and "No operating point was chosen" in older


def test_a_chosen_operating_point_still_reads_as_before() -> None:
    text = _performance_text(_model(operating_point={"rule": "Youden's J on validation", "threshold": 0.4}))
    assert "Sensitivity and specificity are at a threshold chosen on validation data." in text
    assert "threshold 0.400" in text and "No operating point" not in text


def _trust_with_no_threshold(guarantee: str) -> Trust:
    """A trust record calibrated on four patients: the threshold is null, so every set holds both classes."""
    row = {"method": "marginal", "set": "test", "attribute": "all", "group": "all", "n_patients": 30,
           "n_images": 60, "target": 0.9, "coverage": 1.0, "coverage_low": 1.0, "coverage_high": 1.0,
           "shortfall": -0.1, "mean_set_size": 2.0, "singleton_rate": 0.0, "empty_rate": 0.0,
           "guarantee": guarantee}  # fmt: skip
    conformal = {
        "target": 0.9, "score": "aps", "randomized": True, "mondrian": [], "n_patients": 4,
        "thresholds": [{"method": "marginal", "category": "all", "label": -1, "n_patients": 4, "n_images": 8,
                        "threshold": None}],
        "coverage": [row],
    }  # fmt: skip
    said = {"coverage": "At a 90% target, the sets covered 100% of the test patients."}
    return Trust.model_validate({"reference": "test", "conformal": conformal, "sentences": said})


def test_the_report_calls_sets_with_no_threshold_vacuous_not_a_guarantee_that_holds() -> None:
    for written in ("holds", "vacuous"):  # a document from before the evaluation said so, and one from after
        section = _trust(_model(trust=_trust_with_no_threshold(written)))
        assert section is not None and list(section.coverage["guarantee"]) == ["vacuous"]
        blocks = trust_blocks(section)
        cells = [c for b in blocks if b["kind"] == "table" for r in b["rows"] for c in r]
        assert "holds" not in cells and any("too few calibration patients" in str(c) for c in cells)
        text = " ".join(b["text"] for b in blocks if b["kind"] == "p") + " ".join(section.sentences)
        assert "covered 100%" not in text and "carry no information" in text


def test_predict_says_once_that_no_operating_point_means_no_positive_column(tmp_path, capsys) -> None:
    model = _model(no_operating_point="validation holds no case of melanoma")
    table = pd.DataFrame({"image_id": ["img-0001", "img-0002"], "p:nevus": [0.8, 0.3], "p:melanoma": [0.2, 0.7]})
    out = apply_evaluation(table, model, seed=0, ood_score_name=None)
    assert "positive" not in out.columns
    notes = decision_notes(model)
    assert len(notes) == 1 and "no `positive` column" in notes[0] and "validation holds no case of melanoma" in notes[0]
    assert "img-" not in notes[0] and model.run_id not in notes[0]  # no case or run named
    result = PredictionResult(tmp_path, out, pd.DataFrame(), "b" * 32, None, notes=tuple(notes))
    _echo_result(result, sent=False, uri="sqlite:///mlflow.db")
    assert capsys.readouterr().out.count("no `positive` column") == 1
    # a model with an operating point gets its column and no note
    chosen = _model(operating_point={"rule": "Youden's J on validation", "threshold": 0.5})
    assert list(apply_evaluation(table, chosen, seed=0, ood_score_name=None)["positive"]) == [False, True]
    assert decision_notes(chosen) == []
