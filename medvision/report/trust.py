"""The report's "When to trust this model" section: its data (:class:`TrustSection`, filled from ``metrics.json``'s
``trust`` record by :mod:`.build`) and its display blocks (:func:`trust_blocks`).

It says, in plain language and in tables: what the conformal sets promise and how often they covered the true class
on every set and subgroup; which cases the referral rule answers, and the error (or miss rate) among them against
the promised bound; ECE per subgroup and site. Sets not exchangeable with the validation patients (a held-out site
or condition) are flagged wherever they appear: the promises do not carry over there, and the tables show how far
they missed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medvision.report import figures
from medvision.report._blocks import estimate, figure, num, para, table

__all__ = ["GUARANTEE_WORDS", "TrustSection", "trust_blocks"]

#: How a ``guarantee`` value reads in a table.
GUARANTEE_WORDS = {
    "holds": "holds",
    "below_target": "below target (beyond sampling error)",
    "above_alpha": "above the bound (beyond sampling error)",
    "not_promised": "not promised for a subgroup",
    "does_not_carry_over": "HELD-OUT: does not carry over",
    "vacuous": "none: too few calibration patients, every set holds all classes",
}
_COVERAGE = ("method", "set", "attribute", "group", "n_patients", "flag", "coverage", "coverage_low", "coverage_high",
             "mean_set_size", "singleton_rate", "guarantee")  # fmt: skip
_ABSTENTION = ("set", "attribute", "group", "n_patients", "flag", "referral_rate", "referral_rate_low",
               "referral_rate_high", "risk", "risk_low", "risk_high", "guarantee")  # fmt: skip
_RELIABILITY = ("attribute", "group", "confidence", "accuracy", "accuracy_low", "accuracy_high")
_CALIBRATION = ("set", "attribute", "group", "n_patients", "flag", "ece", "ece_low", "ece_high")


def _columns(v: Any, where: str, required: tuple[str, ...]) -> pd.DataFrame | None:
    if v is None:
        return None
    missing = [c for c in required if c not in v.columns] if isinstance(v, pd.DataFrame) else list(required)
    if missing:
        raise ValueError(f"trust.{where}: a DataFrame with columns {list(required)} is needed; missing {missing}")
    return v


class TrustSection(BaseModel):
    """What the section shows; every frame is optional (a part that was not computed is named in ``skipped``).

    Frames:
        coverage: the conformal coverage rows (``method``, ``set``, ``attribute``, ``group``, ``n_patients``,
            ``flag``, ``coverage`` / ``_low`` / ``_high``, ``mean_set_size``, ``singleton_rate``, ``guarantee``).
        abstention: the referral rows (``set``, ``attribute``, ``group``, ``n_patients``, ``flag``,
            ``referral_rate`` / ``_low`` / ``_high``, ``risk`` / ``_low`` / ``_high``, ``guarantee``).
        calibration: ECE per subgroup and site (``set``, ``attribute``, ``group``, ``n_patients``, ``flag``, ``ece``
            / ``_low`` / ``_high``).
        site_recalibration: ``set``, ``group``, ``ece_before``, ``ece_after`` (a temperature fitted on one site).
        reliability: the reliability bins per subgroup and site of the reference set (``attribute``, ``group``,
            ``confidence``, ``accuracy`` / ``_low`` / ``_high``).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    reference: str | None = None
    sentences: list[str] = Field(default_factory=list)
    target: float | None = None
    alpha: float | None = None
    #: ``error`` (errors among answered patients) or ``miss`` (misses of ``positive_class``).
    on: str = "error"
    positive_class: str | None = None
    coverage: Any = None
    abstention: Any = None
    calibration: Any = None
    site: str | None = None
    site_temperature: float | None = None
    site_recalibration: Any = None
    reliability: Any = None
    skipped: dict[str, str] = Field(default_factory=dict)

    @field_validator("coverage")
    @classmethod
    def _coverage(cls, v: Any) -> pd.DataFrame | None:
        return _columns(v, "coverage", _COVERAGE)

    @field_validator("abstention")
    @classmethod
    def _abstention(cls, v: Any) -> pd.DataFrame | None:
        return _columns(v, "abstention", _ABSTENTION)

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, v: Any) -> pd.DataFrame | None:
        return _columns(v, "calibration", _CALIBRATION)

    @field_validator("site_recalibration")
    @classmethod
    def _site(cls, v: Any) -> pd.DataFrame | None:
        return _columns(v, "site_recalibration", ("set", "group", "ece_before", "ece_after"))

    @field_validator("reliability")
    @classmethod
    def _reliability(cls, v: Any) -> pd.DataFrame | None:
        return _columns(v, "reliability", _RELIABILITY)

    @property
    def held_out_sets(self) -> list[str]:
        """Sets flagged ``does_not_carry_over`` in any table."""
        sets: list[str] = []
        for frame in (self.coverage, self.abstention):
            if frame is not None:
                sets += [str(s) for s in frame.loc[frame["guarantee"] == "does_not_carry_over", "set"]]
        return list(dict.fromkeys(sets))


