"""Ingest benchmark: header indexing, decode + preprocess, and the cached pass, on one synthetic cohort.

Baselines run in the same process on the same files: a plain pydicom header loop, a plain pydicom
decode loop, and MONAI's ``LoadImage(reader="PydicomReader")``, each followed by the same resize.
Targets: indexing >= the plain header loop; decode + preprocess >= 2x MONAI; the cached pass >= 10x
the first decode. Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/ingest.py [--patients 300] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.cohort.index import index_files, list_files
from medvision.cohort.spec import load_spec
from medvision.cohort.synth import synthesize
from medvision.data.dataset import CohortDataset


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.ndim == 3:  # a multi-frame object: its middle frame, as medvision's `middle` policy
        axis = int(np.argmin(arr.shape))
        arr = np.take(arr, arr.shape[axis] // 2, axis=axis)
    return cv2.resize(arr.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


#: What an index needs from each header: identifiers (for pseudonyms), subgroup tags and image geometry.
INDEX_TAGS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "PatientSex",
    "PatientAge",
    "Manufacturer",
    "InstitutionName",
    "ViewPosition",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsStored",
    "NumberOfFrames",
)


def bare_headers(paths: list[Path]) -> None:
    """Parse headers and read no value: a floor, not an index."""
    import pydicom

    for p in paths:
        pydicom.dcmread(p, stop_before_pixels=True)


def plain_headers(paths: list[Path]) -> None:
    """The loop a user would write to index a folder: parse each header, read the tags an index needs."""
    import pydicom

    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        [ds.get(k) for k in INDEX_TAGS]


def plain_decode(paths: list[Path], size: int) -> None:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    for p in paths:
        ds = pydicom.dcmread(p)
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            arr = 1.0 - arr
        _resize(arr, size)


def monai_decode(paths: list[Path], size: int) -> None:
    from monai.transforms import LoadImage

    load = LoadImage(reader="PydicomReader", image_only=True)
    for p in paths:
        arr = np.asarray(load(str(p)))
        lo, hi = float(arr.min()), float(arr.max())
        _resize((arr - lo) / (hi - lo or 1.0), size)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--size", type=int, default=512, help="side of the synthetic DICOM images")
    ap.add_argument("--cache-size", type=int, default=224, help="side of the cached images")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("MEDVISION_PSEUDONYM_KEY", "6d6564766973696f6e2d62656e63686d61726b2d6b6579")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec_path = synthesize(tmp / "src", kind="cxr", patients=args.patients, seed=0, size=args.size)
        spec = load_spec(spec_path)
        spec = spec.model_copy(update={"preprocess": spec.preprocess.model_copy(update={"size": args.cache_size})})
        root = Path(spec.images)
        rel = [r for r in list_files(root) if r.endswith(".dcm")]
        paths = [root / r for r in rel]
        n = len(paths)

        t_bare_idx = best_of(lambda: bare_headers(paths), args.repeats)
        t_plain_idx = best_of(lambda: plain_headers(paths), args.repeats)
        t_mv_idx = best_of(lambda: list(index_files(root, rel, workers=0)), args.repeats)
        t_plain_dec = best_of(lambda: plain_decode(paths, args.cache_size), 1)
        t_monai = best_of(lambda: monai_decode(paths, args.cache_size), 1)

        out = tmp / "cohort"
        first = build_cohort(spec, out)  # every file decoded into the cache
        t_mv_dec = first["build"]["decode_seconds"]
        second = build_cohort(spec, out)  # same files: hashed, nothing decoded
        cohort = open_cohort(out)
        ds = CohortDataset(cohort, cohort.manifest)

        def cached_pass() -> None:
            for i in range(len(ds)):
                ds[i]["image"]

        t_cached = best_of(cached_pass, args.repeats)
        n_img = len(ds)

    rows = [
        ("header indexing", "pydicom parse only (no tag read; floor)", n / t_bare_idx, "files/s"),
        ("header indexing", "plain pydicom loop reading the index tags", n / t_plain_idx, "files/s"),
        ("header indexing", "medvision index_files", n / t_mv_idx, "files/s"),
        ("decode+preprocess", "plain pydicom loop", n / t_plain_dec, "images/s"),
        ("decode+preprocess", "MONAI LoadImage(PydicomReader)", n / t_monai, "images/s"),
        ("decode+preprocess", "medvision build (decode into cache)", n_img / t_mv_dec, "images/s"),
        ("rebuild", "medvision build, all cached (hash only)", n_img / second["build"]["decode_seconds"], "images/s"),
        ("cached pass", "medvision CohortDataset from cache", n_img / t_cached, "images/s"),
    ]
    print(
        f"{n} DICOM files ({args.size}px, 12-bit, some RLE / MONOCHROME1), cache {args.cache_size}px, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'stage':<20} {'method':<42} {'rate':>10}")
    for stage, method, rate, unit in rows:
        print(f"{stage:<20} {method:<42} {rate:>10.1f} {unit}")
    result = {
        "benchmark": "ingest",
        "files": n,
        "image_size": args.size,
        "cache_size": args.cache_size,
        "index_files_per_s": round(n / t_mv_idx, 1),
        "plain_header_files_per_s": round(n / t_plain_idx, 1),
        "bare_parse_files_per_s": round(n / t_bare_idx, 1),
        "index_ratio_vs_plain": round(t_plain_idx / t_mv_idx, 2),
        "decode_images_per_s": round(n_img / t_mv_dec, 1),
        "monai_images_per_s": round(n / t_monai, 1),
        "plain_decode_images_per_s": round(n / t_plain_dec, 1),
        "decode_ratio_vs_monai": round((n_img / t_mv_dec) / (n / t_monai), 2),
        "cached_images_per_s": round(n_img / t_cached, 1),
        "cached_ratio_vs_first_decode": round((n_img / t_cached) / (n_img / t_mv_dec), 1),
        "targets": {"index_ratio_vs_plain": 1.0, "decode_ratio_vs_monai": 2.0, "cached_ratio_vs_first_decode": 10.0},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
