"""When to trust a model, as the evaluate stage computes it: conformal prediction sets and a risk-controlled referral
rule fitted on the validation patients, evaluated on every set; ECE per subgroup and site; an optional per-site
temperature; and the sentences the report quotes.

The computations are :mod:`~medvision.evaluation.conformal`, :mod:`~medvision.evaluation.risk_control`,
:mod:`~medvision.evaluation.calibration` and :mod:`~medvision.evaluation.trust_text`; this module only decides what
they are fitted on and evaluated on, and turns their tables into the typed :class:`~.trust_document.Trust` record.

* **Fitted on** the labelled inlier validation images, never on an evaluation set (method spec §10).
* **Evaluated on** every requested set: the inlier images of the scored sets, every image of an outlier set (a
  held-out condition's image is never covered by a set, and an answered one is always wrong: that is what the
  model does with it). The promises hold where patients are exchangeable with validation (``val``, ``test``);
  every other set is flagged ``does_not_carry_over`` with how far it missed.
* **Skipped, with the reason recorded**, for a multi-label model (the sets and the referral rule are defined for
  one label per image), without labelled validation patients, or when the settings turn a part off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medvision.evaluation.bootstrap import Bootstrap
from medvision.evaluation.calibration import calibration_by_group, expected_calibration_error, fit_site_temperature
from medvision.evaluation.conformal import EXCHANGEABLE_SETS, conformal_table, fit_conformal
from medvision.evaluation.predict import Predictions
from medvision.evaluation.risk_control import RiskControlledAbstention, abstention_table
from medvision.evaluation.settings import EvaluationSettings
from medvision.evaluation.tables import detector_scores
from medvision.evaluation.trust_document import (
    AbstainRecord,
    ConformalRecord,
    GroupCalibration,
    SiteRecalibration,
    Trust,
    TrustSentences,
)
from medvision.evaluation.trust_text import abstention_sentence, coverage_sentence

__all__ = ["TrustInputs", "trust_record"]


@dataclass
class TrustInputs:
    """What one model's trust record is computed from.

    Attributes:
        classes: the inlier class names.
        positive: index of the positive class (``abstain.on: miss``).
        val: labelled inlier validation predictions (the calibration patients).
        sets: evaluation set name -> the predictions it is judged on (inliers of a scored set, every image of an
            outlier set), in the order of the settings.
        outlier_sets: which of ``sets`` are screened as out of distribution (no calibration tables there).
        detectors: the fitted feature-space OOD detectors (for ``abstain.ood``).
        multilabel: the head predicts several labels per image.
    """

    classes: list[str]
    positive: int
    val: Predictions
    sets: dict[str, Predictions]
    outlier_sets: list[str]
    detectors: dict[str, Any]
    multilabel: bool = False


def trust_record(inputs: TrustInputs, settings: EvaluationSettings) -> Trust:
    """The :class:`Trust` record of one model (see the module docstring for what is fitted where)."""
    skipped: dict[str, str] = {}
    why_not = _why_not(inputs)
    if why_not is not None:
        parts = ["conformal", "abstain", "calibration_by_group"]
        return Trust(skipped={p: why_not for p in parts})
    reference = next((s for s in ("test", *inputs.sets) if s in inputs.sets and s in EXCHANGEABLE_SETS), None)
    attributes = list(settings.subgroups)
    boots = {
        s: Bootstrap(p.frame["patient_id"].to_numpy(), n_resamples=max(settings.bootstrap, 1), seed=settings.seed)
        for s, p in inputs.sets.items()
    }
    conformal, coverage = None, pd.DataFrame()
    if settings.conformal.enabled:
        conformal, coverage = _conformal(inputs, settings, attributes, boots)
    else:
        skipped["conformal"] = "turned off (conformal.enabled: false)"
    abstain, abstention = None, pd.DataFrame()
    if not settings.abstain.enabled:
        skipped["abstain"] = "turned off (abstain.enabled: false)"
    else:
        missing = _missing_ood_score(inputs, settings)
        if missing:
            skipped["abstain"] = missing
        else:
            abstain, abstention = _abstain(inputs, settings, attributes, boots)
    scored = {s: p for s, p in inputs.sets.items() if s not in inputs.outlier_sets}
    by_group = {
        s: _group_calibration(p, attributes, settings.min_patients, boots[s]) for s, p in scored.items() if len(p.frame)
    }
    site = _site_recalibration(inputs, scored, settings.calibration.site) if settings.calibration.site else None
    sentences = TrustSentences(
        coverage=coverage_sentence(coverage, reference=reference, attribute=_named_attribute(attributes))
        if conformal is not None and reference
        else None,
        abstention=abstention_sentence(
            abstention, reference=reference, positive=inputs.classes[inputs.positive], ood=settings.abstain.ood
        )
        if abstain is not None and reference
        else None,
    )
    return Trust(
        reference=reference,
        conformal=conformal,
        abstain=abstain,
        calibration_by_group=by_group,
        site_recalibration=site,
        sentences=sentences,
        skipped=skipped,
    )


def _why_not(inputs: TrustInputs) -> str | None:
    if inputs.multilabel:
        return "multi-label model: conformal sets and the referral rule are defined for one label per image"
    if not len(inputs.val.frame):
        return "no labelled validation patients of the inlier classes to calibrate on"
    if not inputs.sets:
        return "no evaluation set with images to evaluate on"
    return None


def _named_attribute(attributes: list[str]) -> str:
    """The subgroup the coverage sentence names groups of: sex when audited, else the first plain attribute."""
    plain = [a for a in attributes if "*" not in a]
    return "sex" if "sex" in plain else next(iter(plain), "sex")


def _conformal(
    inputs: TrustInputs, settings: EvaluationSettings, attributes: list[str], boots: dict[str, Bootstrap]
) -> tuple[ConformalRecord, pd.DataFrame]:
    c, val = settings.conformal, inputs.val
    predictors = fit_conformal(
        val.probs,
        val.frame,
        target=c.target,
        mondrian=c.mondrian,
        score=c.score,
        randomized=c.randomized,
        seed=settings.seed,
    )
    thresholds = pd.concat(
        [p.thresholds_.assign(method=name) for name, p in predictors.items()], ignore_index=True
    ).astype({"category": str})
    coverage = pd.concat(
        [
            conformal_table(
                predictors,
                p.probs,
                p.frame,
                set_name=s,
                attributes=attributes,
                classes=inputs.classes,
                min_patients=settings.min_patients,
                bootstrap=boots[s],
            )
            for s, p in inputs.sets.items()
        ],
        ignore_index=True,
    )
    record = ConformalRecord(
        target=c.target,
        score=c.score,
        randomized=c.randomized,
        mondrian=list(c.mondrian),
        n_patients=int(val.frame["patient_id"].nunique()),
        thresholds=records(thresholds),
        coverage=records(coverage),
    )
    return record, coverage


def _missing_ood_score(inputs: TrustInputs, settings: EvaluationSettings) -> str | None:
    name = settings.abstain.ood
    if name is None:
        return None
    val = inputs.val  # the names detector_scores gives: output-space, the head's own, the fitted detectors
    own = [] if val.ood_score is None else [val.ood_score_name or "head"]
    known = ["msp", "max_logit", "energy", *own, *inputs.detectors]
    if name in known:
        return None
    return (
        f"abstain.ood is {name!r} but this model has no such score (it has {', '.join(sorted(known))}); "
        "name one of those, or null for confidence only"
    )


def _abstain(
    inputs: TrustInputs, settings: EvaluationSettings, attributes: list[str], boots: dict[str, Bootstrap]
) -> tuple[AbstainRecord, pd.DataFrame]:
    a, val, k = settings.abstain, inputs.val, len(inputs.classes)

    def ood(p: Predictions) -> np.ndarray | None:
        return None if a.ood is None else detector_scores(p, inputs.detectors, k)[a.ood]

    rule = RiskControlledAbstention(
        alpha=a.alpha, delta=a.delta, on=a.on, positive=inputs.positive, ood_rate=a.ood_rate, seed=settings.seed
    ).fit(val.probs, val.frame["label_idx"].to_numpy(), val.frame["patient_id"].to_numpy(), ood(val))
    table = pd.concat(
        [
            abstention_table(
                rule,
                p.probs,
                p.frame,
                set_name=s,
                ood_score=ood(p),
                attributes=attributes,
                min_patients=settings.min_patients,
                bootstrap=boots[s],
            )
            for s, p in inputs.sets.items()
        ],
        ignore_index=True,
    )
    record = AbstainRecord(
        alpha=a.alpha,
        delta=a.delta,
        on=a.on,
        positive_class=inputs.classes[inputs.positive],
        ood=a.ood,
        ood_rate=a.ood_rate,
        threshold=_finite(rule.threshold_),
        ood_threshold=_finite(rule.ood_threshold_),
        feasible=rule.feasible_,
        n_patients=int(rule.n_patients_),
        sets=records(table.drop(columns=["on", "alpha", "threshold", "ood_threshold"])),
    )
    return record, table


def _group_calibration(p: Predictions, attributes: list[str], min_patients: int, boot: Bootstrap) -> GroupCalibration:
    """ECE per subgroup and site of the set's (uncalibrated) probabilities, with the set's shared resamples."""
    cal = calibration_by_group(p.probs, p.frame, attributes=attributes, min_patients=min_patients, bootstrap=boot)
    return GroupCalibration(ece=records(cal.ece), reliability=records(cal.reliability))


def _site_recalibration(inputs: TrustInputs, scored: dict[str, Predictions], site: str) -> SiteRecalibration:
    """A temperature fitted on ``site``'s validation patients; ECE per site of every scored set before and after."""
    val = inputs.val
    scaler = fit_site_temperature(
        _log(val.probs), val.frame["label_idx"].to_numpy(), val.frame["site"].astype(str).to_numpy(), site
    )
    by_set = {}
    for s, p in scored.items():
        if not len(p.frame):
            continue
        y, after = p.frame["label_idx"].to_numpy(), scaler.predict_proba(_log(p.probs))
        sites = p.frame["site"].astype("string").fillna("unknown").astype(str).to_numpy()
        rows = []
        for group in ["all", *sorted(set(sites.tolist()))]:
            m = np.ones(len(y), bool) if group == "all" else sites == group
            rows.append(
                {
                    "group": group,
                    "n_images": int(m.sum()),
                    "ece_before": expected_calibration_error(y[m], p.probs[m]),
                    "ece_after": expected_calibration_error(y[m], after[m]),
                }
            )
        by_set[s] = rows
    return SiteRecalibration.model_validate(
        {"site": site, "temperature": float(scaler.temperature_), "ece_by_set": by_set}
    )


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None))


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as JSON-ready records: NaN and infinities become ``None`` (the document's "undefined"), numpy
    scalars plain Python, an empty flag or guarantee an empty string."""
    out = []
    for row in table.to_dict("records"):
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not np.isfinite(value):
                value = None
            if key in ("flag", "guarantee") and value is None:
                value = ""
            clean[key] = value
        out.append(clean)
    return out