def summary_sentence(section: TrustSection | None) -> tuple[str, bool] | None:
    """The one-page summary's line on when to trust the model: the section's own sentences (the promise and what
    was seen, per set), a concern when a set breaks it. ``None`` when no trust record was computed."""
    if section is None or not section.sentences:
        return None
    return " ".join(section.sentences), bool(section.held_out_sets)


def _verdict(row: pd.Series) -> str:
    flag = "" if pd.isna(row["flag"]) else str(row["flag"])
    return flag.replace("_", " ") if flag else GUARANTEE_WORDS.get(str(row["guarantee"]), str(row["guarantee"]))


def _whole(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["attribute"] == "all"]


def _groups(frame: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    return frame[(frame["attribute"] != "all") & (frame["set"] == reference)]


def trust_blocks(section: TrustSection | None) -> list[dict]:
    """The section's paragraphs, tables and figure; ``[]`` (the "not run" note) when there is no trust record."""
    if section is None:
        return []
    s = section
    blocks = [para(text) for text in s.sentences]
    held = s.held_out_sets
    if held:
        blocks.append(
            para(
                f"Held-out set(s) {', '.join(repr(h) for h in held)} are not exchangeable with the validation "
                "patients the promises were calibrated on: the guarantees do not carry over there. Their rows are "
                "marked HELD-OUT, with what was seen there, so that it is never read as meeting the promise."
            )
        )
    panels = []
    if s.coverage is not None and len(s.coverage):
        blocks += _coverage_blocks(s)
        whole = _whole(s.coverage)
        marginal = whole[whole["method"] == "marginal"]
        panels.append((_panel(marginal, "coverage"), float(s.target or marginal["coverage"].max()), "coverage"))
    if s.abstention is not None and len(s.abstention):
        blocks += _abstention_blocks(s)
        whole = _whole(s.abstention)
        what = "error among answered" if s.on == "error" else "miss rate"
        panels.append((_panel(whole, "risk"), float(s.alpha or 0), what))
    panels = [p for p in panels if len(p[0]) and p[0]["value"].notna().any()]
    if panels:
        blocks.append(
            figure(
                figures.promise_forest(panels),
                "Coverage of the prediction sets and risk of the referral rule per evaluation set, with 95% CIs, "
                "against what was promised",
                "Dashed: the promise. Hollow squares: held-out sets, where nothing was promised.",
            )
        )
    if s.calibration is not None and len(s.calibration):
        blocks.append(_calibration_table(s.calibration))
    if s.reliability is not None and s.reliability["accuracy"].notna().any():
        blocks.append(
            figure(
                figures.reliability_by_group(s.reliability),
                f"Reliability per subgroup and site on {s.reference or 'the reference set'} (uncalibrated "
                "probabilities): observed accuracy against confidence, 95% CIs over patients",
                "Dashed: perfect calibration. Points below it: over-confident. Groups with too few patients are "
                "left out (see the ECE table's flags).",
            )
        )
    if s.site_recalibration is not None and len(s.site_recalibration):
        blocks.append(_site_table(s))
    for part, reason in s.skipped.items():
        blocks.append(para(f"Not computed: {part.replace('_', ' ')} ({reason})."))
    return blocks


def _panel(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "label": frame["set"].astype(str).to_numpy(),
            "value": pd.to_numeric(frame[column], errors="coerce").to_numpy(float),
            "low": pd.to_numeric(frame[f"{column}_low"], errors="coerce").to_numpy(float),
            "high": pd.to_numeric(frame[f"{column}_high"], errors="coerce").to_numpy(float),
            "held_out": (frame["guarantee"] == "does_not_carry_over").to_numpy(bool),
        }
    )


