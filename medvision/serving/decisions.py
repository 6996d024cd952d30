"""The decisions an evaluation fixed on validation, applied to new cases: operating point, conformal set, referral.

Why from ``metrics.json`` and not refitted: the promises (coverage of the sets, the risk bound of the referral rule)
hold for the thresholds certified on the validation patients; a silent trial must apply exactly those. So the
conformal predictor and the referral rule are rebuilt from the recorded thresholds
(:meth:`~medvision.evaluation.conformal.ConformalClassifier.from_thresholds`,
:meth:`~medvision.evaluation.risk_control.RiskControlledAbstention.from_thresholds`) and applied to the probabilities
``predict`` computed, which are the ones evaluation computes for the same images.

Columns added to the predictions table: ``positive`` (the positive class called at the operating point),
``conformal_set`` (the classes of the marginal set, ``|``-separated; empty: the empty set), ``ood_flag`` (the OOD
score above the rule's τ̂) and ``refer`` (True: to a human reader).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medvision.errors import InputError
from medvision.evaluation.conformal import ConformalClassifier
from medvision.evaluation.document import (
    METRICS_FILE,
    AbstainRecord,
    ConformalRecord,
    Evaluation,
    ModelMetrics,
)
from medvision.evaluation.risk_control import RiskControlledAbstention

__all__ = ["DECISION_COLUMNS", "apply_evaluation", "evaluated_model"]

DECISION_COLUMNS = ("positive", "conformal_set", "ood_flag", "refer")


def evaluated_model(
    folder: str, classes: list[str], run_id: str | None, ood_score_name: str | None
) -> tuple[ModelMetrics, int]:
    """The evaluated model of ``folder`` that is this model (its run, else the primary one) and the seed, checked
    before any image is read (``ood_score_name``: the head's own OOD score, the only one predict computes).

    Raises:
        InputError: no ``metrics.json`` in ``folder`` (or one this medvision cannot read), the evaluation of a
            model with other classes, or a referral rule on an OOD score predict does not compute.
    """
    if not (Path(folder) / METRICS_FILE).is_file():  # the folder's name and the fix, not only a missing file's path
        raise InputError(
            f"--evaluation {folder}: {METRICS_FILE} does not exist there; give the folder `medvision evaluate RUN "
            "--out DIR` wrote for this model"
        )
    doc = Evaluation.open(folder).metrics  # a damaged or other-version file: DocumentError names it and the fix
    model = next((m for m in doc.models if run_id and m.run_id == run_id), doc.primary)
    if list(model.classes) != list(classes):
        raise InputError(
            f"--evaluation {folder}: model {model.name} has classes {model.classes}, this model {classes}; give the "
            "evaluation of this model"
        )
    if model.trust is not None and model.trust.abstain is not None:
        _check_rule_ood(model.trust.abstain, ood_score_name)
    return model, doc.settings.seed


def apply_evaluation(table: pd.DataFrame, model: ModelMetrics, seed: int, ood_score_name: str | None) -> pd.DataFrame:
    """``table`` with :data:`DECISION_COLUMNS` (each left out when the evaluation did not fix it).

    Raises:
        InputError: the referral rule uses an OOD score this model's predictions do not have (a feature-space
            detector): applying only half of it would break its promise.
    """
    out = table.copy()
    probs = out[[f"p:{c}" for c in model.classes]].to_numpy(dtype=float)
    if model.operating_point is not None:
        positive = model.classes.index(model.positive_class)
        out["positive"] = probs[:, positive] >= model.operating_point.threshold
    trust = model.trust
    if trust is not None and trust.conformal is not None:
        out["conformal_set"] = _conformal_sets(trust.conformal, probs, model.classes, seed)
    if trust is not None and trust.abstain is not None:
        rule = trust.abstain
        ood = None
        if rule.ood_threshold is not None:
            _check_rule_ood(rule, ood_score_name if "ood_score" in out.columns else None)
            ood = out["ood_score"].to_numpy(dtype=float)
            out["ood_flag"] = ood > rule.ood_threshold
        out["refer"] = RiskControlledAbstention.from_thresholds(rule.threshold, rule.ood_threshold).refer(probs, ood)
    return out


def _check_rule_ood(rule: AbstainRecord, ood_score_name: str | None) -> None:
    """Refuse a rule whose OOD part predict cannot apply: referring on confidence alone would break its promise."""
    if rule.ood_threshold is not None and rule.ood != ood_score_name:
        raise InputError(
            f"metrics.json: trust.abstain.ood is {rule.ood!r}, but predict computes only the head's OOD score "
            f"({ood_score_name or 'none'}); evaluate with --abstain-ood set to the head's score to apply the "
            "referral rule to new cases"
        )


def _conformal_sets(record: ConformalRecord, probs: np.ndarray, classes: list[str], seed: int) -> list[str]:
    """The marginal sets (the Mondrian ones need a new case's true class or subgroup, unknown here)."""
    rows = [t for t in record.thresholds if t.method == "marginal"]
    thresholds = pd.DataFrame(
        {
            "category": [t.category for t in rows],
            "label": [t.label for t in rows],
            "n_patients": [t.n_patients for t in rows],
            "n_images": [t.n_images for t in rows],
            "threshold": [np.inf if t.threshold is None else t.threshold for t in rows],
        }
    )
    cc = ConformalClassifier.from_thresholds(
        thresholds, len(classes), target=record.target, score=record.score, randomized=record.randomized, seed=seed
    )
    sets = cc.predict_set(probs)
    return ["|".join(c for c, inside in zip(classes, row, strict=True) if inside) for row in sets]
