"""Recipes: what a fine-tune config's ``recipe:`` names, the cohort fingerprint ``auto`` reads, and the document
that records why a recipe was chosen.

=================  =====================================================================================
``linear-probe``   L2 logistic regression on frozen embeddings, ``C`` by patient-grouped CV (:mod:`.probe`)
``lp-ft``          that probe initialises the head, then the whole network fine-tunes with a small learning
                   rate and layer-wise decay (Kumar et al., ICLR 2022)
``finetune``       the whole network from a fresh head (the classic transfer recipe; ``mode`` and
                   ``schedule`` as configured)
``auto``           a cohort fingerprint picks the candidates worth trying; each runs; validation decides
=================  =====================================================================================

The candidates rule (:func:`plan_candidates`) and the decision rule (``medvision.recipes``) are stated in their
docstrings with their literature; :class:`RecipeDecision` is the typed, versioned record of one ``auto`` choice,
written as an MLflow artifact (``recipe/decision.json``) and read by the report ("Why this recipe").
"""

from __future__ import annotations

import tempfile
from typing import ClassVar, Literal

import mlflow.artifacts
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from medvision._documents import Document
from medvision.training.probe import probe_supports

__all__ = [
    "DECISION_ARTIFACT",
    "FEW_LABELS_PER_CLASS",
    "FIXED_RECIPES",
    "CandidatePlan",
    "CandidateScore",
    "CohortFingerprint",
    "FixedRecipe",
    "Interval",
    "Recipe",
    "RecipeDecision",
    "decision_of_run",
    "fingerprint",
    "plan_candidates",
]

Recipe = Literal["auto", "linear-probe", "lp-ft", "finetune"]
FixedRecipe = Literal["linear-probe", "lp-ft", "finetune"]
#: Simplest first: each moves the pretrained features more than the one before it (none; a little, from the
#: probe, at a small decayed rate; everything, from a random head). ``auto`` keeps the simpler of two unless the
#: other is better on validation with its paired interval above zero.
FIXED_RECIPES: tuple[FixedRecipe, ...] = ("linear-probe", "lp-ft", "finetune")
#: At or below this many labelled patients in the rarest class, full fine-tuning is not a candidate.
FEW_LABELS_PER_CLASS = 20
#: Where an ``auto`` run keeps its decision (MLflow artifact path).
DECISION_ARTIFACT = "recipe/decision.json"


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CohortFingerprint(_Document):
    """What ``auto`` knows about the labelled training data before it trains anything (pseudonymous counts only).

    Counted on the run's own training rows (after ``data.label_fraction``); the image facts come from the cohort
    card. Patients are counted once per class: a patient's images are not independent evidence.
    """

    schema_version: Literal[1] = 1
    label_fraction: float
    #: The task (inlier) classes, in logit order.
    classes: list[str]
    images_per_class: dict[str, int]
    patients_per_class: dict[str, int]
    labelled_images: int
    labelled_patients: int
    #: Training images of the training outlier conditions (HOD's extra logits).
    outlier_images: int = 0
    image_size: int
    channels: int
    modality: str | None = None
    #: Distinct acquisition sites among the training rows.
    sites: int = 1
    #: Images of the rarest class over images of the commonest (1 = balanced).
    class_balance: float

    @property
    def min_patients_per_class(self) -> int:
        """Labelled patients of the rarest task class (0 when a class has none)."""
        return min((self.patients_per_class.get(c, 0) for c in self.classes), default=0)


def fingerprint(
    rows: pd.DataFrame,
    classes: list[str],
    *,
    label_fraction: float,
    image_size: int,
    channels: int,
) -> CohortFingerprint:
    """The fingerprint of a run's training rows (manifest rows with ``label_idx``, ``patient_id``, optional
    ``modality`` and ``site``).

    Args:
        rows: the labelled training rows of the run (after the label fraction).
        classes: the task classes (``label_idx`` ``0..K-1``); higher indices are training outlier conditions.
        label_fraction: recorded as given.
        image_size: the cohort cache's image side.
        channels: input channels.
    """
    k = len(classes)
    idx = rows["label_idx"].to_numpy()
    inlier = rows[(idx >= 0) & (idx < k)]
    images = {c: int((inlier["label_idx"] == i).sum()) for i, c in enumerate(classes)}
    patients = {c: int(inlier.loc[inlier["label_idx"] == i, "patient_id"].nunique()) for i, c in enumerate(classes)}
    counts = np.array(list(images.values()) or [0])
    modality = None
    if "modality" in rows.columns and rows["modality"].notna().any():
        modality = str(rows["modality"].mode().iloc[0])
    sites = int(rows["site"].nunique()) if "site" in rows.columns and rows["site"].notna().any() else 1
    return CohortFingerprint(
        label_fraction=label_fraction,
        classes=list(classes),
        images_per_class=images,
        patients_per_class=patients,
        labelled_images=len(inlier),
        labelled_patients=int(inlier["patient_id"].nunique()),
        outlier_images=int((idx >= k).sum()),
        image_size=image_size,
        channels=channels,
        modality=modality,
        sites=sites,
        class_balance=float(counts.min() / counts.max()) if counts.max() > 0 else 0.0,
    )