def _coverage_blocks(s: TrustSection) -> list[dict]:
    cov = s.coverage
    target = f"{s.target:.0%}" if s.target is not None else "the target"
    rows = [
        [str(r["method"]), str(r["set"]), num(r["n_patients"], 0),
         estimate(r["coverage"], r["coverage_low"], r["coverage_high"]), num(r["mean_set_size"], 2),
         num(r["singleton_rate"]), _verdict(r)]
        for _, r in _whole(cov).iterrows()
    ]  # fmt: skip
    blocks = [
        table(
            f"Prediction sets at a {target} coverage target, per evaluation set (95% CI over patients)",
            ["sets", "evaluation set", "patients", "coverage (95% CI)", "mean set size", "singleton rate", "guarantee"],
            rows,
            numeric_from=2,
        )  # fmt: skip
    ]
    groups = _groups(cov, s.reference)
    if len(groups):
        blocks.append(
            table(
                f"Coverage per subgroup and class on '{s.reference}'",
                ["sets", "attribute", "group", "patients", "coverage (95% CI)", "mean set size", "guarantee"],
                (
                    [
                        str(r["method"]),
                        str(r["attribute"]),
                        str(r["group"]),
                        num(r["n_patients"], 0),
                        estimate(r["coverage"], r["coverage_low"], r["coverage_high"]),
                        num(r["mean_set_size"], 2),
                        _verdict(r),
                    ]
                    for _, r in groups.iterrows()
                ),  # fmt: skip
                numeric_from=3,
            )
        )
    return blocks


def _abstention_blocks(s: TrustSection) -> list[dict]:
    ab = s.abstention
    risk = "error among answered patients" if s.on == "error" else f"missed {s.positive_class or 'positives'}"
    bound = f"{s.alpha:.0%}" if s.alpha is not None else "α"

    def row(r: pd.Series, *lead: str) -> list[str]:
        return [
            *lead,
            num(r["n_patients"], 0),
            estimate(r["referral_rate"], r["referral_rate_low"], r["referral_rate_high"]),
            estimate(r["risk"], r["risk_low"], r["risk_high"]),
            _verdict(r),
        ]

    headers = ["patients", "referred (95% CI)", f"{risk} (95% CI)", "guarantee"]
    blocks = [
        table(
            f"Referral rule promising at most {bound} {risk}, per evaluation set",
            ["evaluation set", *headers],
            (row(r, str(r["set"])) for _, r in _whole(ab).iterrows()),
        )
    ]
    groups = _groups(ab, s.reference)
    if len(groups):
        blocks.append(
            table(
                f"Referral per subgroup on '{s.reference}' (the rule promises the whole population only)",
                ["attribute", "group", *headers],
                (row(r, str(r["attribute"]), str(r["group"])) for _, r in groups.iterrows()),
                numeric_from=2,
            )
        )
    return blocks


def _calibration_table(cal: pd.DataFrame) -> dict:
    return table(
        "ECE per subgroup and site (uncalibrated probabilities; 95% CI over patients)",
        ["evaluation set", "attribute", "group", "patients", "ECE (95% CI)", "flag"],
        (
            [
                str(r["set"]),
                str(r["attribute"]),
                str(r["group"]),
                num(r["n_patients"], 0),
                estimate(r["ece"], r["ece_low"], r["ece_high"]),
                "" if pd.isna(r["flag"]) else str(r["flag"]),
            ]
            for _, r in cal.iterrows()
        ),  # fmt: skip
        numeric_from=3,
    )


def _site_table(s: TrustSection) -> dict:
    t = f" (T = {s.site_temperature:.2f})" if s.site_temperature is not None and np.isfinite(s.site_temperature) else ""
    return table(
        f"ECE per site before and after a temperature fitted on site '{s.site}''s validation patients{t}",
        ["evaluation set", "site", "ECE before", "ECE after"],
        (
            [str(r["set"]), str(r["group"]), num(r["ece_before"]), num(r["ece_after"])]
            for _, r in s.site_recalibration.iterrows()
        ),
        numeric_from=2,
    )
