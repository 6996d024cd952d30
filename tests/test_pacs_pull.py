"""Pulling a cohort from a real Orthanc by DICOMweb and by DIMSE, then building it as a folder."""

from __future__ import annotations

import csv
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
import yaml
from dicom_factory import dicom_image, write
from orthanc_server import CALLED_AET, CALLING_AET, start_orthanc
from pydicom.uid import RLELossless

from medvision.cohort.build import build_cohort
from medvision.cohort.spec import SpecError, load_spec
from medvision.sources.pacs import (
    PacsAuthError,
    PacsNoMatchError,
    PacsUnreachableError,
    pull_cohort,
)
from medvision.sources.synth import synthesize

# Every test here starts a real Orthanc (Debian's package): `make test-fast` leaves them out.
pytestmark = pytest.mark.server

PASSWORD = "Pl4nted-S3cret-pw"  # planted: must never appear in any log or output
KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A running Orthanc holding a synthetic chest X-ray cohort plus one RLE and one corrupt instance."""
    root = tmp_path_factory.mktemp("pacs")
    spec = synthesize(root / "source", "cxr", patients=30, seed=3, size=32)
    files = sorted((root / "source" / "images").rglob("*.dcm"))
    rng = np.random.default_rng(0)
    rle = dicom_image(
        (rng.random((32, 32)) * 4000).astype(np.uint16),
        Modality="DX",
        StudyDate="20210301",
        BodyPartExamined="CHEST",
        SeriesDescription="EXTRA RLE",
    )
    files.append(write(rle, root / "rle.dcm", RLELossless))
    bad = dicom_image(
        (rng.random((32, 32)) * 4000).astype(np.uint16),
        Modality="DX",
        StudyDate="20210301",
        BodyPartExamined="CHEST",
        SeriesDescription="EXTRA CORRUPT",
    )
    bad.PixelData = bad.PixelData[:300]  # truncated: the header is fine, the pixels cannot be decoded
    files.append(write(bad, root / "corrupt.dcm"))
    server = start_orthanc(root / "orthanc", "medvision", PASSWORD)
    server.upload(files)
    yield {"server": server, "spec": spec, "files": files, "root": root, "rle_sop": rle.SOPInstanceUID}
    server.stop()


def _spec(pacs, tmp: Path, protocol: str, subset: bool = False, **pacs_extra) -> Path:
    """A cohort spec pulling every DX/CR study from the fixture's Orthanc into ``tmp/store``; ``subset``: only some
    patients are pulled, so the synthetic study's held-out sites and conditions are dropped (a build checks that
    every named value exists in the data)."""
    raw = yaml.safe_load(pacs["spec"].read_text())
    if subset:
        for key in ("heldout_sites", "heldout_conditions", "outlier_conditions"):
            raw.get("splits", {}).pop(key, None)
    server = pacs["server"]
    section = {
        "protocol": protocol,
        "store": str(tmp / "store"),
        "query": {"modality": ["DX", "CR"]},
        "concurrency": 2,
        "retries": 1,
        "timeout": 10,
    }
    if protocol == "dicomweb":
        section |= {"url": server.dicomweb, "auth": "basic"}
    else:
        section |= {
            "host": "127.0.0.1",
            "port": server.dicom_port,
            "called_aet": CALLED_AET,
            "calling_aet": CALLING_AET,
        }
    section |= pacs_extra
    raw.pop("images")
    raw["labels"]["csv"] = str(pacs["spec"].parent / "labels.csv")
    raw["pacs"] = section
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "cohort.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _indexed(store: Path) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of every instance the store's records name (merged file and pending segments)."""
    index: dict[str, str] = {}
    for path in [store / "index.jsonl", *sorted((store / "index.d").glob("*.jsonl"))]:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:  # a segment merged away meanwhile
            continue
        index.update((rec["sop"], rec["sha256"]) for rec in map(json.loads, lines))
    return index