class CandidatePlan(_Document):
    """The recipes ``auto`` will try (simplest first) and the sentence that says why."""

    candidates: list[FixedRecipe]
    rule: str


def plan_candidates(fp: CohortFingerprint, head: str) -> CandidatePlan:
    """The recipes worth trying for this cohort, simplest first.

    The rule, and the evidence for it:

    * A head without a single linear layer (HET, HET-XL, multi-label) cannot take a logistic probe: ``finetune``
      alone.
    * The linear probe is always a candidate: it costs seconds on cached embeddings, and with few labels a frozen
      probe of a strong pretrained backbone is the model to beat (Woerner & Baumgartner 2024, "Navigating data
      scarcity using foundation models: a benchmark of few-shot and zero-shot learning approaches in medical
      imaging": with up to ~20 labels per class, linear probes of foundation models match or beat fine-tuning).
    * LP-FT is always a candidate next to it: fine-tuning from the probe's head at a small, layer-wise decayed rate
      keeps what the probe had while letting the features adapt (Kumar et al., ICLR 2022: about +1% in
      distribution and +10% out of distribution over fine-tuning from a random head).
    * Full fine-tuning from a fresh head joins only above :data:`FEW_LABELS_PER_CLASS` labelled patients in the
      rarest class: below that it distorts the pretrained features before the few labels can correct them (the
      two papers above), and BiT's step-based HyperRule (Kolesnikov et al. 2020, §3.3) is the schedule it needs
      once labels are enough.

    Validation then decides among the candidates; the rule only saves training runs that the literature says will
    not win.
    """
    if not probe_supports(head):
        return CandidatePlan(
            candidates=["finetune"],
            rule=f"head {head!r} has no single linear layer to hold a logistic probe: finetune is the only candidate",
        )
    n = fp.min_patients_per_class
    if n <= FEW_LABELS_PER_CLASS:
        return CandidatePlan(
            candidates=["linear-probe", "lp-ft"],
            rule=(
                f"{n} labelled patients in the rarest class (<= {FEW_LABELS_PER_CLASS}): linear probe and LP-FT "
                "only; with so few labels full fine-tuning distorts the pretrained features before it helps "
                "(Woerner & Baumgartner 2024; Kumar et al. 2022)"
            ),
        )
    return CandidatePlan(
        candidates=list(FIXED_RECIPES),
        rule=(
            f"{n} labelled patients in the rarest class (> {FEW_LABELS_PER_CLASS}): linear probe, LP-FT and full "
            "fine-tuning with a step-based schedule (BiT-HyperRule, Kolesnikov et al. 2020 §3.3)"
        ),
    )


class Interval(_Document):
    """A point estimate with its bootstrap percentile interval; ``None`` where undefined (an AUROC of a validation
    set that holds one class only)."""

    point: float | None
    low: float | None
    high: float | None


class CandidateScore(_Document):
    """One candidate of an ``auto`` choice: its run, its validation score and how it fared against the incumbent."""

    recipe: FixedRecipe
    run_id: str | None
    #: Validation macro AUROC (patient-level bootstrap interval).
    val_auroc: Interval
    #: The simpler recipe it was compared with (``None`` for the first candidate).
    versus: FixedRecipe | None = None
    #: This candidate minus ``versus`` on the same resampled patients (paired).
    difference: Interval | None = None
    #: Whether it replaced ``versus`` (its paired interval lies above zero).
    adopted: bool = False


class RecipeDecision(Document):
    """Why an ``auto`` run holds the model it holds: fingerprint, candidates, rule, the winner.

    Written once by the ``auto`` run (``recipe/decision.json`` among its MLflow artifacts); read by the report.
    Only validation data went into it: test is never looked at to choose. Read and written through
    :class:`medvision._documents.Document` (:meth:`read` names the file and the fix when it cannot read one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    document: ClassVar[str] = "recipe decision (recipe/decision.json)"
    remedy: ClassVar[str] = "re-run the auto fine-tune with this medvision to record it again"

    schema_version: Literal[1] = 1
    fingerprint: CohortFingerprint
    #: Why these candidates (:func:`plan_candidates`).
    candidates_rule: str
    #: How the winner was chosen among them.
    decision_rule: str
    candidates: list[CandidateScore]
    winner: FixedRecipe
    winner_run_id: str | None
    metric: str = "validation macro AUROC (inlier classes)"
    val_images: int
    val_patients: int
    n_resamples: int = Field(ge=1)
    confidence: float = Field(gt=0, lt=1)
    seed: int = 0


def decision_of_run(run_id: str, tracking_uri: str | None = None) -> RecipeDecision | None:
    """The decision an ``auto`` run recorded (``recipe/decision.json``), or ``None`` for a run of a fixed recipe.

    What the evaluation and the report read to say "Why this recipe" for a model.

    Raises:
        ValueError: the run has a decision this medvision cannot read (another schema version).
    """
    with tempfile.TemporaryDirectory(prefix="medvision-decision-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=DECISION_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
            )
        except (MlflowException, OSError):
            return None
        return RecipeDecision.read(local)
