"""Ingest benchmark: header indexing, decode + preprocess, and the cached pass, on one synthetic cohort.

Baselines run in the same process on the same files: a plain pydicom header loop, a plain pydicom
decode loop, and MONAI's ``LoadImage(reader="PydicomReader")``, each followed by the same resize.
Every comparison gives both sides the same number of worker processes, so a ratio measures the code, not the
parallelism: first everything serial (medvision with ``workers: 1``, which indexes and decodes in its own
process, against the plain loops), then, for each count in ``--workers`` above 1, medvision with that many
workers against the same loops run over a ``ProcessPoolExecutor`` of as many processes (a fresh pool per
pass, as medvision starts one per build; the files cut into 4 chunks per worker; below 64 files to index or 32 to
decode both sides stay in one process, medvision's own rule). Rates are also given per
worker ("per core": rate / workers). Targets: indexing >= the plain header loop; decode + preprocess >= 2x
MONAI; the cached pass >= 10x the first serial decode. Every method runs an untimed warm-up round, then
``--rounds`` timed rounds with the methods alternating (benchmarks/_timing.py); medians are the headline,
min/max beside them. Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/ingest.py [--patients 300] [--size 512] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from _timing import alternate, paired_ratios, spread  # benchmarks/_timing.py (run as a script)

from medvision.cohort.build import build_cohort
from medvision.cohort.cohort import open_cohort
from medvision.cohort.index import index_files, list_files
from medvision.cohort.spec import load_spec
from medvision.data.dataset import CohortDataset
from medvision.sources.synth import synthesize


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


def _rate(count: int, fn) -> float:
    """``count / seconds`` of one call of ``fn``."""
    t = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t)


#: Below these many files medvision indexes / decodes in its own process whatever ``workers`` says (a pool's
#: start-up would cost more than it saves); the pooled baselines follow the same rule.
SERIAL_BELOW = {"index": 64, "decode": 32}


def pooled(loop: Callable[[list[Path]], None], paths: list[Path], workers: int, stage: str) -> None:
    """Run a baseline ``loop`` over ``paths`` in ``workers`` processes (4 contiguous chunks per worker), or in this
    process when ``workers`` is 1: the plain way to give a serial loop the cores medvision's build gets."""
    if workers == 1 or len(paths) < SERIAL_BELOW[stage]:
        loop(paths)
        return
    n = workers * 4
    step = -(-len(paths) // n)
    chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(loop, chunks))


def _setting(w: int, spec, root: Path, rel: list[str], paths: list[Path], tmp: Path, args) -> dict:
    """Index and decode rates of every method, all with ``w`` worker processes."""
    n = len(paths)
    idx = alternate(
        {
            "bare": lambda: _rate(n, lambda: pooled(bare_headers, paths, w, "index")),
            "plain": lambda: _rate(n, lambda: pooled(plain_headers, paths, w, "index")),
            "medvision": lambda: _rate(n, lambda: list(index_files(root, rel, workers=w))),
        },
        rounds=args.rounds,
        warmup=1,
    )
    spec = spec.model_copy(update={"workers": w})
    builds = iter(range(10**6))
    rebuild: list[float] = []

    def medvision_decode() -> float:
        # a fresh output folder each round, so every file is decoded again; then a rebuild of the same folder
        # (nothing changed: files are hashed, nothing decoded)
        out = tmp / f"cohort-w{w}-{next(builds)}"
        first = build_cohort(spec, out)
        second = build_cohort(spec, out)
        rebuild.append(first.images / second.build.decode_seconds)
        return first.images / first.build.decode_seconds

    dec = alternate(
        {
            "plain": lambda: _rate(n, lambda: pooled(partial(plain_decode, size=args.cache_size), paths, w, "decode")),
            "monai": lambda: _rate(n, lambda: pooled(partial(monai_decode, size=args.cache_size), paths, w, "decode")),
            "medvision": medvision_decode,
        },
        rounds=args.rounds,
        warmup=1,
    )
    return {"index": idx, "decode": dec, "rebuild": rebuild[1:]}  # the warm-up round's rebuild is not kept


