"""A fine-tuned run as a MONAI bundle, the format a hospital's MONAI Deploy / Label side loads.

The bundle::

    configs/metadata.json   MONAI metadata: versions, class names, input (C, H, W) in [0, 1], output channels
    configs/inference.json  PNG folder -> LoadImage -> channel first -> resize -> scale to [0, 1] -> network
                            -> predictions.csv (one row per image, one column per output channel)
    models/model.ts         the classifier as TorchScript (traced): no medvision needed to run it
    docs/README.md          what the outputs mean

The network returns one tensor ``(N, K)`` of class probabilities, or ``(N, K + 1)`` for heads with a
built-in OOD score (HOD), whose last channel is ``p_out``, the probability that the image shows none of
the K classes. One tensor, because MONAI's tools (``verify_net_in_out``, evaluators) expect one; the
channel definition in the metadata names every channel. Normalisation by the backbone's mean/std is
inside the network, as in medvision, so preprocessing only has to bring pixels to ``[0, 1]``.
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import Tensor, nn

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


def export_monai_bundle(run_id: str, out: str | Path, tracking_uri: str | None = None) -> Path:
    """Write the classifier of fine-tuning run ``run_id`` as a MONAI bundle into ``out``.

    Args:
        run_id: an MLflow run that logged a classifier (a fine-tuning run).
        out: the bundle folder; must not exist or be empty.
        tracking_uri: the MLflow store; ``None`` uses $MLFLOW_TRACKING_URI / MLflow's default.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: the run has no classifier.
        FileExistsError: ``out`` holds files.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the bundle")
    classifier, card = load_run_classifier(run_id, tracking_uri=tracking_uri)
    if not card.get("input_shape"):
        raise ValueError(
            f"run {run_id}'s classifier does not record its input shape (C, H, W); re-run the "
            "fine-tune with this medvision to export it"
        )
    channels, height, width = (int(v) for v in card["input_shape"])
    classes = list(card["classes"])
    classifier.eval()
    with torch.no_grad():
        probe = classifier(torch.rand(2, channels, height, width))
    with_ood = probe.ood_score is not None
    net = _BundleNet(classifier, with_ood).eval()
    example = torch.rand(2, channels, height, width)
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
    outputs = [*classes, "p_out"] if with_ood else classes

    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    traced.save(str(out / "models" / "model.ts"))
    meta = _metadata(run_id, classes, outputs, (channels, height, width), _normalisation(classifier), card)
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "configs" / "inference.json").write_text(
        json.dumps(_inference(channels, height, width, outputs), indent=2) + "\n"
    )
    (out / "docs" / "README.md").write_text(_readme(run_id, classes, with_ood, (channels, height, width)))
    shutil.copy(BUNDLE_SCHEMA, out / "docs" / "metadata_schema.json")
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


def _metadata(
    run_id: str, classes: list[str], outputs: list[str], shape: tuple[int, int, int], norm: dict, card: dict
) -> dict:
    mv_version = _version("medvision")
    channels, height, width = shape
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medvision {mv_version} from MLflow run {run_id}"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "required_packages_version": {},
        "name": f"medvision classifier {run_id[:8]}",
        "task": "image classification with an out-of-distribution score"
        if len(outputs) > len(classes)
        else "image classification",
        "description": "A medvision fine-tuned classifier. Input: images scaled to [0, 1] at the training size; "
        f"normalisation (backbone mean/std) is inside the network. Head: {card['head']['name']}.",
        "authors": "medvision",
        "copyright": "See the licence of the training data and of the pretrained backbone weights.",
        "data_type": "png",
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
            "preprocessed_data_sources": {
                "image": {
                    "scale": "8-bit pixel values / 255",
                    "size": [height, width],
                    "channels": channels,
                    "normalisation": norm,
                }
            },
        },
    }


def _inference(channels: int, height: int, width: int, outputs: list[str]) -> dict:
    """A config ``monai.bundle.run`` executes: predict every PNG in ``dataset_dir`` into ``output_file``."""
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$os.path.join(@bundle_root, 'images')",
        "output_file": "$os.path.join(@bundle_root, 'predictions.csv')",
        "output_names": outputs,
        "network": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.png')))]",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                # reverse_indexing false: rows stay rows (PIL's default in MONAI transposes to W x H).
                {
                    "_target_": "LoadImaged",
                    "keys": "image",
                    "reader": "PILReader",
                    "reverse_indexing": False,
                    "image_only": True,
                },
                {
                    "_target_": "EnsureChannelFirstd",
                    "keys": "image",
                    "channel_dim": "no_channel" if channels == 1 else -1,
                },
                {"_target_": "Resized", "keys": "image", "spatial_size": [height, width], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": 0.0,
                    "a_max": 255.0,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
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
        "run": [
            "$numpy.savetxt(@output_file, @predictions, delimiter=',', header=','.join(@output_names), "
            "comments='', fmt='%.8g')"
        ],
    }


def _readme(run_id: str, classes: list[str], with_ood: bool, shape: tuple[int, int, int]) -> str:
    channels, height, width = shape
    ood = (
        "\nThe last output channel is `p_out`: the probability that the image shows none of the classes "
        "(higher = more likely out of distribution); refer such images to a human.\n"
        if with_ood
        else ""
    )
    return (
        f"# medvision classifier (MLflow run {run_id})\n\nInput: {channels}-channel {height}x{width} images "
        f"with values in [0, 1]. Outputs: probabilities of {', '.join(classes)}.\n{ood}\n"
        "Predict a folder of PNGs:\n\n    python -m monai.bundle run --config_file configs/inference.json "
        "--meta_file configs/metadata.json --bundle_root . --dataset_dir /path/to/pngs\n\n"
        "Check the bundle offline:\n\n    python -m monai.bundle verify_metadata --meta_file "
        "configs/metadata.json --filepath docs/metadata_schema.json\n    python -m monai.bundle "
        "verify_net_in_out network --meta_file configs/metadata.json --config_file configs/inference.json\n"
    )
