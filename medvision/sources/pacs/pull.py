"""Pull a research request from a PACS into the local store: list, skip what is present, fetch the rest.

What to pull is the spec's ``pacs.query`` (modality, study date range, descriptions, body part) ANDed
with each row of ``pacs.request_list`` (accession numbers, study UIDs or patient IDs approved by an
ethics board). Those values may identify patients, so they go to the server and nowhere else: not into
our log lines, not into error messages. While a pull runs, every log record and warning of every library passes
through the cohort layer's one scrubber (:mod:`medvision.cohort.logscrub`: whole tokens, URL-encoded ones too),
which removes each query value, request value and credential; the HTTP/DIMSE libraries' own chatter below
warnings is not shown. The store, its records and ``pull.json`` are owner-only files.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import assert_never

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medvision._atomic import atomic_write_text
from medvision.cohort.logscrub import Scrubber, scrubbed_output
from medvision.cohort.spec import CohortSpec, DicomWebPacs, DimsePacs, PacsSpec, SpecError, load_spec
from medvision.sources.pacs.credentials import Credentials, resolve_credentials
from medvision.sources.pacs.errors import InstanceFailedError, PacsNoMatchError
from medvision.sources.pacs.source import InstanceRef, Source
from medvision.sources.pacs.store import InstanceStore, canonical_bytes

__all__ = ["PullSummary", "pull", "pull_cohort", "quiet_libraries"]

log = logging.getLogger("medvision.sources.pacs")

#: Loggers of the libraries that talk to the PACS: below warnings, their lines are chatter (one per request).
_LIBRARY_LOGGERS = ("urllib3", "requests", "dicomweb_client", "pynetdicom")


@dataclass(frozen=True)
class PullSummary:
    """Counts only: a summary can be printed, logged or tracked without identifying anyone."""

    matched: int
    retrieved: int
    skipped: int
    quarantined: int
    unmatched_requests: int
    seconds: float
    store: str

    @property
    def rate(self) -> float:
        """Instances retrieved per second."""
        return self.retrieved / self.seconds if self.seconds > 0 else 0.0


def pull_cohort(spec: CohortSpec | str | Path, *, progress: bool = True) -> PullSummary:
    """Pull the instances of a cohort spec's ``pacs`` section into its store (``medvision cohort pull``)."""
    if not isinstance(spec, CohortSpec):
        spec = load_spec(spec)
    if spec.pacs is None:
        raise SpecError(
            f"cohort {spec.name} has no pacs section; add one (see README 'From PACS') or build the "
            "images folder directly"
        )
    return pull(spec.pacs, progress=progress)


def pull(pacs: PacsSpec, *, progress: bool = True) -> PullSummary:
    """Fetch every instance the request matches and the store lacks; quarantine the ones that fail.

    Raises:
        PacsUnreachableError / PacsAuthError / PacsNoMatchError / PacsError: the pull cannot go on. Every
            instance already stored stays stored and indexed; running the pull again resumes.
    """
    t0 = time.perf_counter()
    creds = _credentials(pacs)
    requests_ = _request_values(pacs)
    scrubber = Scrubber(identifiers=[*creds.secrets(), *_query_values(pacs), *requests_])
    store = InstanceStore(pacs.store)
    try:
        with scrubbed_output(scrubber), quiet_libraries():
            refs, todo, unmatched = _what_to_pull(pacs, creds, requests_, store)
            classes = sorted({r.sop_class for r in refs})
            retrieved, quarantined = _retrieve(
                todo,
                store,
                lambda: _open_source(pacs, creds, classes),
                pacs.concurrency,
                len(refs) - len(todo),
                progress,
            )
    finally:
        store.close()
    summary = PullSummary(
        matched=len(refs),
        retrieved=retrieved,
        skipped=len(refs) - len(todo),
        quarantined=quarantined,
        unmatched_requests=unmatched,
        seconds=round(time.perf_counter() - t0, 3),
        store=str(store.root),
    )
    atomic_write_text(store.root / "pull.json", json.dumps(asdict(summary), indent=2) + "\n", private=True)
    log.info(
        "pulled %d instances (%d skipped as present, %d quarantined) in %.1f s",
        summary.retrieved,
        summary.skipped,
        summary.quarantined,
        summary.seconds,
    )
    return summary


def _what_to_pull(
    pacs: PacsSpec, creds: Credentials, requests_: list[str], store: InstanceStore
) -> tuple[list[InstanceRef], list[InstanceRef], int]:
    """Every instance the request matches, those the store lacks, and the request rows that matched nothing."""
    lister = _open_source(pacs, creds, ())
    try:
        refs, unmatched = _list(lister, pacs, requests_)
    finally:
        lister.close()
    if not refs:
        keys = sorted(k for k, v in pacs.query.model_dump().items() if v)
        keys += [f"request_list ({pacs.request_list.key})"] if pacs.request_list else []
        raise PacsNoMatchError(
            f"the request matches no instance on the PACS (keys used: {', '.join(keys)}); "
            "check the query in the cohort spec's pacs section"
        )
    todo = [r for r in refs if not store.has(r.sop)]
    log.info(
        "PACS request: %d instances matched, %d already in the store, %d to retrieve",
        len(refs),
        len(refs) - len(todo),
        len(todo),
    )
    return refs, todo, unmatched


