"""The clinical HTML report: rendered from synthetic numbers and checked in a real headless Chromium. Every section
in order with a figure, a note where a stage did not run, refusal to render a planted identifier, escaped values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_dom import _chromium, _parse
from report_factory import full_context

from medvision.report import (
    NOT_RUN_NOTES,
    SECTION_HEADINGS,
    SECTIONS,
    DataEfficiencySection,
    ForbiddenValueError,
    ReportContext,
    render_report,
)

FAKE_PATIENT = "Hendrickx^Marguerite"  # a planted identifier; the report must refuse it wherever it appears
# Sections whose content is text only (the summary box, the reproducibility footer): every other section with data
# must show at least one figure.
TEXT_ONLY = {"summary", "reproducibility"}


def test_full_report_in_headless_chromium(tmp_path: Path) -> None:
    out = render_report(full_context(), tmp_path / "report" / "report.html", forbidden=[FAKE_PATIENT])
    html = out.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # nothing fetched (or even linked) from outside
    assert "<link" not in html and "<script" not in html

    shot = tmp_path / "report.png"
    dom = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", "--dump-dom", out.as_uri()).stdout
    sec = _parse(dom)
    assert sec.order == [sid for sid, _ in SECTIONS]
    assert [sec.h2[sid].strip() for sid in sec.order] == list(SECTION_HEADINGS)
    for sid in sec.order:
        if sid not in TEXT_ONLY:
            assert sec.imgs[sid] >= 1, f"section {sid} has data but no figure"
        assert "Not run in this pipeline" not in sec.text[sid], sid
    # saliency: per case the image plus both overlays
    assert sec.imgs["saliency"] == 4 * 3
    # summary numbers come from the context
    assert "0.91 (95% CI 0.88–0.94)" in sec.text["summary"]
    assert "catch 62% of the outliers" in sec.text["summary"]  # 6.2 x 10% on the deployed detector's curve
    assert "age_band = 80+" in sec.text["summary"]
    assert "site = B" in sec.text["summary"]  # the flagged group is named as a caveat
    assert "ab" * 32 in sec.text["cohort"] and "3f2a1c9" in sec.text["reproducibility"]

    img = Image.open(shot)
    assert img.format == "PNG" and img.size == (1200, 2400)
    px = np.asarray(img.convert("RGB")).astype(np.int32)
    colours = np.unique((px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2])
    assert px.std() > 10 and len(colours) > 100  # text, palette colours and figures, not a blank page


def test_missing_sections_render_not_run_notes(tmp_path: Path) -> None:
    full = full_context()
    ctx = ReportContext(
        title="Partial run",
        performance=full.performance,
        data_efficiency=DataEfficiencySection(curve=full.data_efficiency.curve.iloc[:0]),
    )
    html = render_report(ctx, tmp_path / "partial.html").read_text(encoding="utf-8")
    sec = _parse(html)
    assert [sec.h2[sid].strip() for sid in sec.order] == list(SECTION_HEADINGS)
    for sid in ("cohort", "training", "calibration", "ood", "subgroups", "trust", "data-efficiency", "saliency"):
        assert NOT_RUN_NOTES[sid] in sec.text[sid], sid
        assert sec.imgs[sid] == 0, f"{sid}: an absent section must not draw a figure"
    assert sec.imgs["performance"] >= 1 and "Not run" not in sec.text["performance"]
    assert "Calibration was not measured" in sec.text["summary"]


def _in_title(c: ReportContext, v: str) -> None:
    c.title = f"Report for {v}"


def _in_run_id(c: ReportContext, v: str) -> None:
    c.training.stages[1].mlflow_run_id = v


def _in_table_cell(c: ReportContext, v: str) -> None:
    c.subgroups.table.loc[2, "group"] = v.upper()  # matching ignores case


def _in_case_id(c: ReportContext, v: str) -> None:
    c.saliency.cases[3].case_id = v


def _in_config(c: ReportContext, v: str) -> None:
    c.reproducibility.config_yaml = f"note: {v}\n"


def _in_dict_key(c: ReportContext, v: str) -> None:
    c.cohort.quarantine_reasons[f"bad file of {v}"] = 1


@pytest.mark.parametrize(
    ("field", "put"),
    [
        ("title", _in_title),
        ("training.stages[1].mlflow_run_id", _in_run_id),
        ("subgroups.table[row 2, column 'group']", _in_table_cell),
        ("saliency.cases[3].case_id", _in_case_id),
        ("reproducibility.config_yaml", _in_config),
        ("cohort.quarantine_reasons (key)", _in_dict_key),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_planted_identifier_refuses_to_render(tmp_path: Path, field: str, put) -> None:
    ctx = full_context()
    put(ctx, FAKE_PATIENT)
    out = tmp_path / "leak.html"
    with pytest.raises(ForbiddenValueError) as err:
        render_report(ctx, out, forbidden=["1970-01-01", FAKE_PATIENT])
    msg = str(err.value)
    assert field in msg and "#2" in msg
    assert FAKE_PATIENT.casefold() not in msg.casefold()  # the error must not leak what it found
    assert not out.exists()


def test_values_are_escaped(tmp_path: Path) -> None:
    ctx = ReportContext(title="<b>bold</b> & co", subgroups=full_context().subgroups)
    ctx.subgroups.table.loc[0, "group"] = "<script>alert(1)</script>"
    html = render_report(ctx, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold" not in html and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html
