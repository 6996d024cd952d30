"""The report says exactly what was tested (issue 12): the held-out sites and conditions by name, what the headline
AUROC is, sensitivity, specificity and calibration on every set, a label-shift adjustment that hurts shown as such,
no reassuring transfer sentence when in-distribution is at chance, and a report of another evaluation kept.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from report_dom import _chromium, _parse
from report_factory import full_context

from medvision.report import StudySection, render_report, summarize


def _study(**over) -> StudySection:
    per_set = pd.DataFrame(
        [
            {"eval_set": "test", "auroc_kind": "macro one-vs-rest over 3 classes", "auroc": 0.91,
             "positive_auroc": 0.88, "positive_low": 0.84, "positive_high": 0.92, "sensitivity": 0.80,
             "specificity": 0.75, "classes_absent": "", "abstention_excluded": 12},
            {"eval_set": "site_ood", "auroc_kind": "macro one-vs-rest over 2 classes", "auroc": 0.78,
             "positive_auroc": 0.70, "positive_low": 0.6, "positive_high": 0.8, "sensitivity": 0.78,
             "specificity": 0.17, "classes_absent": "bcc", "abstention_excluded": 3},
        ]
    )  # fmt: skip
    facts = {
        "heldout_sites": ["Vienna_dias"],
        "heldout_conditions": ["df", "vasc"],
        "abstention_classes": ["akiec"],
        "outlier_sets": ["condition_ood"],
        "classes": ["melanoma", "nevus", "bcc"],
        "positive_class": "melanoma",
        "calibration_chosen": "temperature-scaled",
        "label_shift_set": "site_ood",
        "per_set": per_set,
        "prevalence": pd.DataFrame(
            {
                "eval_set": ["test"] * 2 + ["site_ood"] * 2,
                "class": ["melanoma", "nevus"] * 2,
                "share": [0.2, 0.8, 0.5, 0.5],
            }
        ),  # fmt: skip
        "calibration": pd.DataFrame(
            {
                "eval_set": ["test", "test", "site_ood", "site_ood"],
                "method": ["uncalibrated", "temperature-scaled"] * 2,
                "ece": [0.12, 0.045, 0.069, 0.107],
            }
        ),  # fmt: skip
        "reliability": pd.DataFrame(
            {
                "eval_set": ["test"] * 2 + ["site_ood"] * 2,
                "method": ["uncalibrated"] * 4,
                "confidence": [0.6, 0.9] * 2,
                "accuracy": [0.55, 0.85, 0.3, 0.6],
                "count": [40, 60, 20, 30],
            }
        ),  # fmt: skip
        "label_shift": pd.DataFrame(
            {"metric": ["accuracy", "ece"], "before": [0.54, 0.05], "after": [0.16, 0.30], "change": [-0.38, 0.25]}
        ),
        "ood_by_group": pd.DataFrame(
            {"detector": ["hod_p_out"] * 2, "group": ["df", "vasc"], "n_images": [30, 9], "auroc": [0.91, 0.55]}
        ),
    }
    return StudySection(**(facts | over))


def test_the_summary_names_what_was_tested_in_headless_chromium(tmp_path: Path) -> None:
    full = full_context(ece=0.045)
    ctx = full.model_copy(
        update={"study": _study(), "ood": full.ood.model_copy(update={"outlier_sets": ["condition_ood"]})}
    )
    out = render_report(ctx, tmp_path / "study.html")
    summary = " ".join(_parse(_chromium(tmp_path, "--dump-dom", out.as_uri()).stdout).text["summary"].split())
    ood_text = " ".join(_parse(out.read_text(encoding="utf-8")).text["ood"].split())
    # the held-out sets by name, not "the other site" / "Outliers here: condition_ood"
    assert "held-out site(s) 'Vienna_dias' form the set 'site_ood'" in summary
    assert "held-out condition(s) 'df', 'vasc' form 'condition_ood'" in summary
    assert "abstention class(es) 'akiec'" in summary and "15 evaluation image(s) left out" in summary
    assert "At the held-out site(s) 'Vienna_dias' ('site_ood')" in summary and "the other site" not in summary
    assert "held-out conditions 'df', 'vasc' (condition_ood)" in ood_text
    # what the headline AUROC is, with the positive class's own AUROC, and an absent class
    assert "macro one-vs-rest over 3 classes" in summary and "For an average class" in summary
    assert "For melanoma against the rest, AUROC is 0.88 (95% CI 0.84–0.92)" in summary
    assert "positive case is ranked above" not in summary  # that gloss is about a binary AUROC
    assert "Class(es) bcc are absent from 'site_ood'" in summary
    # sensitivity and specificity on every set, and the collapse flagged
    assert "'test' sensitivity 0.80, specificity 0.75; 'site_ood' sensitivity 0.78, specificity 0.17" in summary
    assert "specificity falls from 0.75 on 'test' to 0.17 on 'site_ood'" in summary
    # prevalence behind the site gap
    assert "melanoma: 20% vs 50%" in summary and "case mix" in summary
    # calibration on every set, raw and scaled, the one chosen on validation
    assert "ECE 0.120 raw and 0.045 temperature-scaled" in summary and "chosen on validation" in summary
    assert "ECE per evaluation set: 'test' 0.045, 'site_ood' 0.107" in summary
    assert "poorly calibrated on 'site_ood'" in summary
    # label shift that makes things worse is a warning not to use its adjusted numbers
    assert "Label-shift adjustment makes things worse at 'site_ood' (accuracy 0.54 → 0.16" in summary
    assert "p(x|y) fixed" in summary and "do not use the adjusted numbers" in summary
    # OOD per held-out condition
    assert "By outlier group: df 0.91 (30 images), vasc 0.55 (9 images)" in summary


def test_calibration_section_covers_every_set_and_the_label_shift_comparison(tmp_path: Path) -> None:
    full = full_context(ece=0.045)
    plain = render_report(full, tmp_path / "plain.html")
    base_imgs = _parse(plain.read_text(encoding="utf-8")).imgs["calibration"]
    out = render_report(full.model_copy(update={"study": _study()}), tmp_path / "study.html")
    page = _parse(out.read_text(encoding="utf-8"))
    text = " ".join(page.text["calibration"].split())
    assert "ECE on every evaluation set" in text
    cells = text.replace(" ", "")  # table cells come out of the parser without separators
    assert "test0.1200.045" in cells and "site_ood0.0690.107" in cells
    # test's diagram is the one above; the held-out site gets its own
    assert "On 'site_ood'. Points on the diagonal" in text and "On 'test'." not in text
    assert page.imgs["calibration"] == base_imgs + 1
    # an adjustment that hurts is shown as the failure it is
    assert "makes things worse" in text and "not to be used" in text and "accuracy0.5400.160" in cells
    helpful = pd.DataFrame({"metric": ["accuracy", "ece"], "before": [0.54, 0.10], "after": [0.60, 0.05]})
    out = render_report(full.model_copy(update={"study": _study(label_shift=helpful)}), tmp_path / "helpful.html")
    text = " ".join(_parse(out.read_text(encoding="utf-8")).text["calibration"].split())
    assert "EM estimate of its class prior" in text and "makes things worse" not in text


def test_no_reassuring_transfer_sentence_when_in_distribution_is_at_chance() -> None:
    ctx = full_context(id_auroc=0.54, ood_auroc=0.53).model_copy(update={"study": _study()})
    text = " ".join(f.text for f in summarize(ctx).findings)
    assert "carried over" not in text and "near chance" in text
    assert summarize(ctx).finding("site_ood").concern


def test_a_report_of_another_evaluation_is_kept_not_overwritten(tmp_path: Path, monkeypatch) -> None:
    from medvision.evaluation.document import MetricsDocument
    from medvision.report import build

    monkeypatch.setattr(build, "context_from_evaluation", lambda d, **kw: full_context())
    first, second = tmp_path / "eval-a", tmp_path / "eval-b"
    for folder, boot in ((first, 100), (second, 1000)):
        MetricsDocument(
            code_version={"package": "0", "commit": None, "dirty": False, "label": "0", "key": "0"},
            cohort={"name": "c", "manifest_sha256": "0" * 64, "classes": ["a", "b"], "dir": str(tmp_path / "c")},
            settings={
                "sets": ["test"],
                "subgroups": [],
                "bootstrap": boot,
                "min_patients": 20,
                "referral_rate": 0.1,
                "seed": 0,
                "outlier_sets": [],
                "costs": {},
                "risk": {},
            },
            primary_model=None,
            models=[],
        ).write(folder / "metrics.json")
    out = tmp_path / "report" / "report.html"
    build.report_from_evaluation(first, out, title="a")
    build.report_from_evaluation(first, out, title="a")  # the same evaluation again: replaced in place
    assert sorted(p.name for p in out.parent.glob("*.html")) == ["report.html"]
    build.report_from_evaluation(second, out, title="b")
    kept = out.parent / f"report-{build.evaluation_key(first)}.html"
    assert kept.exists() and out.exists() and kept.read_text() == out.read_text()  # same fake context
    assert (out.parent / "report.html.evaluation").read_text().strip() == build.evaluation_key(second)
