"""Where the model looked, as DICOM: one Secondary Capture image per predicted image (``predict --saliency``).

Why a Secondary Capture: a PACS viewer shows an image series beside the study it belongs to with nothing to install,
where a Structured Report can only say *what* was predicted. Each image is the Grad-CAM map of the predicted class
(Selvaraju et al., ICCV 2017; :func:`medvision.evaluation.saliency.saliency_maps`) blended over the model's own input
image (the cohort cache's pixels: what the model saw, at its size) by the report gallery's blend
(:func:`medvision.evaluation.overlay.overlay`), so the viewer and the report show the same picture. Grad-CAM, not
Integrated Gradients: one backward pass per image (IG takes 32), and a coarse map is what reads at a glance.

Every image is marked as a research output, not for diagnosis, in its Series Description and Image Comments (a
viewer shows one or the other), states its derivation, and references its source instance (Source Image Sequence,
purpose "Source image for image processing operation"; its frame when the source is multi-frame). The SCs of a study
are one new series of that study, beside the study's Structured Report, and name the patient and study exactly as the
report does: the identity :func:`medvision.cohort.source_instances` chose (pseudonymous unless the caller asked for
the source's identifiers); this module never reads a source file. Images whose source is not DICOM (photos) get
none: nothing could place them in a study.

The overlay keeps the source's rows and columns (the cache only resizes and pads), so it states the source's
Patient Orientation and laterality when the source states valid ones, and leaves them empty (unknown) otherwise,
never guessed. Laterality is written as Image Laterality (General Image, per instance), not as the series' Laterality:
one saliency series holds every image of a study, left and right alike.

As the study's report does, each image declares the character set its text needs
(:func:`~medvision.serving.dicom_results.declare_character_set`: UTF-8 when any of it, the patient's name included,
is not ASCII), and while it is built and written highdicom's and pydicom's warnings are not shown and their log
records are scrubbed of the source's identity values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import torch
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medvision._atomic import write_all
from medvision._version import __version__
from medvision.classifier import Classifier
from medvision.cohort.cohort import Cohort
from medvision.cohort.logscrub import scrubbed_output
from medvision.cohort.source_instances import identity_scrubber
from medvision.data.dataset import CohortDataset
from medvision.evaluation.overlay import COLORMAP, MAX_OPACITY, display_image, overlay
from medvision.evaluation.saliency import SaliencyMethod, saliency_maps
from medvision.io.dicom import _quiet
from medvision.serving.dicom_results import ModelIdentity, dataset_saver, declare_character_set

__all__ = [
    "METHOD",
    "NOT_FOR_DIAGNOSIS",
    "SERIES_NUMBER",
    "predicted_classes",
    "saliency_pictures",
    "write_saliency_images",
]

#: The attribution the images show.
METHOD: SaliencyMethod = "gradcam"
#: The Series Description of every saliency series (at most 64 characters, as DICOM's LO allows).
NOT_FOR_DIAGNOSIS = "medvision saliency map - research only, not for diagnosis"
#: The saliency series' number (the study's Structured Report is series 9000).
SERIES_NUMBER = 9001
#: Patient Orientation's letters for a biped (PS3.3 C.7.6.1.1.1): Anterior, Posterior, Right, Left, Head, Foot.
_BIPED_DIRECTIONS = frozenset("APRLHF")
#: The enumerated values of Image Laterality (R, L, unpaired, both) and of the series' Laterality (R, L).
_IMAGE_LATERALITIES = frozenset({"R", "L", "U", "B"})
_SERIES_LATERALITIES = frozenset({"R", "L"})
#: Images attributed and written at a time: memory stays bounded (images, gradients and pixel data of one chunk),
#: and each chunk's files are written whole before the next is computed.
_CHUNK = 32


def write_saliency_images(
    classifier: Classifier,
    cohort: Cohort,
    table: pd.DataFrame,
    rows: pd.DataFrame,
    sources: Mapping[str, Dataset],
    model: ModelIdentity,
    folder: Path,
    *,
    private: bool = False,
    map_of: str | None = None,
) -> list[Path]:
    """One saliency image per row of ``table`` (the public predictions) that has a source in ``sources``, as
    ``folder/<image pseudonym>.dcm`` (a file name never holds an identifier).

    Args:
        classifier: the model that made ``table``'s predictions.
        cohort / rows: the cohort predicted and its manifest rows (``image_id`` and ``cache_key`` of each image).
        sources: the identity of each DICOM image, keyed by ``image_id`` (:func:`~medvision.cohort.source_instances`).
        model: the model as the images name it (the study's Structured Report names it the same way).
        private: owner-only files (images that carry the source's identifiers).
        map_of: the member ``classifier`` is, when ``table`` is an ensemble's (or test-time views') prediction: the
            image says the map is that member's, on the unaugmented image, and the probability the ensemble's.

    Returns:
        The files, in ``table``'s order; each chunk of :data:`_CHUNK` images is written whole before the next is
        attributed, so a failure leaves only complete files.
    """
    shown = table[table["image_id"].isin(sources.keys())].reset_index(drop=True)
    manifest = rows.set_index("image_id").loc[shown["image_id"]].reset_index()
    series = {study: generate_uid() for study in shown["study_id"].unique()}  # one new series per study
    numbers = (shown.groupby("study_id", sort=False).cumcount() + 1).tolist()
    targets = predicted_classes(shown, model.classes)
    paths: list[Path] = []
    for start in range(0, len(shown), _CHUNK):
        part = slice(start, start + _CHUNK)
        pictures = saliency_pictures(classifier, cohort, manifest.iloc[part], targets[part])
        chunk = shown.iloc[part].to_dict("records")
        items = []
        # building (highdicom logs the source UID it copies from) and writing, scrubbed of the sources' identities
        with scrubbed_output(identity_scrubber(sources[row["image_id"]] for row in chunk)):
            for picture, row, k, number in zip(pictures, chunk, targets[part], numbers[part], strict=True):
                finding = (model.classes[k], float(row[f"p:{model.classes[k]}"]))
                reference = (sources[row["image_id"]], int(row["frame"]))
                ds = _saliency_image(
                    picture, reference, model, finding, series_uid=series[row["study_id"]], number=number
                )
                if map_of:
                    ds.ImageComments += (
                        f" The map is {map_of}'s, on the unaugmented image; the probability is the averaged "
                        "prediction's."
                    )
                items.append((folder / f"{row['image_id']}.dcm", picture.nbytes + 8192, dataset_saver(ds)))
            write_all(items, private=private)
        paths += [path for path, *_ in items]
    return paths


def predicted_classes(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Each row's most probable class: the logit column its map explains (as in the report's gallery)."""
    return table[[f"p:{c}" for c in classes]].to_numpy(dtype=np.float64).argmax(axis=1)


def saliency_pictures(classifier: Classifier, cohort: Cohort, rows: pd.DataFrame, targets: np.ndarray) -> np.ndarray:
    """The overlays of ``rows`` (manifest rows of ``cohort``), ``(N, H, W, 3)`` uint8: the Grad-CAM map of logit
    ``targets[i]`` blended over image ``i`` as the model read it (the cache's pixels: the model's size and channels).
    """
    dataset = CohortDataset(cohort, rows)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    maps = saliency_maps(classifier, images, [int(t) for t in targets], method=METHOD)
    return np.stack([overlay(display_image(image.numpy()), heat) for image, heat in zip(images, maps, strict=True)])


@_quiet  # highdicom warns with a Patient's Name of one component in the message; pydicom with a value it refuses
def _saliency_image(
    picture: np.ndarray,
    reference: tuple[Dataset, int],
    model: ModelIdentity,
    finding: tuple[str, float],
    *,
    series_uid: str,
    number: int,
) -> Dataset:
    """The Secondary Capture of one overlay (``picture``, uint8 ``(H, W, 3)``) of the source ``reference`` (its
    identity dataset and the 0-based frame predicted), explaining ``finding`` (the class and its probability).
    Build it inside :func:`~medvision.cohort.logscrub.scrubbed_output` of the source's identity: highdicom logs the
    UID of the instance it copies the patient from."""
    source, frame = reference
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,  # the patient and study, as source_instances chose them
        pixel_array=picture,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),  # highdicom wants one, of single letters; replaced below
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer="medvision",
        manufacturer_model_name=model.name[:64],
        software_versions=f"medvision {__version__}",
        series_description=NOT_FOR_DIAGNOSIS,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # The source's, when it states a valid one; else empty (type 2C: unknown): a guess could mislead a reader about
    # left and right.
    sc.PatientOrientation = _orientation(source) or []
    laterality = _laterality(source)
    if laterality:
        sc.ImageLaterality = laterality  # then the series' Laterality (type 2C) must be absent, as highdicom leaves it
    else:
        sc.Laterality = ""
    # The pixels are the source's: text burned into them (a name on an ultrasound, a screenshot) is in the overlay
    # too. "NO" only when the source says so; otherwise "YES", so a de-identification gate downstream looks.
    no_text = str(source.get("BurnedInAnnotation", "")).upper() == "NO"
    sc.BurnedInAnnotation = "NO" if no_text else "YES"
    sc.ImageComments = _comment(model, finding)
    sc.DerivationDescription = (
        f"Grad-CAM (Selvaraju et al. 2017) of the model's logit for the predicted class, blended (colour map "
        f"{COLORMAP}, opacity up to {MAX_OPACITY:.2f} following the attribution) over the image as the model read it"
    )
    sc.SourceImageSequence = [_source_item(source, frame)]
    # pseudonymous sources: say so, and how (as the report does), unless the pixels may carry identifying text
    if source.get("PatientIdentityRemoved") == "YES" and no_text:
        sc.PatientIdentityRemoved = "YES"
        sc.DeidentificationMethod = source.DeidentificationMethod
    return declare_character_set(sc)


