"""Hostile runs (issue 13.8, run layer): identifiers reaching the report. The report's identifier guard has
something to look for: the cohort's keyed fingerprints recognise its planted identifiers in any case or order.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import pytest


def test_the_report_guard_recognises_the_cohorts_planted_identifiers_by_fingerprint(synth_cxr_cohort, monkeypatch):
    import json

    from conftest import _TEST_PSEUDONYM_KEY

    from medvision.cohort.fingerprints import FINGERPRINTS_FILE, IdentifierFingerprints
    from medvision.report import ForbiddenValueError, ReportContext
    from medvision.report.guard import check_fingerprints

    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", _TEST_PSEUDONYM_KEY)
    planted = json.loads((synth_cxr_cohort.parent / "source" / "phi_planted.json").read_text())
    stored = (synth_cxr_cohort / FINGERPRINTS_FILE).read_text()
    assert not any(v in stored for values in planted.values() for v in values)  # fingerprints, not identifiers
    fingerprints, why_not = IdentifierFingerprints.for_cohort(synth_cxr_cohort)
    assert fingerprints is not None, why_not

    last, first, _ = planted["patient_names"][0].split("^")
    for leak in (
        f"Study of {planted['patient_ids'][0]}",
        f"accession {planted['accession_numbers'][0].lower()}",
        f"born {planted['birth_dates'][0]}",
        f"{first.title()} {last.title()} (follow-up)",
    ):
        with pytest.raises(ForbiddenValueError, match="field title contains an identifier"):
            check_fingerprints(ReportContext(title=leak), fingerprints)
    # ordinary words, a lone first name and pseudonyms pass
    check_fingerprints(ReportContext(title=f"{first.title()} does not match P-3f9a12 in 2024"), fingerprints)

    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", "ff" * 16)  # another key: fingerprints cannot be checked
    missing, why_not = IdentifierFingerprints.for_cohort(synth_cxr_cohort)
    assert missing is None and "pseudonym key" in why_not
