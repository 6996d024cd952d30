"""The decisions an evaluation fixed on validation, applied to new cases: operating point, conformal set, referral.

Why from ``metrics.json`` and not refitted: the promises (coverage of the sets, the risk bound of the referral rule)
hold for the thresholds certified on the validation patients; a silent trial must apply exactly those. So the
conformal predictor and the referral rule are rebuilt from the recorded thresholds
(:meth:`~medvision.evaluation.conformal.ConformalClassifier.from_thresholds`,
:meth:`~medvision.evaluation.risk_control.RiskControlledAbstention.from_thresholds`) and applied to the probabilities
``predict`` computed, which are the ones evaluation computes for the same images. That holds only when predict
serves the model that was evaluated, computed the same way: so the evaluated model is the one whose members are
the runs given (a seed ensemble's mean for several), and predict averages over the evaluation's own test-time views
unless told otherwise, which is refused when it differs (:class:`EvaluatedModel`).

Columns added to the predictions table: ``positive`` (the positive class called at the operating point),
``conformal_set`` (the classes of the marginal set, ``|``-separated; empty: the empty set), ``ood_flag`` (the OOD
score above the rule's τ̂) and ``refer`` (True: to a human reader).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medvision.errors import InputError
from medvision.evaluation.conformal import ConformalClassifier
from medvision.evaluation.document import (
    METRICS_FILE,
    Evaluation,
    MetricsDocument,
    ModelMetrics,
    TTARecord,
)
from medvision.evaluation.risk_control import RiskControlledAbstention
from medvision.evaluation.settings import TTASettings
from medvision.evaluation.trust_document import AbstainRecord, ConformalRecord

__all__ = ["DECISION_COLUMNS", "EvaluatedModel", "apply_evaluation", "decision_notes", "evaluated_model"]

DECISION_COLUMNS = ("positive", "conformal_set", "ood_flag", "refer")


@dataclass(frozen=True)
class EvaluatedModel:
    """The evaluated model whose decisions predict applies, and how evaluation computed the probabilities they were
    certified on (the promise holds for those probabilities only, so predict must compute the same ones)."""

    metrics: ModelMetrics
    #: The evaluation's seed (the randomised conformal sets draw from it).
    seed: int
    #: The evaluation's test-time augmentation (a record of none for an evaluation written before it existed).
    tta: TTARecord
    folder: str

    @property
    def tta_settings(self) -> TTASettings:
        """The evaluation's views as settings, ``auto`` resolved as it was on the evaluation cohort: re-resolving
        it on the cases predicted (another modality) could give other views."""
        return self.tta.settings.model_copy(update={"preset": self.tta.preset})

    def checked_tta(self, asked: TTASettings | None) -> TTASettings:
        """The test-time augmentation predict applies: the evaluation's own, unless ``asked`` says otherwise.

        Raises:
            InputError: ``asked`` is not the evaluation's (as given, or as ``auto`` resolved).
        """
        if asked is None or asked in (self.tta.settings, self.tta_settings):
            return self.tta_settings
        given = self.tta.settings.preset
        theirs = given if given == self.tta.preset else f"{given}, here {self.tta.preset}"
        raise InputError(
            f"--tta {asked.preset}: --evaluation {self.folder} certified model {self.metrics.name}'s thresholds on "
            f"probabilities averaged over the views of tta {theirs} ({', '.join(self.tta.views)}), and its promises "
            "hold for those probabilities only; leave --tta out to apply the evaluation's own, or evaluate with "
            f"--tta {asked.preset} and give that folder"
        )


def evaluated_model(
    folder: str, classes: list[str], run_ids: Sequence[str | None], ood_score_name: str | None
) -> EvaluatedModel:
    """The evaluated model of ``folder`` that is the model predict serves, checked before any image is read
    (``ood_score_name``: the head's own OOD score, the only one predict computes).

    One model (``run_ids`` of one): the evaluated single model of that run. Several: the seed ensemble whose
    members are exactly those runs, in any order. A model given as a folder has no run to match and is refused.

    Raises:
        InputError: no ``metrics.json`` in ``folder`` (or one this medvision cannot read), a folder model, a run or
            runs the evaluation did not evaluate as one model, the evaluation of a model with other classes, or a
            referral rule on an OOD score predict does not compute.
    """
    if not (Path(folder) / METRICS_FILE).is_file():  # the folder's name and the fix, not only a missing file's path
        raise InputError(
            f"--evaluation {folder}: {METRICS_FILE} does not exist there; give the folder `medvision evaluate RUN "
            "--out DIR` wrote for this model"
        )
    doc = Evaluation.open(folder).metrics  # a damaged or other-version file: DocumentError names it and the fix
    one = len(run_ids) == 1
    model = _model_of_run(folder, doc, run_ids[0]) if one else _ensemble_of_runs(folder, doc, run_ids)
    if list(model.classes) != list(classes):
        raise InputError(
            f"--evaluation {folder}: model {model.name} has classes {model.classes}, this model {classes}; give the "
            "evaluation of this model"
        )
    if model.trust is not None and model.trust.abstain is not None:
        _check_rule_ood(model.trust.abstain, ood_score_name)
    tta = doc.settings.tta or TTARecord(settings=TTASettings(), preset="none", views=["identity"])
    return EvaluatedModel(model, doc.settings.seed, tta, folder)


def _model_of_run(folder: str, doc: MetricsDocument, run_id: str | None) -> ModelMetrics:
    """The single (not ensemble) model of ``doc`` that is the run ``run_id``.

    Raises:
        InputError: a model given as a folder (no run to match), or a run the evaluation did not evaluate: another
            seed of the same recipe has the same classes, but the thresholds were certified on other probabilities.
    """
    if run_id is None:
        raise InputError(
            f"--evaluation {folder}: an evaluated model is found by its MLflow run, and a model given as a folder has "
            "none; give the run the evaluation evaluated (RUN_ID, runs:/RUN_ID or models:/NAME/VERSION)"
        )
    model = next((m for m in doc.models if m.run_id == run_id and not m.ensemble_of), None)
    if model is None:
        evaluated = sorted({m.run_id for m in doc.models if not m.ensemble_of})
        raise InputError(
            f"--evaluation {folder} did not evaluate run {run_id} (it evaluated run(s) {', '.join(evaluated)}): its "
            "operating point, conformal sets and referral rule were certified on another model's probabilities. "
            f"Evaluate this run (`medvision evaluate {run_id} --out DIR`) and give that folder, or predict with one of "
            "those runs"
        )
    return model


def _ensemble_of_runs(folder: str, doc: MetricsDocument, run_ids: Sequence[str | None]) -> ModelMetrics:
    """The seed ensemble of ``doc`` whose members are the runs ``run_ids`` (order aside).

    Raises:
        InputError: a member is not a run (a folder), or no ensemble of the evaluation has exactly these members:
            its thresholds were certified on another model's probabilities.
    """
    if any(r is None for r in run_ids):
        raise InputError(
            f"--evaluation {folder}: an evaluated ensemble is found by its members' MLflow runs, and a model given "
            "as a folder has none; give every member as a run (RUN_ID, runs:/RUN_ID or models:/NAME/VERSION)"
        )
    names = {m.name: m.run_id for m in doc.models}
    ensembles = {m.name: sorted(names.get(n, n) for n in m.ensemble_of) for m in doc.models if m.ensemble_of}
    wanted = sorted(str(r) for r in run_ids)
    for m in doc.models:
        if ensembles.get(m.name) == wanted:
            return m
    have = "; ".join(f"{n}: {', '.join(runs)}" for n, runs in ensembles.items()) or "none"
    raise InputError(
        f"--evaluation {folder} did not evaluate runs {', '.join(wanted)} as one model (its seed ensembles: "
        f"{have}); its thresholds were certified on its own models' probabilities and hold for no other. Evaluate "
        "these runs together (`medvision evaluate RUN RUN ... --seed-ensemble --out DIR`) and give that folder, "
        "or predict with the runs of one of its models"
    )


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


def decision_notes(model: ModelMetrics) -> list[str]:
    """One line per decision column :func:`apply_evaluation` leaves out although an evaluation was given, saying why:
    a silent trial reading the table must not take a missing ``positive`` column for a lost one. The lines name
    only the class and the evaluation's recorded reason, never a case, run or folder."""
    if model.operating_point is not None:
        return []
    why = f" ({model.no_operating_point})" if model.no_operating_point else ""
    return [
        f"no `positive` column: the evaluation chose no operating point for {model.positive_class}{why}, so no "
        "threshold calls the positive class"
    ]


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
