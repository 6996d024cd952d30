"""A fine-tuned run as a MONAI bundle, the format a hospital's MONAI Deploy / Label side loads.

The bundle::

    configs/metadata.json    MONAI metadata: versions, class names, input (C, H, W) in [0, 1], output channels,
                             and the preprocessing recipe in words
    configs/classifier.json  the classifier card (:class:`medvision.classifier.ClassifierCard`): architecture,
                             classes, head and the preprocessing recipe its training images went through
    configs/inference.json   files in a folder -> medvision's readers + the recipe (:mod:`medvision.export.serving`)
                             -> network -> predictions.csv (one row per file) and rejected.csv (files refused, why)
    models/model.ts          the classifier as TorchScript (traced)
    docs/README.md           what the outputs mean

Preprocessing is the cohort build's own (DICOM display pipeline, 16-bit photos, BT.601 luma, area resizing,
pad or stretch, uint8 storage), run from the recipe in the card: a second implementation in MONAI transforms
would drift from training (train/serve skew), so running the bundle needs medvision installed (it is listed in
``required_packages_version``); the network itself is plain TorchScript.

The network returns one tensor ``(N, K)`` of class probabilities, or ``(N, K + 1)`` for heads with a
built-in OOD score (HOD), whose last channel is ``p_out``, the probability that the image shows none of
the K classes. One tensor, because MONAI's tools (``verify_net_in_out``, evaluators) expect one; the
channel definition in the metadata names every channel. Normalisation by the backbone's mean/std is
inside the network, as in medvision.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import Tensor, nn

from medvision._atomic import atomic_path, atomic_write_text
from medvision.classifier import ClassifierCard
from medvision.cohort.recipe import PreprocessRecipe
from medvision.tracking.model_ref import ModelRef
from medvision.tracking.pyfunc import load_run_classifier

__all__ = ["BUNDLE_SCHEMA", "SCHEMA_URL", "export_monai_bundle"]

#: The published MONAI metadata schema the bundle names; checking offline uses :data:`BUNDLE_SCHEMA`.
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
#: A local schema for the metadata fields medvision writes (``verify_metadata(..., filepath=BUNDLE_SCHEMA)``).
BUNDLE_SCHEMA = Path(__file__).with_name("monai_bundle_schema.json")


class _BundleNet(nn.Module):
    """Class probabilities, then ``p_out`` when the head has an OOD score, as one tensor."""

    def __init__(self, classifier: nn.Module, with_ood: bool) -> None:
        super().__init__()
        self.classifier = classifier
        self.with_ood = with_ood

    def forward(self, x: Tensor) -> Tensor:
        out = self.classifier(x)
        if self.with_ood:
            return torch.cat([out.probs, out.ood_score.unsqueeze(1)], dim=1)
        return out.probs


def export_monai_bundle(model: str | ModelRef, out: str | Path, tracking_uri: str | None = None) -> Path:
    """Write a fine-tuned classifier as a MONAI bundle into ``out``.

    Args:
        model: a model reference (:class:`~medvision.tracking.model_ref.ModelRef`): a run id, ``runs:/RUN_ID``,
            ``models:/NAME/VERSION`` or a saved classifier's folder.
        out: the bundle folder; must not exist or be empty.
        tracking_uri: the MLflow store; ``None`` uses $MLFLOW_TRACKING_URI / MLflow's default.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: there is no classifier at ``model``.
        FileExistsError: ``out`` holds files.
        ValueError: the classifier records no preprocessing recipe (trained by an older medvision, or on data that
            is not a cohort): a bundle would have to guess how to prepare images.
    """
    ref = ModelRef.parse(model)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the bundle")
    classifier, card = load_run_classifier(ref, tracking_uri=tracking_uri)
    recipe = card.preprocessing
    if recipe is None:
        raise ValueError(
            f"{ref}'s classifier records no preprocessing recipe (it was trained by an older medvision, or on a "
            "data module that is not a cohort), so a bundle would have to guess how to prepare images; re-run the "
            "fine-tune on a cohort with this medvision, then export it"
        )
    channels, height, width = recipe.input_shape
    classifier.eval()
    with torch.no_grad():
        probe = classifier(torch.rand(2, channels, height, width))
    with_ood = probe.ood_score is not None
    net = _BundleNet(classifier, with_ood).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.rand(2, channels, height, width), check_trace=False)
    outputs = [*card.classes, "p_out"] if with_ood else list(card.classes)
    with atomic_path(out / "models" / "model.ts") as tmp:
        traced.save(str(tmp))
    card.write(out / "configs" / "classifier.json")
    meta = _metadata(str(ref), card, recipe, outputs, _normalisation(classifier))
    atomic_write_text(out / "configs" / "metadata.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(out / "configs" / "inference.json", json.dumps(_inference(outputs), indent=2) + "\n")
    atomic_write_text(out / "docs" / "README.md", _readme(str(ref), card.classes, with_ood, recipe))
    atomic_write_text(out / "docs" / "metadata_schema.json", BUNDLE_SCHEMA.read_text())
    return out


def _normalisation(classifier: nn.Module) -> dict:
    backbone = classifier.backbone
    mean, std = getattr(backbone, "mean", None), getattr(backbone, "std", None)
    if isinstance(mean, Tensor) and isinstance(std, Tensor):
        return {
            "mean": [round(float(v), 6) for v in mean.flatten()],
            "std": [round(float(v), 6) for v in std.flatten()],
            "applied": "inside the network",
        }
    return {"applied": "inside the network"}


def _version(dist: str) -> str:
    try:
        return version(dist).split("+", 1)[0]
    except PackageNotFoundError:
        return "unknown"


def _metadata(source: str, card: ClassifierCard, recipe: PreprocessRecipe, outputs: list[str], norm: dict) -> dict:
    mv_version = _version("medvision")
    channels, height, width = recipe.input_shape
    classes = card.classes
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medvision {mv_version} from {source}"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        # the inference config prepares images with medvision's own readers and recipe (no second implementation)
        "required_packages_version": {"medvision": mv_version},
        "name": f"medvision classifier {source.rsplit('/', 1)[-1][:8]}",
        "task": "image classification with an out-of-distribution score"
        if len(outputs) > len(classes)
        else "image classification",
        "description": "A medvision fine-tuned classifier. Input: image files (DICOM, PNG 8/16-bit, JPEG, TIFF, "
        "BMP) prepared exactly as its training images were (configs/classifier.json holds the recipe); "
        f"normalisation (backbone mean/std) is inside the network. Head: {card.head.name}.",
        "authors": "medvision",
        "copyright": "See the licence of the training data and of the pretrained backbone weights.",
        "data_type": ", ".join(recipe.kinds) if recipe.kinds else "dicom, png, jpeg, tiff, bmp",
        "image_classes": f"{channels} channel(s), {height}x{width}, values in [0, 1]",
        "pred_classes": ", ".join(outputs),
        "intended_use": "Research use. Not a medical device.",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": channels,
                    "spatial_shape": [height, width],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): ("gray" if channels == 1 else "RGB"[i]) for i in range(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(outputs),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): name for i, name in enumerate(outputs)},
                }
            },
            "preprocessed_data_sources": {"image": {**recipe.model_dump(mode="json"), "normalisation": norm}},
        },
    }


def _inference(outputs: list[str]) -> dict:
    """A config ``monai.bundle.run`` executes: predict every readable file in ``dataset_dir`` into ``output_file``.

    Reading and preprocessing are medvision's (:mod:`medvision.export.serving`), from the recipe in
    ``configs/classifier.json``; files that cannot be read are listed in ``rejected_file``.
    """
    serving = "medvision.export.serving"
    return {
        "imports": ["$import os", "$import torch", "$from medvision.export import serving"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$os.path.join(@bundle_root, 'images')",
        "output_file": "$os.path.join(@bundle_root, 'predictions.csv')",
        "rejected_file": "$os.path.join(os.path.dirname(@output_file), 'rejected.csv')",
        "classifier_card": "$os.path.join(@bundle_root, 'configs', 'classifier.json')",
        "output_names": outputs,
        "network": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "datalist": {
            "_target_": f"{serving}.image_datalist",
            "folder": "@dataset_dir",
            "card_file": "@classifier_card",
            "rejected_file": "@rejected_file",
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": f"{serving}.PrepareImaged", "keys": "image", "card_file": "@classifier_card"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 16,
            "shuffle": False,
            "num_workers": 0,
        },
        "predictions": "$torch.cat([@network(b['image'].to(@device)).detach().cpu() for b in @dataloader]).numpy()",
        "run": ["$serving.write_predictions(@output_file, @datalist, @predictions, @output_names)"],
    }


def _readme(source: str, classes: list[str], with_ood: bool, recipe: PreprocessRecipe) -> str:
    channels, height, width = recipe.input_shape
    ood = (
        "\nThe last output channel is `p_out`: the probability that the image shows none of the classes "
        "(higher = more likely out of distribution); refer such images to a human.\n"
        if with_ood
        else ""
    )
    grey = "RGB photos are turned grey by BT.601 luma" if channels == 1 else "grey images are repeated to RGB"
    return (
        f"# medvision classifier ({source})\n\nInput: image files (DICOM, PNG 8/16-bit, JPEG, TIFF, BMP), "
        f"prepared as the training images were: read to [0, 1] (DICOM through its Modality LUT, VOI LUT or "
        f"window and polarity; 16-bit photos / 65535), {grey}, resized to {height}x{width} ({recipe.fit}; area "
        f"averaging when shrinking), stored as {recipe.storage}. The recipe is in configs/classifier.json; "
        f"medvision must be installed to run the bundle. Network input: {channels}-channel {height}x{width} "
        f"images with values in [0, 1]. Outputs: probabilities of {', '.join(classes)}.\n{ood}\n"
        "Predict a folder of images (predictions.csv: one row per file; rejected.csv: files refused, and why):"
        "\n\n    python -m monai.bundle run --config_file configs/inference.json "
        "--meta_file configs/metadata.json --bundle_root . --dataset_dir /path/to/images\n\n"
        "Check the bundle offline:\n\n    python -m monai.bundle verify_metadata --meta_file "
        "configs/metadata.json --filepath docs/metadata_schema.json\n    python -m monai.bundle "
        "verify_net_in_out network --meta_file configs/metadata.json --config_file configs/inference.json\n"
    )
