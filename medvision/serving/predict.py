"""Predictions on new, unlabelled cases: a folder of images (a built cohort, or a PACS request) through a trained
classifier.

Why through a cohort build: a silent trial or a new site's archive is read, quarantined, pseudonymised and cached
exactly as the training cohort was (:func:`medvision.cohort.build.build_cohort` with no labels), and the
preprocessing is the model's own recipe (:class:`~medvision.cohort.recipe.PreprocessRecipe` in its
:class:`~medvision.classifier.ClassifierCard`), never retyped: train and serve cannot prepare an image differently.
The probabilities come from :func:`medvision.evaluation.predict.predict_rows`, the loop ``medvision evaluate`` uses,
so a case scored here gets the numbers evaluation would give it: several runs are combined as evaluation combines a
seed ensemble (:func:`~medvision.evaluation.seed_ensemble.mean_predictions`), and test-time augmentation averages
over evaluation's own views (:func:`~medvision.evaluation.tta.cohort_views`). Which model and views, and what is
refused before any image is read, is :mod:`medvision.serving.models`.

Outputs in ``out``: ``predictions.parquet`` and ``predictions.csv`` (one row per image, pseudonymous ids only:
``image_id``, ``patient_id``, ``study_id``, ``series_id``, ``frame``, the subgroup attributes, ``p:<class>`` and the
head's ``ood_score`` when it has one), ``quarantine.csv`` (every file not predicted, with its reason) and, for
``images`` and ``pacs``, the label-free cohort itself (``cohort/``: owner-only, it holds the file paths). With
``dicom_results``, ``dicom/<study pseudonym>.dcm``: one Comprehensive SR per study
(:mod:`medvision.serving.dicom_results`), pseudonymous unless ``for_source_pacs`` (then with the source's patient,
study and instance identifiers, owner-only, and never logged). With ``saliency``, also
``dicom/saliency/<image pseudonym>.dcm``: each image's saliency map as a Secondary Capture in a new series of its
study, named as the study's report names it (:mod:`medvision.serving.saliency_capture`; research only). With
``evaluation``, the operating point, conformal set and referral decision that evaluation fixed are columns of the
table (and of the reports).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from medvision._atomic import write_all
from medvision.classifier import Classifier, ClassifierCard
from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import Cohort, open_cohort
from medvision.cohort.identifiers import IdentifyingPathsError
from medvision.cohort.progress import counting
from medvision.cohort.recipe import PreprocessRecipe
from medvision.cohort.source_instances import source_instances
from medvision.cohort.spec import CohortSpec, FolderOptions, PacsSpec, load_pacs_spec, spec_from_folder
from medvision.errors import InputError
from medvision.evaluation.predict import Predictions, predict_rows
from medvision.evaluation.seed_ensemble import mean_predictions
from medvision.evaluation.settings import TTASettings
from medvision.evaluation.tta import TTAViews, cohort_views
from medvision.serving.decisions import apply_evaluation, decision_notes
from medvision.serving.dicom_results import ModelIdentity, study_reports, write_reports
from medvision.serving.models import ServedModel, load_models
from medvision.serving.saliency_capture import write_saliency_images
from medvision.serving.send import parse_send_target, send_reports
from medvision.sources.pacs import PullSummary, pull
from medvision.sources.pacs.store import pull_failures
from medvision.tracking.model_ref import ModelRef
from medvision.tracking.store import get_or_create_experiment, open_client

__all__ = ["PredictionResult", "label_free_spec", "predict"]

#: The pseudonymous keys of a predictions table, first in every row; nothing else identifies a case.
ID_COLUMNS = ("image_id", "patient_id", "study_id", "series_id", "frame")
#: Images predicted at once between two steps of the progress bar (each is a call of ``predict_rows``).
_CHUNK = 256
EXPERIMENT = "predict"


@dataclass(frozen=True)
class PredictionResult:
    """What :func:`predict` wrote: the folder, the table, the quarantined files (``relpath``/``file_number``,
    ``stage``, ``reason``) and the MLflow run."""

    out: Path
    predictions: pd.DataFrame
    quarantine: pd.DataFrame
    run_id: str
    ood_score_name: str | None
    #: The DICOM results (``dicom/*.dcm``), empty unless asked for; ``dicom_identifiers``: how they name the cases.
    dicom: tuple[Path, ...] = ()
    dicom_identifiers: str = "none"
    #: Reports the PACS stored (``send``).
    sent: int = 0
    #: The counts of the pull (``pacs``), None otherwise.
    pulled: PullSummary | None = None
    #: The models averaged (run ids; one for a single model) and the test-time views each was averaged over.
    members: tuple[str, ...] = ()
    tta: TTAViews | None = None
    #: The saliency images (``dicom/saliency/*.dcm``, Secondary Captures), empty unless asked for.
    saliency: tuple[Path, ...] = ()
    #: Decisions of the evaluation left out of the table, one line each, with why (:func:`decision_notes`): the
    #: terminal says them once, since a column that is absent says nothing by itself.
    notes: tuple[str, ...] = ()

    @property
    def files(self) -> list[Path]:
        """The tables (logged to MLflow; the DICOM results never are: they may hold the source's identifiers)."""
        return [self.out / "predictions.parquet", self.out / "predictions.csv", self.out / "quarantine.csv"]


def label_free_spec(images: Path, recipe: PreprocessRecipe, name: str | None = None, workers: int = 0) -> CohortSpec:
    """The spec of a cohort of ``images`` with no labels, prepared by ``recipe``: ``cohort build --images`` with the
    model's size, channels, fit, storage, frame policy, reader kinds and size cap in place of the defaults."""
    base = spec_from_folder(images, FolderOptions(size=recipe.size, channels=recipe.channels, kinds=recipe.kinds))
    raw = base.model_dump()
    raw["preprocess"] = recipe.spec.model_dump()
    raw["frames"] = recipe.frames
    if recipe.max_megapixels is not None:
        raw["max_megapixels"] = recipe.max_megapixels
    if name:
        raw["name"] = name
    raw["workers"] = workers
    return CohortSpec.model_validate(raw)


def predict(
    model: str | Sequence[str],
    out: str | Path,
    *,
    images: str | Path | None = None,
    cohort: str | Path | None = None,
    pacs: str | Path | None = None,
    tracking_uri: str,
    batch_size: int = 64,
    dicom_results: bool = False,
    for_source_pacs: bool = False,
    send: str | None = None,
    send_auth: str = "none",
    workers: int = 0,
    evaluation: str | Path | None = None,
    tta: str | TTASettings | None = None,
    saliency: bool = False,
) -> PredictionResult:
    """Predict every image of ``images`` (a folder), ``cohort`` (a built cohort) or ``pacs`` (a PACS request) with
    ``model``.

    Args:
        model: a :class:`~medvision.tracking.model_ref.ModelRef` (run id, ``runs:/ID``, ``models:/NAME/VERSION``,
            ``models:/NAME@ALIAS`` or a saved classifier's folder), or several: a seed ensemble, their outputs
            combined as evaluation combines one (:func:`~medvision.evaluation.seed_ensemble.mean_predictions`).
        out: the output folder (see the module docstring).
        images / cohort / pacs: exactly one: a folder of DICOM or photos, a cohort built by ``medvision cohort
            build``, or a YAML file holding a cohort spec's ``pacs:`` section, pulled into its store (resumable,
            scrubbed, failures quarantined: :func:`~medvision.sources.pacs.pull`) and predicted as ``images``.
        tracking_uri: the MLflow store the model is read from and the prediction run is logged to.
        workers: processes that index and decode the images (0: one per core), as a build's ``workers``.
        evaluation: the folder ``medvision evaluate`` wrote for this model: its operating point, conformal sets and
            referral rule are applied to every case (:mod:`medvision.serving.decisions`), and its test-time
            augmentation is the default (the thresholds were certified on those probabilities).
        tta: test-time augmentation, the values ``evaluate.tta`` takes (``auto``, ``photo``, ``radiograph``,
            ``none``): probabilities averaged over the views. ``None``: the evaluation's, else none.
        dicom_results: also write one Structured Report per study into ``out/dicom`` (DICOM images only).
        for_source_pacs: the reports carry the source's identifiers (to be stored back in the source PACS);
            implies ``dicom_results``. Otherwise they are pseudonymous.
        send / send_auth: where the reports are stored (:func:`send_reports`: a DICOMweb base URL, STOW-RS, or
            ``dimse://AE@host:port``, C-STORE) and how STOW-RS authenticates; implies ``for_source_pacs``.
        saliency: also write each DICOM image's saliency map as a Secondary Capture into ``out/dicom/saliency``
            (named as the reports name the study; sent with them); implies ``dicom_results``.

    Raises:
        InputError: not exactly one of ``images``/``cohort``/``pacs``, a bad ``send`` URL or ``pacs`` spec (before
            the model is loaded); a model without a recipe, a case-level (bag) model, ensemble members with other
            classes or recipes, an ``evaluation`` of another model or with other test-time views
            (:func:`~medvision.serving.models.load_models`: before any image is read or pulled); a cohort prepared
            differently from the model's images.
    """
    request = _checked_inputs(images, cohort, pacs, send, send_auth)
    out = Path(out).expanduser().resolve()
    checked = load_models(model, tracking_uri, evaluation=evaluation, tta=tta)  # before any image is read
    built, rows, quarantine, pulled = _cases(images, cohort, request, checked.recipe, out, workers)
    views = _served_views(checked, built)
    preds = _predict_in_chunks(checked.classifiers, built, rows, batch_size, views)
    table = _public_table(preds, rows, labelled=cohort is not None)
    notes: tuple[str, ...] = ()
    if checked.evaluated is not None:
        table = apply_evaluation(table, checked.evaluated.metrics, checked.evaluated.seed, preds.ood_score_name)
        notes = tuple(decision_notes(checked.evaluated.metrics))
    _write_tables(out, table, quarantine)
    for_source_pacs = for_source_pacs or send is not None
    dicom_results = dicom_results or saliency
    dicom: tuple[list[Path], list[Path]] = ([], [])  # the reports, the saliency images
    if dicom_results or for_source_pacs:
        dicom = _dicom_reports(
            out / "dicom", table, built, rows, checked, preds.ood_score_name, for_source_pacs, saliency
        )
    sent = send_reports([*dicom[0], *dicom[1]], send, auth=send_auth) if send is not None else 0
    mode = "original" if for_source_pacs else "pseudonymous" if dicom_results else "none"
    result = PredictionResult(out, table, quarantine, "", preds.ood_score_name, tuple(dicom[0]), mode, sent, pulled)
    result = replace(result, members=checked.members, tta=views, saliency=tuple(dicom[1]), notes=notes)
    run_id = _log_run(tracking_uri, checked, built, result)
    return replace(result, run_id=run_id)


def _served_views(checked: ServedModel, built: Cohort) -> TTAViews:
    """The test-time views of ``checked.tta`` on ``built``; with an evaluation, exactly the views its thresholds were
    certified on (the same settings can resolve to other views on images of another size or channels).

    Raises:
        InputError: the views differ from the evaluation's.
    """
    views = cohort_views(checked.tta, built)
    evaluated = checked.evaluated
    if evaluated is not None and views.names != list(evaluated.tta.views):
        raise InputError(
            f"--evaluation {evaluated.folder}: its thresholds were certified on the views "
            f"{', '.join(evaluated.tta.views)}, but on these images tta {checked.tta.preset} gives "
            f"{', '.join(views.names)}; predict images prepared like the evaluated cohort's (its size and channels), "
            "or evaluate again on such images"
        )
    return views


def _checked_inputs(
    images: str | Path | None, cohort: str | Path | None, pacs: str | Path | None, send: str | None, send_auth: str
) -> PacsSpec | None:
    """Refuse, before the model is loaded or a PACS is asked anything, what can be refused from the command line
    alone: not exactly one source of images, a ``--send`` URL that names no PACS, a ``--pacs`` spec with a typo
    (the cohort spec's own messages). Returns the PACS request of ``pacs``."""
    if sum(x is not None for x in (images, cohort, pacs)) != 1:
        raise InputError(
            "give exactly one of --images DIR (a folder of images), --cohort DIR (a built cohort) and --pacs SPEC "
            "(a PACS request: a cohort spec's pacs section)"
        )
    if send is not None:
        parse_send_target(send, send_auth)
    return None if pacs is None else load_pacs_spec(pacs)


def _cases(
    images: str | Path | None,
    cohort: str | Path | None,
    request: PacsSpec | None,
    recipe: PreprocessRecipe,
    out: Path,
    workers: int,
) -> tuple[Cohort, pd.DataFrame, pd.DataFrame, PullSummary | None]:
    """The cohort to predict (``images``, or the store ``request`` is pulled into, built label-free into
    ``out/cohort``; else ``cohort`` opened), its rows of the model's kinds, the quarantine (the build's and the rows
    of other kinds, and the instances a pull could not store) and the pull's counts."""
    pulled, failed = None, _no_failures()
    if request is not None:
        pulled = pull(request)
        images = Path(pulled.store) / "instances"
        failed = _pull_quarantine(Path(pulled.store))
    if images is not None:
        built, quarantine = _label_free_cohort(Path(images).expanduser().resolve(), recipe, out, workers)
    else:
        built, quarantine = _existing_cohort(Path(cohort).expanduser().resolve(), recipe)  # type: ignore[arg-type]
    rows, refused = _rows_of_kinds(built.manifest, recipe)
    parts = [q for q in (failed, quarantine, refused) if len(q)]
    return built, rows, pd.concat(parts, ignore_index=True) if parts else quarantine, pulled


def _no_failures() -> pd.DataFrame:
    return pd.DataFrame(columns=["relpath", "stage", "reason"])


#: Where a pull's failures are recorded, in the order :func:`pull_failures` numbers them.
_RECORDS = "quarantine.jsonl, then quarantine.d/ by name"


def _pull_quarantine(store: Path) -> pd.DataFrame:
    """The instances the pull could not store (still missing), as quarantine rows: so a case the PACS matched but
    predict never saw is listed with its reason in ``quarantine.csv``, as a build lists an unreadable file. They
    are named by their record in the store's owner-only ``quarantine.jsonl``, never by a DICOM UID."""
    failures = pull_failures(store)
    if not failures:
        return _no_failures()
    return pd.DataFrame(
        {
            "relpath": [f"(PACS instance: record {f.record} of the store's {_RECORDS})" for f in failures],
            "stage": "pull",
            "reason": [f.reason for f in failures],
        }
    )


def _dicom_reports(
    folder: Path,
    table: pd.DataFrame,
    built: Cohort,
    rows: pd.DataFrame,
    checked: ServedModel,
    ood_score_name: str | None,
    original: bool,
    saliency: bool,
) -> tuple[list[Path], list[Path]]:
    """One Structured Report per study of ``table`` into ``folder`` and, with ``saliency``, each image's saliency map
    into ``folder/saliency``: with the source's identifiers (owner-only) when ``original``, else pseudonymous."""
    sources, _ = source_instances(built, rows, original=original)
    identity = model_identity(checked.ref, checked.card, ood_score_name, checked.members)
    reports = write_reports(study_reports(table, sources, identity), folder, private=original)
    if not saliency:
        return reports, []
    # one map per image is what a reader can look at: an ensemble's (or an averaged-views prediction's) maps are
    # its first member's on the plain image, and each image says so
    averaged = len(checked.members) > 1 or checked.tta.preset != "none"
    map_of = f"member {checked.members[0]}" if averaged else None
    model, images = checked.classifier, folder / "saliency"
    return reports, write_saliency_images(
        model, built, table, rows, sources, identity, images, private=original, map_of=map_of
    )


def _write_tables(out: Path, table: pd.DataFrame, quarantine: pd.DataFrame) -> None:
    """``predictions.parquet``, ``predictions.csv`` and ``quarantine.csv`` in ``out``, all or none."""
    write_all(
        [
            (out / "predictions.parquet", int(table.memory_usage(deep=True).sum()), table.to_parquet),
            (out / "predictions.csv", 40 * table.size + 200, lambda p: table.to_csv(p, index=False)),
            (out / "quarantine.csv", 200 * (len(quarantine) + 1), lambda p: quarantine.to_csv(p, index=False)),
        ]
    )


def model_identity(
    ref: ModelRef, card: ClassifierCard, ood_score_name: str | None, members: Sequence[str] = ()
) -> ModelIdentity:
    """The model's name and version as a DICOM report states them: a registered model's own, else the run (or the
    folder's name) with the head and backbone. A seed ensemble (several ``members``) is versioned by a digest of
    its members' run ids: their list would overflow the 64 characters a DICOM version holds."""
    if len(members) > 1:
        digest = hashlib.sha256(",".join(sorted(members)).encode()).hexdigest()[:16]
        name, version = f"seed ensemble of {len(members)} runs", f"ensemble-{digest}"
    elif ref.kind == "registered" and ref.name:
        name, version = ref.name, ref.version or f"@{ref.alias}"
    elif ref.kind == "run" and ref.run_id:
        name, version = f"run {ref.run_id}", ref.run_id
    else:
        name, version = Path(str(ref.path)).name, "local"
    backbone = card.backbone.name if card.backbone else "unknown backbone"
    return ModelIdentity(f"{name} ({card.head.name} on {backbone})", version, list(card.classes), ood_score_name)


def _label_free_cohort(
    images: Path, recipe: PreprocessRecipe, out: Path, workers: int = 0
) -> tuple[Cohort, pd.DataFrame]:
    """The build of ``images`` with no labels into ``out/cohort`` (a re-run decodes only new files)."""
    if not images.is_dir():
        raise InputError(f"--images {images} is not a folder; give the folder of DICOM files or photos to predict")
    try:
        build_cohort(label_free_spec(images, recipe, workers=workers), out / "cohort")
    except IdentifyingPathsError as e:  # predict records every path: its results find their sources by them
        raise InputError(
            f"--images: {e.offending}. predict records each image's path (its DICOM results reference the "
            "source files by it), so rename those folders or files so that no path holds a patient identifier"
        ) from None
    built = open_cohort(out / "cohort")
    return built, pd.read_csv(out / "cohort" / "quarantine.csv")


def _existing_cohort(folder: Path, recipe: PreprocessRecipe) -> tuple[Cohort, pd.DataFrame]:
    """A built cohort whose images were prepared as the model's were (its cache holds them that way)."""
    try:
        built = open_cohort(folder)
    except FileNotFoundError:
        raise InputError(f"--cohort {folder} is not a built cohort (no cohort.json); build it first") from None
    theirs = built.card.recipe
    fields = ("size", "channels", "fit", "storage", "frames")
    differ = [
        f"{f}: cohort {getattr(theirs, f)!r}, model {getattr(recipe, f)!r}"
        for f in fields
        if getattr(theirs, f) != getattr(recipe, f)
    ]
    if differ:
        raise InputError(
            f"--cohort {folder} was prepared differently from the model's training images ({'; '.join(differ)}); "
            "predict with --images on its images folder instead (prepared with the model's recipe)"
        )
    path = folder / "quarantine.csv"
    return built, pd.read_csv(path) if path.exists() else pd.DataFrame(
        columns=["file_number", "relpath", "stage", "reason"]
    )


def _rows_of_kinds(manifest: pd.DataFrame, recipe: PreprocessRecipe) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the kinds the model was trained on, and the others as quarantine rows with the reason."""
    if recipe.kinds is None:
        return manifest.reset_index(drop=True), pd.DataFrame(columns=["relpath", "stage", "reason"])
    ok = manifest["kind"].isin(recipe.kinds)
    other = manifest[~ok]
    refused = pd.DataFrame(
        {
            "relpath": other["relpath"],
            "stage": "predict",
            "reason": [
                f"a {k} image, but the model was trained on {', '.join(recipe.kinds)} only" for k in other["kind"]
            ],
        }
    )
    return manifest[ok].reset_index(drop=True), refused.reset_index(drop=True)


def _predict_in_chunks(
    classifiers: Sequence[Classifier], built: Cohort, rows: pd.DataFrame, batch_size: int, views: TTAViews
) -> Predictions:
    """:func:`predict_rows` over ``rows`` in chunks, so a terminal shows a bar moving (a log shows nothing): each
    member averaged over ``views``, then the members combined as evaluation combines a seed ensemble."""
    parts: list[Predictions] = []
    advance: Callable[[int], None]
    with counting("predicting", len(rows)) as advance:
        for start in range(0, max(len(rows), 1), _CHUNK):
            chunk = rows.iloc[start : start + _CHUNK].reset_index(drop=True)
            members = [predict_rows(c, built, chunk, batch_size=batch_size, views=views.views) for c in classifiers]
            parts.append(members[0] if len(members) == 1 else mean_predictions(members))
            advance(len(chunk))
    return Predictions.concat(parts)


def _public_table(preds: Predictions, rows: pd.DataFrame, labelled: bool) -> pd.DataFrame:
    """The predictions keyed by pseudonymous ids (never the file path): ids first, then subgroups and outputs."""
    frame = preds.frame.copy()
    for c in ("study_id", "series_id", "frame"):
        frame[c] = rows[c].to_numpy()
    if not labelled:  # a label-free cohort: every row is "unlabelled", with no label
        frame = frame.drop(columns=[c for c in ("split", "label", "label_idx") if c in frame.columns])
    return frame[[*ID_COLUMNS, *[c for c in frame.columns if c not in ID_COLUMNS]]]


def _log_run(uri: str, checked: ServedModel, built: Cohort, result: PredictionResult) -> str:
    """One MLflow run per prediction: the model (an ensemble's members by run id), the test-time views, the recipe,
    counts and the three tables (no path, no identifier)."""
    client = open_client(uri)
    run = client.create_run(get_or_create_experiment(client, EXPERIMENT), run_name="predict")
    run_id = run.info.run_id
    ref, card, recipe = checked.ref, checked.card, checked.recipe
    params = {
        "model": ref.uri if ref.kind != "path" else "folder:" + Path(str(ref.path)).name,
        "classes": ",".join(card.classes),
        "head": card.head.name,
        "ood_score": result.ood_score_name or "none",
        "cohort.manifest_sha256": built.manifest_sha256,
        **{f"recipe.{k}": str(v) for k, v in recipe.model_dump().items()},
        **_served_params(checked, result.tta),
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)
    if ref.kind == "run" and ref.run_id:
        client.set_tag(run_id, "medvision.model_run_id", ref.run_id)
    client.log_metric(run_id, "images", float(len(result.predictions)))
    client.log_metric(run_id, "quarantined", float(len(result.quarantine)))
    client.log_param(run_id, "dicom_results", result.dicom_identifiers)
    client.log_metric(run_id, "dicom_reports", float(len(result.dicom)))
    client.log_metric(run_id, "dicom_sent", float(result.sent))
    client.log_metric(run_id, "dicom_saliency_images", float(len(result.saliency)))
    if result.pulled is not None:
        client.log_metric(run_id, "pacs_retrieved", float(result.pulled.retrieved))
        client.log_metric(run_id, "pacs_quarantined", float(result.pulled.quarantined))
    for path in result.files:
        client.log_artifact(run_id, str(path), "predictions")
    client.set_terminated(run_id)
    return run_id


def _served_params(checked: ServedModel, views: TTAViews | None) -> dict[str, str]:
    """What the probabilities are: the members averaged (run ids), the test-time views and, with an evaluation,
    the evaluated model whose decisions were applied."""
    params = {"members": ",".join(checked.members), "ensemble": "seed-mean" if len(checked.members) > 1 else "none"}
    if views is not None:
        params |= {"tta.requested": views.requested, "tta.preset": views.preset, "tta.views": ",".join(views.names)}
    if checked.evaluated is not None:
        params["evaluation.model"] = checked.evaluated.metrics.name
    return params