def _temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if ".tmp" in p.name or p.suffix == ".part"]


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("MEDVISION_PACS_USER", "medvision")
    monkeypatch.setenv("MEDVISION_PACS_PASSWORD", PASSWORD)


def _expected_dx_cr(pacs) -> int:
    return sum(pydicom.dcmread(f, stop_before_pixels=True).Modality in ("DX", "CR") for f in pacs["files"])


@pytest.mark.slow
def test_dicomweb_and_dimse_pulls_build_identical_manifests(pacs, env, tmp_path):
    n = _expected_dx_cr(pacs)
    cards, manifests = {}, {}
    for protocol in ("dicomweb", "dimse"):
        spec = _spec(pacs, tmp_path / protocol, protocol)
        summary = pull_cohort(spec, progress=False)
        assert (protocol, summary.matched, summary.retrieved, summary.quarantined) == (protocol, n, n, 0)
        cards[protocol] = build_cohort(spec, tmp_path / protocol / "cohort")
        manifests[protocol] = pd.read_parquet(tmp_path / protocol / "cohort" / "manifest.parquet")
        # The RLE instance kept its compression on the way (no transcoding by either transport).
        store = tmp_path / protocol / "store"
        sha = _indexed(store)[pacs["rle_sop"]]
        assert pydicom.dcmread(store / "instances" / sha[:2] / f"{sha}.dcm").file_meta.TransferSyntaxUID == RLELossless
        quarantine = pd.read_csv(tmp_path / protocol / "cohort" / "quarantine.csv")
        assert len(quarantine) == 1 and quarantine["stage"].iloc[0] == "decode"  # the truncated pixels
    web, dimse = manifests["dicomweb"], manifests["dimse"]
    assert len(web) == n - 1 and web["content_sha256"].nunique() == n - 1
    pd.testing.assert_frame_equal(web, dimse)
    assert cards["dicomweb"].manifest_sha256 == cards["dimse"].manifest_sha256


def test_dimse_responses_wait_for_the_request_that_asked_for_them(pacs, tmp_path):
    """pynetdicom's reactor thread can take a C-FIND response meant for the request just sent and drop it
    (pydicom/pynetdicom#875): under CPU load that cut one match from a search every few hundred. And its response
    loops take whatever comes next, so a late answer to an earlier request would shift every later answer. A
    stale response parked on our association's queue must neither be taken by the reactor nor be read as an
    answer to the searches that follow."""
    from pynetdicom.dimse_primitives import C_FIND

    from medvision.cohort.spec import DimsePacs
    from medvision.sources.pacs.dimse import DimseSource

    server = pacs["server"]
    spec = DimsePacs(
        protocol="dimse",
        host="127.0.0.1",
        port=server.dicom_port,
        called_aet=CALLED_AET,
        calling_aet=CALLING_AET,
        store=tmp_path / "store",
        query={"modality": ["DX"]},
        timeout=10,
    )
    source = DimseSource(spec)
    try:
        studies = source.studies({"ModalitiesInStudy": "DX"})  # the source's first request: message ID 1
        assoc = source._assoc
        assert studies and assoc is not None and assoc.is_established  # one association serves every search
        late = C_FIND()  # a pending match with no identifier: read as an answer, it would fail the next search
        late.MessageIDBeingRespondedTo, late.Status = 1, 0xFF00
        assoc.dimse.msg_queue.put((1, late))
        time.sleep(0.3)  # the reactor polls the queue every millisecond between requests
        assert assoc.dimse.msg_queue.qsize() == 1
        # Every later search on the same association gets its own, complete answer; the late one is dropped.
        refs = [r for st in studies for se, _ in source.series(st, {}) for r in source.instances(st, se)]
        assert source._assoc is assoc and len({r.sop for r in refs}) == len(refs) > 0
        assert {r.study for r in refs} == set(studies)
        assert assoc.dimse.msg_queue.empty()
    finally:
        source.close()


