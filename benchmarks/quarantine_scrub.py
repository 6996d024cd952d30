"""Quarantine scrubbing at hospital size: the build's scrubber vs the per-identifier loop it replaced.

Every quarantine reason is scrubbed of the identifiers the build learnt from the headers (library messages can
quote header values). Until commit ``a54d680`` that was a loop over every known identifier for every message:
more files bring both more identifiers and more quarantined files, so the quarantine step grew quadratically
(479 s of a 50,000-file build with 1,000 reports, by the figure this benchmark replaces). Today the build passes
each reason through :class:`medvision.cohort.logscrub.Scrubber`, a set lookup per token of the message.

The identifiers are those of ``cohort_scale.py``'s synthetic cohorts, made without writing a file: the
synthetic plan's patients (:func:`medvision.sources.synth.plan.plan_patients`, seed 0, the same MRNs, names,
accession numbers, birth dates and seeded UIDs its DICOM files carry) plus identifiers of the form the planted
structured reports carry, collected by the build's own :func:`medvision.cohort.identifiers.identifier_set`. The
messages are the reason the build gives a report ("DICOM file has no pixel data (a SR object, ...)"); every tenth
also quotes a header value, as a library warning does, so that each side has something to redact.

Both sides scrub the same messages with the same identifier set, in one process: one untimed warm-up round, then
``--rounds`` alternating timed rounds (benchmarks/_timing.py), median and spread. The Scrubber's side includes
building it from the identifier set (a build does that once; at 50,000 files it is most of the side's time), and
its per-message cost is given apart. The old loop is timed on every message unless ``--baseline-messages`` caps it
(then it is extrapolated linearly, which holds because its cost per message depends on the identifier count only;
the table and the JSON say so). Checked, not timed: no planted
identifier survives either side. Prints a table, then one JSON object as the last line.

    .venv/bin/python benchmarks/quarantine_scrub.py [--sizes 3000,50000] [--reports 0.02] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pandas as pd
from _timing import alternate, paired_ratios, spread  # benchmarks/_timing.py (run as a script)

from medvision.cohort.identifiers import identifier_set
from medvision.cohort.logscrub import Scrubber
from medvision.sources.synth.dicom import seeded_uids
from medvision.sources.synth.plan import plan_patients

#: Files per synthetic patient (as in cohort_scale.py): patients = images / this.
FILES_PER_PATIENT = 1.61
#: The reason the build records for a structured report (medvision.io.dicom, a DICOM object without pixels).
REASON = "DICOM file has no pixel data (a SR object, e.g. a report or a presentation state)"


def previous_scrub(text: str, identifiers: set[str]) -> str:
    """The quarantine scrubber as of commit ``a54d680`` (``medvision/cohort/build.py::_scrub``), verbatim."""
    low = text.lower()
    for tok in identifiers:
        while tok in low:
            i = low.index(tok)
            text, low = text[:i] + "[redacted]" + text[i + len(tok) :], low[:i] + "[redacted]" + low[i + len(tok) :]
    return text


def cohort_identifiers(files: int, report_share: float) -> tuple[set[str], list[str], list[str]]:
    """(identifier set, quarantine messages, the identifiers quoted in them) for a cohort of ``files`` files.

    ``report_share`` of the files are structured reports (quarantined); the rest are the synthetic plan's images.
    """
    reports = round(files * report_share)
    images = files - reports
    rows = []
    for p in plan_patients("cxr", max(1, round(images / FILES_PER_PATIENT)), seed=0):
        for k in range(p.n_images):
            study, series, sop = seeded_uids("cxr", 0, p.index, k)
            rows.append(
                {
                    "patient_id": p.mrn,
                    "csv_patient": None,
                    "patient_name": p.name,
                    "accession_number": p.accession,
                    "birth_date": p.birth.strftime("%Y%m%d"),
                    "study_uid": study,
                    "series_uid": series,
                    "sop_uid": sop,
                }
            )
    rows = rows[:images]
    messages, quoted = [], []
    for i in range(reports):  # cohort_scale.plant_reports' identifiers
        rows.append(
            {
                "patient_id": f"RPT{i:07d}",
                "csv_patient": None,
                "patient_name": f"Report^Patient{i}",
                "accession_number": f"ACR{i:07d}",
                "birth_date": None,
                "study_uid": f"1.2.826.0.1.3680043.8.498.{i}.1",
                "series_uid": f"1.2.826.0.1.3680043.8.498.{i}.1",
                "sop_uid": f"1.2.826.0.1.3680043.8.498.{i}.2",
            }
        )
        if i % 10 == 0:
            messages.append(f"{REASON}; pydicom: invalid value for PatientID 'RPT{i:07d}'")
            quoted.append(f"RPT{i:07d}")
        else:
            messages.append(REASON)
    return identifier_set(pd.DataFrame(rows)), messages, quoted


def measure(files: int, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    identifiers, messages, quoted = cohort_identifiers(files, args.reports)
    setup_s = time.perf_counter() - t0
    n_base = len(messages) if args.baseline_messages <= 0 else min(args.baseline_messages, len(messages))
    out: dict[str, list[str]] = {}

    build_s: list[float] = []

    def current() -> float:
        start = time.perf_counter()
        scrubber = Scrubber(identifiers)  # built from the identifier set, as the build does, and charged here
        built = time.perf_counter()
        out["current"] = [scrubber(m) for m in messages]
        build_s.append(built - start)
        return len(messages) / (time.perf_counter() - start)

    def previous() -> float:
        start = time.perf_counter()
        out["previous"] = [previous_scrub(m, identifiers) for m in messages[:n_base]]
        return n_base / (time.perf_counter() - start)

    rates = alternate({"current": current, "previous": previous}, rounds=args.rounds, warmup=1)
    for side, scrubbed in out.items():
        survivors = [q for q, m in zip(quoted, scrubbed[::10], strict=False) if q.lower() in m.lower()]
        if survivors:
            raise SystemExit(f"{side} scrubber left {len(survivors)} planted identifier(s) in its messages")
    differ = sum(a != b for a, b in zip(out["current"], out["previous"], strict=False))
    # messages/s -> seconds for every message of the build
    current_s = len(messages) / statistics.median(rates["current"])
    previous_s = len(messages) / statistics.median(rates["previous"])
    return {
        "files": files,
        "identifiers": len(identifiers),
        "messages": len(messages),
        "setup_s": round(setup_s, 2),
        "current_s": round(current_s, 6),
        "current_build_s": round(statistics.median(build_s[1:]), 6),
        "current_us_per_message": round(1e6 * (current_s - statistics.median(build_s[1:])) / len(messages), 1),
        "previous_s": round(previous_s, 6),
        "previous_messages_timed": n_base,
        "previous_extrapolated": n_base < len(messages),
        "speedup": round(previous_s / current_s, 2),
        "speedup_spread": spread(paired_ratios(rates["current"], rates["previous"])),
        "outputs_differ": differ,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3000,50000", help="cohort sizes in files, comma-separated")
    ap.add_argument("--reports", type=float, default=0.02, help="share of files that are reports (quarantined)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed rounds per side (after one warm-up round each); the old loop takes 1-6 min a round at 50,000 files",
    )
    ap.add_argument(
        "--baseline-messages", type=int, default=0, help="time the old loop on this many messages (0: on all)"
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [measure(n, args) for n in sizes]

    print(
        f"quarantine scrubbing, {args.rounds} timed rounds per side after a warm-up, sides alternating "
        "(shared machine: the ratio is the robust figure)"
    )
    print(
        f"{'files':>8}{'identifiers':>13}{'messages':>10}{'Scrubber s':>12}{'(set-up s)':>12}{'us/message':>12}"
        f"{'old loop s':>12}{'ratio':>9}  note"
    )
    for r in results:
        note = f"old loop timed on {r['previous_messages_timed']}, extrapolated" if r["previous_extrapolated"] else ""
        print(
            f"{r['files']:>8}{r['identifiers']:>13}{r['messages']:>10}{r['current_s']:>12.4f}"
            f"{r['current_build_s']:>12.4f}{r['current_us_per_message']:>12.1f}"
            f"{r['previous_s']:>12.3f}{r['speedup']:>8.1f}x  {note}"
        )
    print(
        "Scrubber: whole-token set lookups (medvision.cohort.logscrub), its set-up from the identifier set "
        "included in its time; old loop: every identifier searched in every "
        "message (medvision/cohort/build.py::_scrub at a54d680). Messages whose outputs differ: "
        + ", ".join(f"{r['outputs_differ']} of {r['messages']}" for r in results)
    )
    print(json.dumps({"benchmark": "quarantine_scrub", "rounds": args.rounds, "sizes": results}))


if __name__ == "__main__":
    main()