def _orientation(source: Dataset) -> list[str] | None:
    """The source's Patient Orientation (row, then column direction) when it is two biped values of A P R L H F
    (oblique ones as several letters, ``["P", "FL"]``), else ``None``: absent, empty, malformed, or quadruped
    letters (another Anatomical Orientation Type, which this image does not state)."""
    if str(source.get("AnatomicalOrientationType", "") or "BIPED").strip() != "BIPED":
        return None
    value = source.get("PatientOrientation")
    values = [value] if isinstance(value, str) else list(value or [])
    directions = [str(v).strip() for v in values]
    if len(directions) == 2 and all(d and set(d) <= _BIPED_DIRECTIONS for d in directions):
        return directions
    return None


def _laterality(source: Dataset) -> str | None:
    """The source image's laterality: its Image Laterality (R, L, U, B), else its series' Laterality (R, L, which is
    every image's of that series), else ``None`` (absent or not an enumerated value)."""
    image = str(source.get("ImageLaterality", "") or "").strip()
    if image in _IMAGE_LATERALITIES:
        return image
    series = str(source.get("Laterality", "") or "").strip()
    return series if series in _SERIES_LATERALITIES else None


def _comment(model: ModelIdentity, finding: tuple[str, float]) -> str:
    name, probability = finding
    return (
        "RESEARCH SALIENCY MAP - NOT FOR DIAGNOSIS. Where the model looked, not why: the Grad-CAM attribution of "
        f"the predicted class '{name}' (probability {probability:.3f}) by model {model.name}, version "
        f"{model.version}, coloured over the image as the model read it. Use it to spot shortcuts (markers, text, "
        "devices), never to justify a diagnosis."
    )


def _source_item(source: Dataset, frame: int) -> Dataset:
    """The Source Image Sequence item of the image the map was computed on (its frame when multi-frame)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = frame + 1
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept(*codes.DCM.SourceImageForImageProcessingOperation)]
    return item
