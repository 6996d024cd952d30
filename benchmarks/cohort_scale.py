"""Cohort build at hospital size: files/s and peak memory at 3,000 and 50,000 synthetic DICOM files.

A build's cost should be linear in its files: indexing, decoding into the cache, the labels join, pseudonyms,
splits, the manifest and the card. This benchmark writes synthetic chest X-ray cohorts
(:func:`medvision.sources.synth.synthesize`: real DICOM with RLE, MONOCHROME1, multi-frame objects, a labels
CSV; tiny images so disk stays small; plus 2% structured reports without pixels, which are quarantined) of
each size under ``--workdir``, builds each with :func:`medvision.cohort.build.build_cohort` in a fresh
process, and deletes everything afterwards.

Per build: files/s over the whole ``build_cohort`` call, and peak memory of the build's process tree (the
build process plus its indexing/decoding workers), sampled from ``/proc`` every 50 ms: the sum of RSS (counts
pages the forked workers share with their parent once per process, so it overstates) and the sum of PSS
(shares those pages out; the truer figure). The builds run back to back in one invocation, smallest first,
``--rounds`` times, so both sizes meet the same machine load; the load average is printed beside each.
JSON ``ratio`` = median files/s at the largest size / median files/s at the smallest; targets: ratio >= 0.85
and peak RSS < 1 GB at the largest size. Linux only (``/proc``). Prints a table, then one JSON object.

    nice -n 10 .venv/bin/python benchmarks/cohort_scale.py [--sizes 3000,50000] [--rounds 1] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from medvision.cohort.index import list_files
from medvision.sources.synth import synthesize

#: Files per synthetic patient (1-4 views, 35% with several): patients = files / this, then the real count is read.
FILES_PER_PATIENT = 1.61
_PAGE = os.sysconf("SC_PAGE_SIZE")


def plant_reports(images: Path, count: int) -> None:
    """Write ``count`` DICOM structured reports (no pixel data) under ``images/reports``, as archives hold.

    Each carries fake identifiers and is quarantined ("no pixel data"), so the build's quarantine path and
    its identifier scrubbing are measured at scale too.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = images / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid(entropy_srcs=["report", str(i)])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, uid, "SR"
        ds.PatientID, ds.PatientName, ds.AccessionNumber = f"RPT{i:07d}", f"Report^Patient{i}", f"ACR{i:07d}"
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid(entropy_srcs=["report-study", str(i)])
        ds.save_as(folder / f"sr-{i:06d}.dcm", enforce_file_format=True)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, read from /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:  # the process ended between listing and reading
            continue
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it has gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")), 0)
        return rss, pss
    except (OSError, ValueError):
        return 0, 0