def _slow_pacs(pacs, delay: float) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Orthanc's DICOMweb behind a proxy that answers each request ``delay`` seconds late; its URL and the proxy."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    proxy.upstream, proxy.seen, proxy.fail_first, proxy.delay = pacs["server"].url, [], 0, delay  # type: ignore[attr-defined]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web", proxy


@pytest.mark.slow
def test_a_killed_pull_resumes_without_downloading_again(pacs, env, tmp_path):
    """Killed once five instances are stored and indexed. Through a PACS that answers 0.1 s late, so the pull is
    still running when the test sees five (the store flushes its index every 0.25 s: against a fast local Orthanc a
    whole pull can finish before the first flush, whatever the test's polling)."""
    n = _expected_dx_cr(pacs)
    url, proxy = _slow_pacs(pacs, delay=0.1)
    spec = _spec(pacs, tmp_path, "dicomweb", concurrency=1, url=url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "medvision.cli", "cohort", "pull", str(spec), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600  # the CLI's imports and the slowed listing come first
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_indexed(tmp_path / "store")) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the pull finished before it could be killed"
    present = set(_indexed(tmp_path / "store"))
    assert 5 <= len(present) < n
    proxy.delay = 0.0  # type: ignore[attr-defined]  # the resumed pull at full speed

    summary = pull_cohort(spec, progress=False)
    assert summary.skipped == len(present) and summary.retrieved == n - len(present)
    assert len(_indexed(tmp_path / "store")) == n
    assert not list((tmp_path / "store" / "index.d").glob("*"))  # merged into index.jsonl when the pull ended
    assert len(list((tmp_path / "store" / "instances").rglob("*.dcm"))) == n
    assert _temporaries(tmp_path / "store") == []
    # A third pull finds everything present and retrieves nothing.
    again = pull_cohort(spec, progress=False)
    assert (again.retrieved, again.skipped) == (0, n)


