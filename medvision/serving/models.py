"""The model ``medvision predict`` serves: one run or a seed ensemble of runs, with its test-time augmentation,
loaded and checked before any image is read.

Why a check here and not after predicting: a cohort build reads, decodes and caches every file, and a PACS pull
moves them over the network; a model predict cannot serve faithfully must be refused before that work, with the
reason. What is refused:

* a model without a preprocessing recipe, or one that reads bags of images (:func:`model_recipe`, bag heads);
* ensemble members that disagree on their classes or their recipe: averaging probabilities of other classes is
  meaningless, and one cohort cannot be prepared two ways (the seed ensemble of
  :mod:`medvision.evaluation.seed_ensemble` is the same recipe from several seeds);
* with an evaluation, runs it did not evaluate as one model, or test-time augmentation other than its own
  (:class:`~medvision.serving.decisions.EvaluatedModel`): its thresholds were certified on that model's
  probabilities, computed that way, and the promise holds for no others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medvision.classifier import CARD_FILE, Classifier, ClassifierCard
from medvision.cohort.recipe import PreprocessRecipe
from medvision.config import parse_config
from medvision.errors import InputError
from medvision.evaluation.settings import TTASettings
from medvision.serving.decisions import EvaluatedModel, evaluated_model
from medvision.tracking import load_run_classifier
from medvision.tracking.model_ref import ModelRef
from medvision.tracking.store import open_client

__all__ = ["ServedModel", "load_models", "model_recipe"]


@dataclass(frozen=True)
class ServedModel:
    """The model(s) to predict with and what was checked before any image is read: the members (one for a single
    model), their shared recipe, the test-time augmentation to average over and, with an evaluation, the
    evaluated model whose decisions are applied."""

    refs: tuple[ModelRef, ...]
    #: Each member's MLflow run (a registered version resolved to its run); ``None`` for a folder.
    run_ids: tuple[str | None, ...]
    classifiers: tuple[Classifier, ...]
    #: The first member's card (the members share its classes and recipe).
    card: ClassifierCard
    recipe: PreprocessRecipe
    tta: TTASettings
    evaluated: EvaluatedModel | None

    @property
    def ref(self) -> ModelRef:
        """The first member (an ensemble's ``run_id`` in an evaluation is its first member's too)."""
        return self.refs[0]

    @property
    def classifier(self) -> Classifier:
        return self.classifiers[0]

    @property
    def members(self) -> tuple[str, ...]:
        """How records name the members: the run id, else ``folder:<name>`` (never a path)."""
        return tuple(r or f"folder:{Path(str(ref.path)).name}" for r, ref in zip(self.run_ids, self.refs))


def model_recipe(card: ClassifierCard, model: str) -> PreprocessRecipe:
    """The recipe in ``card`` (the classifier of ``model``).

    Raises:
        InputError: the card has no ``preprocessing`` field (trained on data that was not a medvision cohort, or
            saved by an older medvision): guessing it could prepare images unlike the training images.
    """
    if card.preprocessing is None:
        raise InputError(
            f"model {model}: its {CARD_FILE} has no 'preprocessing' field (the recipe: size, channels, fit, storage, "
            "frames, kinds), so its images cannot be prepared as in training; fine-tune it again on a medvision "
            "cohort (the recipe is recorded then), nothing was read"
        )
    return card.preprocessing


def load_models(
    models: str | Sequence[str],
    tracking_uri: str,
    *,
    evaluation: str | Path | None = None,
    tta: str | TTASettings | None = None,
) -> ServedModel:
    """Load ``models`` (one, or the members of a seed ensemble) and refuse, before any image is read, what predict
    cannot serve (see the module docstring).

    Args:
        models: :class:`~medvision.tracking.model_ref.ModelRef` texts; several are averaged as evaluation's seed
            ensemble averages its members.
        evaluation: the folder ``medvision evaluate`` wrote: the evaluated model is the one of these runs.
        tta: the test-time augmentation (``evaluate.tta``'s values); ``None``: the evaluation's own, else none.

    Raises:
        InputError: a bad ``tta`` (before any model is loaded), a run given twice, a model without a recipe, a
            bag model, members with other classes or recipes, an evaluation of another model or with other views.
    """
    asked = _parsed_tta(tta)
    refs = _refs([models] if isinstance(models, str) else list(models))
    loaded = [load_run_classifier(ref, tracking_uri=tracking_uri) for ref in refs]
    recipe = _agreed_recipe(refs, loaded)
    run_ids = tuple(_run_id(ref, tracking_uri) for ref in refs)
    twice = sorted({r for r in run_ids if r is not None and run_ids.count(r) > 1})
    if twice:  # e.g. a run and a registered version of it: the same weights, averaged twice
        raise InputError(
            f"run(s) {', '.join(twice)} given more than once (also through a registered model): a seed ensemble "
            "averages distinct runs; give each once"
        )
    classifier, card = loaded[0]
    evaluated = None
    if evaluation is not None:
        head_ood = getattr(classifier.head, "ood_score_name", None)
        evaluated = evaluated_model(str(evaluation), list(card.classes), run_ids, head_ood)
    applied = evaluated.checked_tta(asked) if evaluated is not None else asked or TTASettings()
    return ServedModel(refs, run_ids, tuple(c for c, _ in loaded), card, recipe, applied, evaluated)


def _parsed_tta(tta: str | TTASettings | None) -> TTASettings | None:
    """``tta`` as settings, a bad value refused with ``evaluate``'s own message."""
    if tta is None or isinstance(tta, TTASettings):
        return tta
    return parse_config({"preset": tta}, TTASettings, source="--tta")


def _refs(models: list[str]) -> tuple[ModelRef, ...]:
    """The parsed references, each once (an ensemble of a run with itself would weigh it twice)."""
    if not models:
        raise InputError("give a model to predict with (a run id, runs:/RUN_ID, models:/NAME/VERSION or a folder)")
    refs = tuple(ModelRef.parse(m) for m in models)
    twice = sorted({str(r) for r in refs if refs.count(r) > 1})
    if twice:
        raise InputError(
            f"model(s) {', '.join(twice)} given more than once: a seed ensemble averages distinct runs; give each once"
        )
    return refs


def _agreed_recipe(refs: Sequence[ModelRef], loaded: Sequence[tuple[Classifier, ClassifierCard]]) -> PreprocessRecipe:
    """The members' one recipe, each member checked: it has a recipe, writes one row per image, and has the first
    member's classes and recipe (the differing fields named)."""
    first_ref, (_, first) = refs[0], loaded[0]
    recipe = model_recipe(first, str(first_ref))
    for ref, (classifier, card) in zip(refs, loaded):
        if getattr(classifier.head, "takes_bags", False):
            raise InputError(
                f"{ref}: this model reads a bag of images per case (series, study or patient); predict writes one "
                "row per image. Evaluate it on a case-level cohort with `medvision evaluate` instead"
            )
        differ = _differences(card, model_recipe(card, str(ref)), first, recipe)
        if differ:
            raise InputError(
                f"model {ref}: {'; '.join(differ)} (model {first_ref}'s): the members of an ensemble must share their "
                "classes and their preprocessing recipe, its probabilities being averaged over one prepared image; "
                "give runs of one recipe, e.g. the seeds of one sweep. Nothing was read"
            )
    return recipe


def _differences(
    card: ClassifierCard, recipe: PreprocessRecipe, first: ClassifierCard, first_recipe: PreprocessRecipe
) -> list[str]:
    """What differs from the first member: its classes, else each field of the recipe (``field value, first's``)."""
    if list(card.classes) != list(first.classes):
        return [f"classes {list(card.classes)}, not {list(first.classes)}"]
    mine, theirs = recipe.model_dump(), first_recipe.model_dump()
    return [f"preprocessing.{k} {mine[k]!r}, not {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def _run_id(ref: ModelRef, tracking_uri: str) -> str | None:
    """The MLflow run of ``ref``: its own, a registered version's, ``None`` for a folder."""
    if ref.kind == "run":
        return ref.run_id
    if ref.kind == "registered":
        client = open_client(tracking_uri)
        if ref.alias:
            version = client.get_model_version_by_alias(str(ref.name), ref.alias)
        else:
            version = client.get_model_version(str(ref.name), str(ref.version))
        return version.run_id or None
    return None
