"""MedMNIST ``.npz`` files as cohort sources, official splits kept.

MedMNIST ships arrays, not files: ``{train,val,test}_images`` (uint8, ``(N, H, W)`` or ``(N, H, W, 3)``) and
``{train,val,test}_labels`` (``(N, 1)`` class indices, or ``(N, L)`` 0/1 flags for multi-label sets). Rather
than teach the cohort builder a second input kind, the importer writes each image as a lossless PNG with a
labels CSV and a cohort spec, so the set then goes through exactly the same build (index, splits, cache,
card) as a hospital's folder. The official split is carried in the CSV's ``split`` column and used as given:
re-splitting would break comparability with published MedMNIST numbers. MedMNIST has no patient ids, so
every image is its own patient (the dataset's documentation says the same).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from medvision._atomic import atomic_path, atomic_write_text
from medvision.errors import InputError

__all__ = ["MedMNISTError", "import_medmnist"]

_SPLITS = ("train", "val", "test")

#: Class names of the MedMNIST sets whose names are short and stable; other sets get ``class_<k>``.
_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_or_benign"),
}


class MedMNISTError(InputError):
    """A MedMNIST file that cannot be imported; the message names the file, the key and what to do."""


def import_medmnist(npz: Path, out: Path, name: str | None = None) -> Path:
    """Write ``npz`` as PNGs + ``labels.csv`` + ``cohort.yaml`` under ``out``; return the spec's path.

    Multi-label sets (labels with more than one column) get one 0/1 column per label, which the cohort
    builder reads as a multi-label target. Every file is written whole (:mod:`medvision._atomic`), so an
    interrupted import leaves no truncated PNG for the build to quarantine; importing again completes it.
    """
    npz, out = Path(npz), Path(out)
    name = name or npz.stem
    data = _read_arrays(npz)
    n_labels = _check_shapes(npz, data)
    label_columns = _label_columns(name, n_labels, data)
    rows = _write_images(out / "images", data, label_columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "labels.csv", buffer.getvalue())
    return _write_spec(out / "cohort.yaml", npz, name, data, label_columns)


def _read_arrays(npz: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images, labels)}``, every array a MedMNIST file must have."""
    if not npz.is_file():
        raise MedMNISTError(f"{npz}: no such file; pass the path of a MedMNIST .npz (e.g. pneumoniamnist.npz)")
    try:
        arrays = np.load(npz, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise MedMNISTError(f"{npz}: not a readable .npz file ({err}); download the MedMNIST file again") from err
    with arrays:
        missing = [f"{s}_{k}" for s in _SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays.files]
        if missing:
            raise MedMNISTError(
                f"{npz}: missing array(s) {', '.join(missing)}; a MedMNIST file has "
                f"train/val/test _images and _labels (found: {', '.join(arrays.files)})"
            )
        return {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in _SPLITS}


def _write_images(
    images: Path, data: dict[str, tuple[np.ndarray, np.ndarray]], label_columns: list[str]
) -> list[dict[str, object]]:
    """One lossless PNG per image; returns the labels CSV's rows (image, patient, split, label(s))."""
    rows: list[dict[str, object]] = []
    for split, (imgs, labels) in data.items():
        for i, (img, lab) in enumerate(zip(imgs, labels.reshape(len(labels), -1))):
            image_id = f"{split}-{i:05d}"
            with atomic_path(images / f"{image_id}.png", need_bytes=img.nbytes + 1024) as tmp:
                Image.fromarray(np.asarray(img, dtype=np.uint8)).save(tmp, format="PNG")
            row: dict[str, object] = {"image": image_id, "patient": image_id, "split": split}
            if len(lab) == 1:
                row["label"] = label_columns[int(lab[0])]
            else:
                row.update({c: int(v) for c, v in zip(label_columns, lab)})
            rows.append(row)
    return rows


def _write_spec(
    path: Path, npz: Path, name: str, data: dict[str, tuple[np.ndarray, np.ndarray]], label_columns: list[str]
) -> Path:
    multi_label = data["train"][1].reshape(len(data["train"][1]), -1).shape[1] > 1
    spec = {
        "name": name,
        "images": "images",
        "labels": {
            "csv": "labels.csv",
            "join": "stem",
            "key_column": "image",
            "label_columns": label_columns if multi_label else ["label"],
            "patient_column": "patient",
            "split_column": "split",
        },
        "preprocess": {"size": int(data["train"][0].shape[1]), "channels": 3 if data["train"][0].ndim == 4 else 1},
        "record_paths": False,  # the patient column is the image name, so paths would carry it
    }
    return atomic_write_text(
        path,
        f"# MedMNIST import of {npz.name}: official splits kept (labels.csv column 'split');\n"
        "# every image is its own patient (MedMNIST has no patient ids).\n" + yaml.safe_dump(spec, sort_keys=False),
    )


def _check_shapes(npz: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    n_labels = None
    for split, (imgs, labels) in data.items():
        if imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[-1] != 3):
            raise MedMNISTError(f"{npz}: {split}_images has shape {imgs.shape}; expected (N, H, W) or (N, H, W, 3)")
        if len(labels) != len(imgs):
            raise MedMNISTError(f"{npz}: {split}_labels has {len(labels)} rows but {split}_images has {len(imgs)}")
        width = int(np.prod(labels.shape[1:])) if labels.ndim > 1 else 1
        if n_labels is not None and width != n_labels:
            raise MedMNISTError(f"{npz}: {split}_labels has {width} columns, other splits have {n_labels}")
        n_labels = width
    assert n_labels is not None
    return n_labels


def _label_columns(name: str, n_labels: int, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    if n_labels > 1:
        return [f"label_{k}" for k in range(n_labels)]
    n_classes = int(max(int(lab.max()) for _, lab in data.values() if lab.size)) + 1
    known = _CLASS_NAMES.get(name.lower())
    if known and len(known) >= n_classes:
        return list(known)
    return [f"class_{k}" for k in range(n_classes)]