def test_stopped_server_wrong_password_and_empty_query_fail_clearly(pacs, env, tmp_path, monkeypatch):
    from orthanc_server import free_port

    dead = _spec(pacs, tmp_path / "dead", "dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(PacsUnreachableError, match="cannot reach the PACS at http://127.0.0.1:"):
        pull_cohort(dead, progress=False)
    store = tmp_path / "dead" / "store"
    assert not list((store / "instances").rglob("*")) and _temporaries(store) == []

    dead_dimse = _spec(pacs, tmp_path / "dead2", "dimse", port=free_port())
    with pytest.raises(PacsUnreachableError, match="cannot reach the PACS"):
        pull_cohort(dead_dimse, progress=False)

    monkeypatch.setenv("MEDVISION_PACS_PASSWORD", "not-the-password")
    with pytest.raises(PacsAuthError, match=r"refused our credentials \(HTTP 401\)"):
        pull_cohort(_spec(pacs, tmp_path / "auth", "dicomweb"), progress=False)
    with pytest.raises(PacsAuthError, match="rejected the association"):
        pull_cohort(_spec(pacs, tmp_path / "aet", "dimse", calling_aet="STRANGER"), progress=False)

    monkeypatch.setenv("MEDVISION_PACS_PASSWORD", PASSWORD)
    nothing = _spec(pacs, tmp_path / "none", "dimse", query={"modality": ["MR"], "study_date": "19000101-19001231"})
    with pytest.raises(PacsNoMatchError, match="keys used: modality, study_date"):
        pull_cohort(nothing, progress=False)


def test_spec_rejects_typos_credentials_in_url_and_empty_requests(pacs, tmp_path):
    good = yaml.safe_load(_spec(pacs, tmp_path, "dicomweb").read_text())
    for change, message in (
        ({"qurey": {}}, "pacs.qurey: unknown key"),
        ({"url": "http://user:pw@127.0.0.1/dicom-web"}, "must not hold credentials"),
        ({"query": {}}, "would pull the whole archive"),
        ({"query": {"study_date": "2021-01-01"}}, "pacs.query.study_date"),
    ):
        raw = {**good, "pacs": {**good["pacs"], **change}}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(SpecError, match=message.replace("(", r"\(")):
            load_spec(path)
    spec = load_spec(tmp_path / "cohort.yaml")
    assert spec.images == (tmp_path / "store" / "instances").resolve()
    assert spec.pacs.verify_tls is True


def test_planted_patient_id_and_password_never_leave_the_pull(pacs, env, tmp_path, caplog, capsys):
    from mlflow import MlflowClient

    caplog.set_level(logging.DEBUG)
    planted = json.loads((pacs["root"] / "source" / "phi_planted.json").read_text())
    wanted = sorted(planted["patient_ids"])[:3]
    request = tmp_path / "request.csv"
    with request.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["mrn"])
        w.writerows([[v] for v in [*wanted, "MRN-NOT-IN-PACS-9"]])
    spec = _spec(
        pacs,
        tmp_path,
        "dicomweb",
        subset=True,
        query={"body_part": "CHEST"},
        request_list={"csv": str(request), "column": "mrn", "key": "PatientID"},
    )
    summary = pull_cohort(spec, progress=True)
    assert summary.retrieved > 0 and summary.unmatched_requests == 1
    card = build_cohort(spec, tmp_path / "cohort")
    # Track the cohort as the pipeline's cohort stage does (params, the card, the pull summary).
    (tmp_path / "mlruns").mkdir()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.create_experiment("pacs", artifact_location=str(tmp_path / "mlruns" / "artifacts"))
    run = client.create_run(exp).info.run_id
    client.log_param(run, "cohort.name", card.name)
    client.log_param(run, "cohort.manifest_sha256", card.manifest_sha256)
    client.log_artifact(run, str(tmp_path / "cohort" / "cohort.json"), "cohort")
    client.log_artifact(run, str(tmp_path / "store" / "pull.json"), "cohort")
    client.set_terminated(run)
    out, err = capsys.readouterr()
    texts = [caplog.text, out, err, json.dumps(summary.__dict__)]
    for f in [
        *(tmp_path / "cohort").glob("*.*"),
        *(tmp_path / "mlruns").rglob("*"),
        tmp_path / "store" / "pull.json",
        tmp_path / "store" / "index.jsonl",
    ]:
        if f.is_file():
            texts.append(f.read_bytes().decode("utf-8", "replace"))
    blob = "\n".join(texts)
    for secret in [PASSWORD, *wanted, "MRN-NOT-IN-PACS-9"]:
        assert secret not in blob
    # The progress bar was drawn (to stderr, which the secret check above read): "pulling", then done/total.
    assert "pulling" in err and f"{summary.retrieved}/{summary.retrieved}" in err, err[-500:]


def test_a_pull_and_the_cohort_built_from_it_are_owner_only_whatever_the_umask(pacs, env, tmp_path):
    """Issue 21 probe #3: with the default umask (022) `medvision cohort pull` left identifiable DICOM,
    `index.jsonl` (SOP UIDs) and `pull.json` 0644 in 0755 folders, readable by every local account."""
    spec = _spec(pacs, tmp_path, "dimse")
    cli = f"{sys.executable} -m medvision.cli cohort"
    script = f"umask 022 && {cli} pull {spec} --no-progress && {cli} build {spec} --out {tmp_path / 'cohort'}"
    done = subprocess.run(
        ["sh", "-c", script],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for root in (tmp_path / "store", tmp_path / "cohort"):
        entries = [root, *root.rglob("*")]
        files = [p for p in entries if p.is_file()]
        assert {oct(p.stat().st_mode & 0o777) for p in entries if p.is_dir()} == {"0o700"}, root
        assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}, root
        names = {p.name for p in files}
        assert names >= ({"index.jsonl", "pull.json"} if root.name == "store" else {"manifest.parquet", "cohort.json"})
    assert len(list((tmp_path / "store" / "instances").rglob("*.dcm"))) > 0


