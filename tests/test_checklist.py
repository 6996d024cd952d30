"""``medvision report EVAL --checklist``: TRIPOD+AI, CLAIM 2024 and a model card filled from a real evaluation's
records, each answer citing its source and quoting metrics.json's numbers, the rest TODO, no identifier anywhere,
logged to the evaluated run beside the report."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cohort.cohort import open_cohort
from medvision.evaluation.document import Evaluation
from medvision.report.checklist import CHECKLISTS, fill_checklist, load_checklist_spec, records_of
from tests.conftest import _TEST_PSEUDONYM_KEY

#: The published item numbers: TRIPOD+AI 2024 (27 items, 52 sub-items) and CLAIM 2024 (44 items).
_TRIPOD_AI = [
    *[
        "1",
        "2",
        "3a",
        "3b",
        "3c",
        "4",
        "5a",
        "5b",
        "6a",
        "6b",
        "6c",
        "7",
        "8a",
        "8b",
        "8c",
        "9a",
        "9b",
        "9c",
        "10",
        "11",
        "12a",
        "12b",
        "12c",
        "12d",
        "12e",
        "12f",
        "12g",
        "13",
        "14",
        "15",
        "16",
        "17",
    ],
    *[
        "18a",
        "18b",
        "18c",
        "18d",
        "18e",
        "18f",
        "19",
        "20a",
        "20b",
        "20c",
        "21",
        "22",
        "23a",
        "23b",
        "24",
        "25",
        "26",
        "27a",
        "27b",
        "27c",
    ],
]
_SOURCES = ("cohort.json: ", "metrics.json: ", "classifier.json: ", "MLflow run ")


def test_the_item_lists_follow_the_published_numbering():
    assert [i.id for i in load_checklist_spec("tripod-ai").items] == _TRIPOD_AI
    assert len(_TRIPOD_AI) == 52 and len({i.rstrip("abcdefg") for i in _TRIPOD_AI}) == 27
    assert [i.id for i in load_checklist_spec("claim").items] == [str(n) for n in range(1, 45)]
    assert all(load_checklist_spec(name).items for name in CHECKLISTS)  # every fact named exists (checked on load)


@pytest.mark.slow
def test_checklists_answer_from_the_records_cite_them_and_leave_the_rest_todo(evaluated_hod_run, tmp_path, monkeypatch):
    run_id, uri, eval_dir = evaluated_hod_run
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)  # the cohort's key: the identifier check runs
    report = tmp_path / "report.html"
    args = ["report", str(eval_dir), "--out", str(report), "--tracking-uri", uri]
    result = CliRunner().invoke(app, [*args, *(a for n in CHECKLISTS for a in ("--checklist", n))])
    assert result.exit_code == 0, (result.output, result.exception)

    records = records_of(eval_dir, uri)
    model = Evaluation.open(eval_dir).metrics.primary
    tripod, claim = (fill_checklist(n, records, "key") for n in ("tripod-ai", "claim"))
    for checklist in (tripod, claim):
        for item in checklist.items:
            if item.status == "answered":
                assert item.answer and item.sources and all(s.startswith(_SOURCES) for s in item.sources), item
            else:
                assert item.answer is None and not item.sources
    by_id = {i.id: i for i in tripod.items}
    # numbers are metrics.json's, with their bootstrap CI
    test = model.sets["test"]
    assert (
        f"test: AUROC {test.auroc.value:.3f} (95% CI {test.auroc.low:.3f}-{test.auroc.high:.3f})" in by_id["23a"].answer
    )
    assert f"{test.n_images} images, {test.n_patients} patients" in by_id["23a"].answer
    assert f"metrics.json: models[{model.name}].sets.<set>.auroc, .accuracy" in by_id["23a"].sources
    card = open_cohort(Path(records.doc.cohort.dir)).card
    assert f"test: {card.counts['test'].images} images, {card.counts['test'].patients} patients" in by_id["21"].answer
    assert "Patient-level split" in by_id["12a"].answer and "cohort.json: spec.splits" in by_id["12a"].sources
    # the classifier card and the training run's parameters, read from MLflow
    claim_by_id = {i.id: i for i in claim.items}
    assert "(1, 32, 32)" in claim_by_id["22"].answer and any(
        s.startswith("classifier.json") for s in claim_by_id["22"].sources
    )
    assert "optim.lr = 0.01" in claim_by_id["25"].answer and f"MLflow run {run_id}: params" in claim_by_id["25"].sources
    # what the records cannot say stays TODO
    for todo in ("5b", "10", "17", "18a", "19", "25", "26"):
        assert by_id[todo].status == "TODO", todo
    assert {claim_by_id[i].status for i in ("13", "21", "44")} == {"TODO"}
    offline = {i.id: i for i in fill_checklist("claim", records_of(eval_dir, None), "key").items}
    assert offline["25"].status == "TODO"  # no store: no training parameters, and no guess

    md = (tmp_path / "tripod-ai.md").read_text()
    assert "| 17 | Methods: ethical approval |" in md and "**TODO** (authors)" in md and "| 23a |" in md
    html = (tmp_path / "claim.html").read_text()
    assert 'data-item="44"' in html and "TODO (authors)" in html
    # no identifier of the cohort's patients (the synthetic DICOM carry fake names and IDs)
    source = Path(card.spec["images"])
    ds = pydicom.dcmread(next(p for p in sorted(source.rglob("*")) if p.is_file()))
    for phi in (str(ds.PatientName), str(ds.PatientID), str(ds.PatientName).split("^")[0]):
        assert len(phi) > 3
        for name in CHECKLISTS:
            for suffix in (".md", ".html"):
                assert phi not in (tmp_path / f"{name}{suffix}").read_text()
    # logged beside the report in the evaluated run
    logged = {a.path for a in MlflowClient(uri).list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/tripod-ai.md", "report/claim.html", "report/model-card.md"} <= logged


def test_a_misspelt_checklist_fails_before_the_report_is_written(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")  # never read: the option is checked first
    out = tmp_path / "r" / "report.html"
    result = CliRunner().invoke(app, ["report", str(tmp_path / "eval"), "--out", str(out), "--checklist", "tripodai"])
    assert result.exit_code == 2 and "--checklist 'tripodai' is not one of" in result.output, result.output
    assert not out.exists() and "report:" not in result.output
