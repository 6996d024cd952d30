"""Prediction throughput: a DICOM folder to predictions by ``medvision predict``, against a bare decode + forward loop.

medvision side: :func:`medvision.serving.predict` on the folder into a fresh output folder each round, so every round
does the whole job: index, quarantine checks, pseudonyms, decode and preprocessing into the cache with the model's
recipe, the forward passes, the parquet/CSV tables and the MLflow run. Bare side: the same files decoded with
pydicom (``pixel_array``, min-max to [0, 1], ``cv2.resize`` to the model's size) in a process pool of the same number
of workers, then the same model's forward passes at the same batch size. ``ratio`` = medvision images/s / bare
images/s (target >= 0.9 at 224 px); both sides are warmed up and alternate (benchmarks/_timing.py). Prints a table,
then one JSON object as the last line.

    .venv/bin/python benchmarks/predict.py [--patients 40] [--size 224] [--source-size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from _cohorts import PSEUDONYM_KEY  # benchmarks/_cohorts.py (run as a script)
from _timing import alternate, paired_ratios, print_rounds, spread

from medvision.classifier import Classifier, save_classifier
from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.cohort.index import worker_count
from medvision.heads import create_head
from medvision.models import create_backbone
from medvision.serving import predict
from medvision.sources.synth import synthesize


def _decode(args: tuple[list[str], int]) -> np.ndarray:
    """The bare decode of a chunk of files: pixels (the middle frame of a multi-frame object, the mean of a colour
    image's channels: the recipe's ``frames: middle``, 1 channel), min-max to [0, 1], resized;
    ``(n, 1, size, size)`` float32."""
    paths, size = args
    out = np.empty((len(paths), 1, size, size), np.float32)
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float32)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            a = a[len(a) // 2]
        if int(ds.get("SamplesPerPixel", 1)) > 1:
            a = a.mean(axis=-1)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
        out[i, 0] = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _bare(model: Classifier, files: list[str], size: int, workers: int, batch: int) -> float:
    """Images/s of decode (``workers`` processes, 4 chunks each) + forward, over every file."""
    start = time.perf_counter()
    chunks = [(files[i :: workers * 4], size) for i in range(workers * 4)]
    if workers == 1:
        images = np.concatenate([_decode(c) for c in chunks])
    else:
        with ProcessPoolExecutor(workers) as pool:
            images = np.concatenate(list(pool.map(_decode, chunks)))
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            model(torch.from_numpy(images[i : i + batch])).logits.softmax(-1)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--size", type=int, default=224, help="the model's input size (its recipe)")
    ap.add_argument("--source-size", type=int, default=256, help="the synthetic DICOM images' size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decode processes on both sides (0: one per core)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    workers = worker_count(args.workers)
    os.environ.setdefault("MEDVISION_PSEUDONYM_KEY", PSEUDONYM_KEY)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory(prefix="medvision-predict-") as tmp:
        work = Path(tmp)
        spec = synthesize(work / "source", "cxr", patients=args.patients, seed=0, size=args.source_size)
        images = work / "source" / "images"
        files = sorted(str(p) for p in images.rglob("*.dcm"))
        # The model's recipe is a build's at --size (1 channel), recorded in its card as a fine-tune would.
        _build_for_recipe(spec, work / "recipe-cohort", args.size)
        recipe = open_cohort(work / "recipe-cohort").card.recipe
        torch.manual_seed(0)
        backbone = create_backbone(args.backbone, "none", in_chans=1)
        model = Classifier(backbone, create_head("linear", backbone.num_features, 3), ["a", "b", "c"]).eval()
        save_classifier(model, work / "model", preprocessing=recipe)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        counter = iter(range(10**6))

        def medvision_side() -> float:
            out = work / f"out-{next(counter)}"
            start = time.perf_counter()
            n = len(
                predict(
                    str(work / "model"),
                    out,
                    images=images,
                    tracking_uri=uri,
                    batch_size=args.batch,
                    workers=workers,
                ).predictions
            )
            return n / (time.perf_counter() - start)

        rates = alternate(
            {
                "medvision predict": medvision_side,
                "bare pydicom + forward": lambda: _bare(model, files, args.size, workers, args.batch),
            },
            rounds=args.rounds,
        )
    ours, bare = rates["medvision predict"], rates["bare pydicom + forward"]
    ratios = paired_ratios(ours, bare)
    print(f"{len(files)} DICOM files, {args.source_size} px -> {args.size} px, {args.backbone}, {workers} worker(s)")
    print_rounds(rates, "images/s")
    ratio = spread(ratios)["median"]
    print(f"ratio (medvision / bare, paired rounds): median {ratio:.3f}; target >= 0.9")
    result = {
        "benchmark": "predict",
        "files": len(files),
        "size": args.size,
        "source_size": args.source_size,
        "backbone": args.backbone,
        "batch": args.batch,
        "workers": workers,
        "medvision_images_per_s": spread(ours),
        "bare_images_per_s": spread(bare),
        "ratio": ratio,
        "ratio_spread": spread(ratios),
        "meets_target": ratio >= 0.9,
    }
    print(json.dumps(result))


def _build_for_recipe(spec: Path, out: Path, size: int) -> None:
    """A build of the synthetic cohort at ``size`` px, 1 channel: its card's recipe is the model's."""
    import yaml

    raw = yaml.safe_load(spec.read_text())
    raw.setdefault("preprocess", {}).update(size=size, channels=1)
    path = spec.with_name("recipe.yaml")
    path.write_text(yaml.safe_dump(raw))
    build_cohort(path, out)


if __name__ == "__main__":
    main()