def test_url_encoded_identifiers_in_library_debug_lines_are_scrubbed(pacs, env, tmp_path, caplog):
    """HTTP libraries quote request URLs, where a patient ID is percent-encoded (``PID%200042%2F7``): a scrubber
    replacing literal values let them through. An operator debugging a pull sets urllib3 to DEBUG: each request
    line is shown, with every request value removed in any spelling."""
    from urllib.parse import quote, quote_plus

    planted = json.loads((pacs["root"] / "source" / "phi_planted.json").read_text())
    real = sorted(planted["patient_ids"])[:1]
    odd = ["PID 0042/7", "DOE^JANE", "Ünïcode Näme"]
    request = tmp_path / "request.csv"
    pd.DataFrame({"mrn": [*real, *odd]}).to_csv(request, index=False)
    spec = _spec(
        pacs,
        tmp_path,
        "dicomweb",
        subset=True,
        query={"body_part": "CHEST"},
        request_list={"csv": str(request), "column": "mrn", "key": "PatientID"},
    )
    for name in ("urllib3", "dicomweb_client"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            summary = pull_cohort(spec, progress=False)
    finally:
        for name in ("urllib3", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert summary.unmatched_requests == len(odd)
    assert "GET /dicom-web/studies?" in caplog.text  # the library did log its request lines ...
    assert "Ü" not in caplog.text  # a name's accented first letter too (runs of letters are Unicode runs)
    for value in [*real, *odd, PASSWORD]:  # ... with no request value in any spelling
        for spelling in {value, quote(value), quote_plus(value), quote(value, safe=""), quote(quote(value))}:
            assert spelling not in caplog.text, spelling


class _FlakyProxy(http.server.BaseHTTPRequestHandler):
    """In front of Orthanc's DICOMweb: answers the first ``fail_first`` requests with 503, forwards the rest, each
    after ``delay`` seconds (a slow PACS)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server = self.server
        server.seen.append(self.path)  # type: ignore[attr-defined]
        time.sleep(getattr(server, "delay", 0.0))
        if len(server.seen) <= server.fail_first:  # type: ignore[attr-defined]
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k in ("Authorization", "Accept")}
        answer = requests.get(server.upstream + self.path, headers=headers, timeout=10)  # type: ignore[attr-defined]
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args: object) -> None:
        pass


def test_transient_failures_are_retried_by_one_loop_exactly_retries_times(pacs, env, tmp_path, monkeypatch):
    """One retry helper: an overloaded server (503) is asked again with back-off, ``retries`` times and no more
    (neither urllib3 nor dicomweb-client retries on top), and wrong credentials are never asked again."""
    from medvision.cohort.spec import DicomWebPacs
    from medvision.sources.pacs.credentials import resolve_credentials
    from medvision.sources.pacs.dicomweb import DicomWebSource
    from medvision.sources.pacs.errors import PacsError

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    proxy.upstream = pacs["server"].url  # type: ignore[attr-defined]
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web"

    def studies(fail_first: int, retries: int = 2) -> list[str]:
        proxy.seen, proxy.fail_first = [], fail_first  # type: ignore[attr-defined]
        spec = DicomWebPacs(
            protocol="dicomweb", url=url, auth="basic", store=tmp_path, query={"modality": ["DX"]}, retries=retries
        )
        source = DicomWebSource(spec, resolve_credentials("basic", None))
        try:
            return source.studies({"ModalitiesInStudy": "DX"})
        finally:
            source.close()

    try:
        assert studies(fail_first=2) and len(proxy.seen) == 3  # two 503s, then the answer
        with pytest.raises(PacsError, match="HTTP 503 after retries"):
            studies(fail_first=100)
        assert len(proxy.seen) == 3  # 1 + retries attempts, not (1 + retries) squared
        monkeypatch.setenv("MEDVISION_PACS_PASSWORD", "not-the-password")
        with pytest.raises(PacsAuthError):
            studies(fail_first=0)
        assert len(proxy.seen) == 1
    finally:
        proxy.shutdown()
        proxy.server_close()