def _credentials(pacs: PacsSpec) -> Credentials:
    if isinstance(pacs, DicomWebPacs):
        return resolve_credentials(pacs.auth, pacs.credentials_file)
    return Credentials("none")  # DIMSE admits our AE title; it has no passwords


def _open_source(pacs: PacsSpec, creds: Credentials, classes) -> Source:
    # Imported here: only the chosen protocol's client library (dicomweb-client or pynetdicom) is loaded.
    if isinstance(pacs, DicomWebPacs):
        from medvision.sources.pacs.dicomweb import DicomWebSource

        return DicomWebSource(pacs, creds)
    if isinstance(pacs, DimsePacs):
        from medvision.sources.pacs.dimse import DimseSource

        return DimseSource(pacs, classes)
    assert_never(pacs)


# --- what to pull ----------------------------------------------------------------------------------


def _request_values(pacs: PacsSpec) -> list[str]:
    if pacs.request_list is None:
        return []
    req = pacs.request_list
    try:
        with open(req.csv, newline="") as fh:
            reader = csv.DictReader(fh)
            if req.column not in (reader.fieldnames or []):
                raise SpecError(
                    f"request list {req.csv} has no column '{req.column}' (pacs.request_list.column); "
                    f"it has {reader.fieldnames}"
                )
            values = [(row[req.column] or "").strip() for row in reader]
    except FileNotFoundError:
        raise SpecError(f"request list {req.csv} (pacs.request_list.csv) does not exist") from None
    values = list(dict.fromkeys(v for v in values if v))
    if not values:
        raise SpecError(f"request list {req.csv}: column '{req.column}' holds no value")
    return values


def _query_values(pacs: PacsSpec) -> list[str]:
    q = pacs.query
    return [v for v in (*q.modality, q.study_date, q.study_description, q.series_description, q.body_part) if v]


def _list(source: Source, pacs: PacsSpec, request_values: list[str]) -> tuple[list[InstanceRef], int]:
    """Every instance matching the request, each once, in a stable order; and the count of request rows
    that matched no study."""
    q = pacs.query
    base: dict[str, str] = {}
    if q.study_date:
        base["StudyDate"] = q.study_date
    if q.study_description:
        base["StudyDescription"] = q.study_description
    variants = [{**base, "ModalitiesInStudy": m} for m in q.modality] or [base]
    key = pacs.request_list.key if pacs.request_list else None
    per_request: list[dict[str, str]] = [{key: v} for v in request_values] if key else [{}]
    studies: dict[str, None] = {}
    unmatched = 0
    for extra in per_request:
        hits = [uid for v in variants for uid in source.studies({**v, **extra})]
        unmatched += int(key is not None and not hits)
        studies.update(dict.fromkeys(hits))
    series_filters = {}
    if q.series_description:
        series_filters["SeriesDescription"] = q.series_description
    if q.body_part:
        series_filters["BodyPartExamined"] = q.body_part
    wanted = {m.upper() for m in q.modality}
    refs: dict[str, InstanceRef] = {}
    for study in studies:
        for series, modality in source.series(study, series_filters):
            if wanted and modality.upper() not in wanted:
                continue
            for ref in source.instances(study, series):
                refs.setdefault(ref.sop, ref)
    return list(refs.values()), unmatched


# --- retrieval -------------------------------------------------------------------------------------


def _retrieve(
    todo: list[InstanceRef],
    store: InstanceStore,
    open_source: Callable[[], Source],
    concurrency: int,
    skipped: int,
    show: bool,
) -> tuple[int, int]:
    local = threading.local()
    opened: list[Source] = []
    lock = threading.Lock()
    counts = {"ok": 0, "bad": 0}

    def one(ref: InstanceRef) -> None:
        src = getattr(local, "source", None)
        if src is None:
            src = local.source = open_source()
            with lock:
                opened.append(src)
        try:
            ds, syntax = src.fetch(ref)
            if str(ds.get("SOPInstanceUID", "")) != ref.sop:
                raise InstanceFailedError("the PACS sent a different instance than the one asked for")
            try:
                data = canonical_bytes(ds, syntax)
            except Exception as e:  # noqa: BLE001 - an instance pydicom cannot re-encode fails alone
                raise InstanceFailedError(f"instance cannot be encoded ({type(e).__name__})") from None
            store.put(ref.sop, data)
            key = "ok"
        except InstanceFailedError as e:
            store.quarantine(ref.sop, e.reason)
            key = "bad"
        with lock:
            counts[key] += 1
            bar.update(task, advance=1, quarantined=counts["bad"])

    columns = (
        TextColumn("pulling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[skipped]} already present, {task.fields[quarantined]} quarantined"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show) as bar:
        task = bar.add_task("pull", total=len(todo), skipped=skipped, quarantined=0)
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pacs-pull")
        try:
            futures = [pool.submit(one, ref) for ref in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                error = f.exception()
                if error is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for src in opened:
                with suppress(Exception):  # closing a dead connection must not hide the real error
                    src.close()
    return counts["ok"], counts["bad"]


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """The HTTP/DIMSE libraries log each request and association below warning level: not shown during a pull,
    unless their logger's level was set on purpose (an operator debugging a pull sets ``urllib3`` to DEBUG).

    Only chatter is at stake here: every record is scrubbed where it is made, whatever its logger or level.
    """
    quieted = [lg for lg in map(logging.getLogger, _LIBRARY_LOGGERS) if lg.level == logging.NOTSET]
    for lg in quieted:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg in quieted:
            lg.setLevel(logging.NOTSET)
