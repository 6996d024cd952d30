"""Building a ``ReportContext``: a missing column or a bad choice is named when the context is made, not when it
is rendered, and the cohort section reads the cohort card as written by the cohort build.
"""

from __future__ import annotations

import numpy as np
import pytest
from report_factory import _perf, full_context

from medvision.report import CohortSection, OODSection, PerformanceSection, ReportContext, SaliencyCase, SummaryOptions


def test_context_names_missing_columns_and_bad_choices() -> None:
    table = _perf(np.random.default_rng(0), 0.9, 0.8).drop(columns=["high"])
    with pytest.raises(ValueError, match=r"performance\.table: missing column\(s\) \['high'\]"):
        PerformanceSection(table=table)
    with pytest.raises(ValueError, match=r"ood\.primary='knn'"):
        OODSection(detectors=full_context().ood.detectors, primary="knn")
    with pytest.raises(ValueError, match="category must be one of"):
        SaliencyCase(case_id="x", category="interesting", predicted_label="a", image=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="extra"):
        ReportContext(title="t", sumary=SummaryOptions())


def test_cohort_section_from_card() -> None:
    from medvision.cohort.card import CohortCard

    card = CohortCard(
        name="c",
        manifest_version=1,
        manifest_sha256="f" * 64,
        images=9,
        patients=4,
        quarantined=2,
        quarantine_reasons={"unreadable": 2},
        classes=["a", "b"],
        num_inlier_classes=2,
        class_counts={"a": 6, "b": 3},
        outlier_conditions=[],
        heldout_conditions=[],
        heldout_sites=[],
        label_fractions=[1.0],
        subgroups=["sex"],
        counts={
            "train": {
                "images": 7,
                "patients": 3,
                "by_label": {"a": 4, "b": 3},
                "by_subgroup": {"sex": {"F": {"a": 4}, "M": {"b": 3}}},
            },
            "test": {"images": 2, "patients": 1, "by_label": {"a": 2}, "by_subgroup": {"sex": {"F": {"a": 2}}}},
        },
        labels={},
        rules=[],
        pseudonym_key="test",
        spec={"preprocess": {"size": 32, "channels": 1}},
    )
    c = CohortSection.from_card(card)
    assert c.splits.set_index("split")["images"].to_dict() == {"train": 7, "test": 2}
    assert c.counts.groupby("split")["images"].sum().to_dict() == {"train": 7, "test": 2}
    assert c.subgroups.query("split == 'train' and value == 'M'")["images"].item() == 3
