"""The trust settings (conformal sets, abstention, per-site recalibration) live in EvaluationSettings with every
default in one place: a misspelt key or value fails at load time with a did-you-mean, and names the cohort does not
have fail against its facts before anything is predicted."""

from __future__ import annotations

import pytest

from medvision.cohort.named_values import CohortFacts
from medvision.config import ConfigError, parse_config
from medvision.evaluation.settings import EvaluationSettings

FACTS = CohortFacts(
    labels=frozenset({"NORMAL", "PNEUMONIA"}),
    sites=frozenset({"Vienna", "Oslo", "Lyon"}),
    attributes=("sex", "age_band", "site", "skin_type"),
    heldout_sites=("Lyon",),
    source="cohort cxr",
)


def test_defaults_are_declared_once_and_match_the_issue_interface():
    s = EvaluationSettings()
    assert s.conformal.model_dump() == {
        "enabled": True,
        "target": 0.9,
        "mondrian": [],
        "score": "aps",
        "randomized": True,
    }
    assert s.abstain.model_dump() == {
        "enabled": True,
        "alpha": 0.05,
        "delta": 0.1,
        "on": "error",
        "ood": None,
        "ood_rate": 0.05,
    }
    assert s.calibration.site is None
    assert (s.min_positives, s.min_negatives) == (5, 5)  # a one-positive subgroup gets no interval by default
    raw = {"conformal": {"target": 0.9, "mondrian": ["sex", "site"]}, "abstain": {"alpha": 0.05, "on": "miss"}}
    parsed = parse_config({**raw, "calibration": {"site": "Oslo"}}, EvaluationSettings)
    parsed.check_against(FACTS)
    assert parsed.abstain.on == "miss" and parsed.conformal.mondrian == ["sex", "site"]


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        ({"conformal": {"taget": 0.9}}, [], r"conformal\.taget: unknown key\. Did you mean 'target'\?"),
        ({"conformall": {}}, [], r"conformall: unknown key\. Did you mean 'conformal'\?"),
        ({}, ["abstain.alhpa=0.1"], r"abstain\.alhpa'\. Did you mean 'alpha'\?"),
        ({"calibration": {"sit": "Oslo"}}, [], r"calibration\.sit: unknown key\. Did you mean 'site'\?"),
        ({"abstain": {"ood": "hdo"}}, [], r"abstain\.ood: .*unknown OOD score 'hdo'\. Did you mean 'hod'\?"),
        ({"abstain": {"on": "misses"}}, [], r"abstain\.on: Input should be 'error' or 'miss'"),
        ({"conformal": {"target": 1.5}}, [], r"conformal\.target: Input should be less than 1"),
        ({"conformal": {"mondrian": ["sex", "sex"]}}, [], r"lists a taxonomy twice"),
        ({"min_positives": 0}, [], r"min_positives: Input should be greater than or equal to 1"),
        ({}, ["min_negatives=-2"], r"min_negatives: Input should be greater than or equal to 1"),
        ({"min_positive": 3}, [], r"min_positive: unknown key\. Did you mean 'min_positives'\?"),
    ],
)
def test_a_typo_fails_at_load_time_naming_the_key_and_the_closest_spelling(raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, EvaluationSettings, overrides, source="pipelines/study.yaml")


def test_names_the_cohort_does_not_have_fail_against_its_facts():
    settings = EvaluationSettings(conformal={"mondrian": ["class*site", "sexx", "skin"]}, calibration={"site": "oslo"})
    with pytest.raises(ValueError) as err:
        settings.check_against(FACTS)
    text = str(err.value)
    assert "conformal.mondrian: subgroup attribute 'sexx' does not exist in cohort cxr; did you mean 'sex'?" in text
    assert "'skin'" in text and "did you mean 'skin_type'?" in text
    assert "calibration.site: site 'oslo' does not exist in cohort cxr; did you mean 'Oslo'?" in text
    assert "'class'" not in text and "'site'" not in text  # class and an existing column are accepted
    with pytest.raises(ValueError, match="'Lyon' is a held-out site: it has no validation patients"):
        EvaluationSettings(calibration={"site": "Lyon"}).check_against(FACTS)


def test_the_bare_yaml_key_on_means_on_not_true():
    from medvision.config import read_yaml

    raw = read_yaml("abstain: {alpha: 0.1, on: miss, ood: hod}\n", "evaluate.yaml")  # YAML 1.1: `on` is True
    assert True in raw["abstain"]
    parsed = parse_config(raw, EvaluationSettings, source="evaluate.yaml")
    assert parsed.abstain.on == "miss" and parsed.abstain.alpha == 0.1