def _summary(w: int, r: dict) -> dict:
    med = {f"{k}_index": statistics.median(v) for k, v in r["index"].items()}
    med |= {f"{k}_decode": statistics.median(v) for k, v in r["decode"].items()}
    return {
        "workers": w,
        "index_files_per_s": round(med["medvision_index"], 1),
        "plain_header_files_per_s": round(med["plain_index"], 1),
        "bare_parse_files_per_s": round(med["bare_index"], 1),
        "index_files_per_s_per_core": round(med["medvision_index"] / w, 1),
        "index_ratio_vs_plain": round(med["medvision_index"] / med["plain_index"], 2),
        "index_ratio_spread": spread(paired_ratios(r["index"]["medvision"], r["index"]["plain"])),
        "decode_images_per_s": round(med["medvision_decode"], 1),
        "monai_images_per_s": round(med["monai_decode"], 1),
        "plain_decode_images_per_s": round(med["plain_decode"], 1),
        "decode_images_per_s_per_core": round(med["medvision_decode"] / w, 1),
        "decode_ratio_vs_monai": round(med["medvision_decode"] / med["monai_decode"], 2),
        "decode_ratio_vs_plain": round(med["medvision_decode"] / med["plain_decode"], 2),
        "decode_ratio_spread": spread(paired_ratios(r["decode"]["medvision"], r["decode"]["monai"])),
        "rebuild_images_per_s": round(statistics.median(r["rebuild"]), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--size", type=int, default=512, help="side of the synthetic DICOM images")
    ap.add_argument("--cache-size", type=int, default=224, help="side of the cached images")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (after one warm-up round)")
    ap.add_argument(
        "--workers",
        default=str(os.cpu_count() or 1),
        help="worker counts above 1 to compare at, comma-separated (both sides get the same count); "
        "the serial comparison always runs (default: this machine's cores)",
    )
    args = ap.parse_args()
    counts = [1] + sorted({int(w) for w in args.workers.split(",") if int(w) > 1})
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
        runs = {w: _setting(w, spec, root, rel, paths, tmp, args) for w in counts}

        cohort = open_cohort(tmp / "cohort-w1-0")
        ds = CohortDataset(cohort, cohort.manifest)
        n_img = len(ds)

        def cached_pass() -> None:
            for i in range(len(ds)):
                ds[i]["image"]

        cached = alternate({"cached": lambda: _rate(n_img, cached_pass)}, rounds=args.rounds, warmup=1)["cached"]

    print(
        f"{n} DICOM files ({args.size}px, 12-bit, some RLE / MONOCHROME1), cache {args.cache_size}px, "
        f"{os.cpu_count()} CPU cores; {args.rounds} timed rounds after a warm-up round, methods alternating; "
        "both sides of every comparison get the same worker processes (shared machine: ratios are the robust figures)"
    )
    print(f"{'workers':>7} {'stage':<18} {'method':<42} {'median':>9} {'min':>9} {'max':>9} {'per core':>9}")
    for w, r in runs.items():
        rows = [
            ("header indexing", "pydicom parse only (no tag read; floor)", r["index"]["bare"], "files/s"),
            ("header indexing", "plain pydicom loop reading the index tags", r["index"]["plain"], "files/s"),
            ("header indexing", "medvision index_files", r["index"]["medvision"], "files/s"),
            ("decode+preprocess", "plain pydicom loop", r["decode"]["plain"], "images/s"),
            ("decode+preprocess", "MONAI LoadImage(PydicomReader)", r["decode"]["monai"], "images/s"),
            ("decode+preprocess", "medvision build (decode into cache)", r["decode"]["medvision"], "images/s"),
            ("rebuild", "medvision build, all cached (hash only)", r["rebuild"], "images/s"),
        ]
        for stage, method, rates, unit in rows:
            sp = spread(rates)
            print(
                f"{w:>7} {stage:<18} {method:<42} {sp['median']:>9.1f} {sp['min']:>9.1f} {sp['max']:>9.1f} "
                f"{sp['median'] / w:>9.1f} {unit}"
            )
    sp = spread(cached)
    print(f"{1:>7} {'cached pass':<18} {'medvision CohortDataset from cache':<42} {sp['median']:>9.1f} "
          f"{sp['min']:>9.1f} {sp['max']:>9.1f} {sp['median']:>9.1f} images/s")  # fmt: skip
    settings = [_summary(w, r) for w, r in runs.items()]
    for s in settings:
        print(
            f"{s['workers']} worker(s) each side: index / plain header loop {s['index_ratio_vs_plain']:.2f}, "
            f"decode / MONAI {s['decode_ratio_vs_monai']:.2f}, decode / plain pydicom {s['decode_ratio_vs_plain']:.2f}"
        )
    serial = settings[0]
    result = {
        "benchmark": "ingest",
        "files": n,
        "image_size": args.size,
        "cache_size": args.cache_size,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "settings": settings,
        "index_ratio_vs_plain": serial["index_ratio_vs_plain"],
        "decode_ratio_vs_monai": serial["decode_ratio_vs_monai"],
        "cached_images_per_s": round(statistics.median(cached), 1),
        "cached_ratio_vs_first_decode": round(statistics.median(cached) / serial["decode_images_per_s"], 1),
        "targets": {"index_ratio_vs_plain": 1.0, "decode_ratio_vs_monai": 2.0, "cached_ratio_vs_first_decode": 10.0},
        "meets_targets": {
            f"workers={s['workers']}": {
                "index_ratio_vs_plain": s["index_ratio_vs_plain"] >= 1.0,
                "decode_ratio_vs_monai": s["decode_ratio_vs_monai"] >= 2.0,
            }
            for s in settings
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