class TreeMemory(threading.Thread):
    """Samples the summed RSS and PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = _tree(self.pid)
            mem = [_memory(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(m[0] for m in mem))
            self.peak_pss = max(self.peak_pss, sum(m[1] for m in mem))
            self.peak_processes = max(self.peak_processes, len(pids))
            self._done.wait(self.every)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the build's pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _build_child(spec: str, out: str, key: str, conn) -> None:
    """Runs in a fresh (spawned) process: build, and send back the time and the card's counts."""
    os.environ["MEDVISION_PSEUDONYM_KEY"] = key
    from medvision.cohort.build import build_cohort

    cpu0 = _cpu_seconds()
    t = time.perf_counter()
    card = build_cohort(spec, out)
    seconds = time.perf_counter() - t
    conn.send(
        {
            "seconds": seconds,
            "cpu_seconds": _cpu_seconds() - cpu0,
            "images": card.images,
            "quarantined": card.quarantined,
            "build": card.build.model_dump() if card.build else None,
            "maxrss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
    )
    conn.close()


def build_once(spec: Path, out: Path, key: str) -> dict:
    """Build ``spec`` into ``out`` in a spawned process, sampling its process tree's memory."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    load = os.getloadavg()[0]
    proc = ctx.Process(target=_build_child, args=(str(spec), str(out), key, send))
    proc.start()
    send.close()  # the child holds the only sending end: if it dies, recv() raises instead of waiting forever
    sampler = TreeMemory(proc.pid)
    sampler.start()
    try:
        result = recv.recv()
    except EOFError:
        proc.join()
        sampler.stop()
        raise SystemExit(f"the build of {spec} failed (exit code {proc.exitcode}); its traceback is above") from None
    proc.join()
    sampler.stop()
    if proc.exitcode != 0:
        raise SystemExit(f"the build of {spec} failed (exit code {proc.exitcode})")
    return {
        **result,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "peak_rss": sampler.peak_rss,
        "peak_pss": sampler.peak_pss,
        "peak_processes": sampler.peak_processes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3000,50000", help="comma-separated file counts, smallest first")
    ap.add_argument("--image-size", type=int, default=32, help="side of the synthetic images (px)")
    ap.add_argument("--rounds", type=int, default=1, help="builds of every size, in alternating size order")
    ap.add_argument("--reports", type=float, default=0.02, help="share of non-image DICOM files (quarantined)")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the cohorts are written (then deleted)")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    key = "6d6564766973696f6e2d62656e63686d61726b2d6b6579"
    work = Path(tempfile.mkdtemp(prefix="cohort-scale-", dir=args.workdir))
    try:
        specs, files, synth_s = {}, {}, {}
        for n in sizes:
            t = time.perf_counter()
            specs[n] = synthesize(
                work / f"src-{n}", "cxr", patients=max(2, round(n / FILES_PER_PATIENT)), seed=0, size=args.image_size
            )
            synth_s[n] = time.perf_counter() - t
            plant_reports(work / f"src-{n}" / "images", round(n * args.reports))
            files[n] = len(list_files(work / f"src-{n}" / "images"))
        runs: dict[int, list[dict]] = {n: [] for n in sizes}
        for r in range(args.rounds):
            for n in sizes if r % 2 == 0 else sizes[::-1]:
                out = work / f"cohort-{n}-{r}"
                runs[n].append(build_once(specs[n], out, key))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rate = {n: [files[n] / b["seconds"] for b in runs[n]] for n in sizes}
    # Files per CPU-second of the build tree: what the build costs, whatever share of the cores it was given.
    cpu_rate = {n: statistics.median(files[n] / b["cpu_seconds"] for b in runs[n]) for n in sizes}
    med = {n: statistics.median(rate[n]) for n in sizes}
    small, large = sizes[0], sizes[-1]
    ratio = med[large] / med[small]
    peak_rss = max(b["peak_rss"] for b in runs[large])
    print(
        f"cohort build scaling: synthetic cxr DICOM, {args.image_size} px, {os.cpu_count()} CPU cores, "
        f"{args.rounds} round(s); load average before/after each build shown (other jobs share this machine)"
    )
    print(
        f"{'files':>7} {'files/s':>9} {'min-max':>15} {'index s':>8} {'decode s':>9} {'total s':>8} {'CPU s':>7} "
        f"{'RSS MB':>7} {'PSS MB':>7} {'procs':>5} {'load':>11}"
    )
    for n in sizes:
        for b, v in zip(runs[n], rate[n]):
            print(
                f"{files[n]:>7} {v:>9.1f} {min(rate[n]):>7.1f}-{max(rate[n]):<7.1f} "
                f"{b['build']['index_seconds']:>8.1f} {b['build']['decode_seconds']:>9.1f} {b['seconds']:>8.1f} "
                f"{b['cpu_seconds']:>7.1f} "
                f"{b['peak_rss'] / 2**20:>7.0f} {b['peak_pss'] / 2**20:>7.0f} {b['peak_processes']:>5} "
                f"{b['load_before']:>5.2f}/{b['load_after']:<5.2f}"
            )
    cpu_ratio = cpu_rate[large] / cpu_rate[small]
    print(
        f"ratio (files/s at {files[large]} / at {files[small]}) = {ratio:.3f} (target >= 0.85); the same per "
        f"CPU-second of the build = {cpu_ratio:.3f}; peak RSS at {files[large]} files {peak_rss / 2**20:.0f} MB "
        "(target < 1024 MB)"
    )
    print(
        json.dumps(
            {
                "benchmark": "cohort_scale",
                "image_size": args.image_size,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "sizes": [
                    {
                        "files": files[n],
                        "images": runs[n][0]["images"],
                        "synthesis_s": round(synth_s[n], 1),
                        "files_per_s": round(med[n], 1),
                        "files_per_s_rounds": [round(v, 1) for v in rate[n]],
                        "index_s": [b["build"]["index_seconds"] for b in runs[n]],
                        "decode_s": [b["build"]["decode_seconds"] for b in runs[n]],
                        "total_s": [round(b["seconds"], 2) for b in runs[n]],
                        "cpu_s": [round(b["cpu_seconds"], 2) for b in runs[n]],
                        "files_per_cpu_s": round(cpu_rate[n], 1),
                        "peak_rss_mb": round(max(b["peak_rss"] for b in runs[n]) / 2**20, 1),
                        "peak_pss_mb": round(max(b["peak_pss"] for b in runs[n]) / 2**20, 1),
                        "build_process_maxrss_mb": round(max(b["maxrss_self_kb"] for b in runs[n]) / 1024, 1),
                        "load_average": [[round(b["load_before"], 2), round(b["load_after"], 2)] for b in runs[n]],
                    }
                    for n in sizes
                ],
                "ratio": round(ratio, 4),
                "cpu_ratio": round(cpu_ratio, 4),
                "ratio_rounds": [round(a / b, 4) for a, b in zip(rate[large], rate[small])],
                "peak_rss_mb_at_largest": round(peak_rss / 2**20, 1),
                "targets": {"ratio": 0.85, "peak_rss_mb_at_largest": 1024},
                "meets_targets": ratio >= 0.85 and peak_rss < 2**30,
            }
        )
    )


if __name__ == "__main__":
    main()
