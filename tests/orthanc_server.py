"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on free loopback ports, for PACS tests.

Started from a temporary JSON config and storage folder: HTTP bound to 127.0.0.1 with remote access off,
DICOMweb on, HTTP basic authentication with one user, and one known DICOM modality (our AE title on
127.0.0.1) that alone may query and retrieve (checked by AE title and host). ``make install`` installs the
packages; a machine without them fails the test with one line saying so (``services.need``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from services import DICOMWEB_PLUGIN, need

__all__ = ["DICOMWEB_PLUGIN", "Orthanc", "free_port", "start_orthanc"]

CALLED_AET = "ORTHANC"
CALLING_AET = "MEDVISION"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are chosen, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@dataclass
class Orthanc:
    process: subprocess.Popen
    http_port: int
    dicom_port: int
    user: str
    password: str
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, paths: list[Path]) -> list[str]:
        """POST each file to the REST API; returns Orthanc's instance ids."""
        ids = []
        with requests.Session() as s:
            s.auth = (self.user, self.password)
            for p in paths:
                r = s.post(f"{self.url}/instances", data=Path(p).read_bytes(), timeout=30)
                r.raise_for_status()
                ids.append(r.json()["ID"])
        return ids

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_orthanc(folder: Path, user: str, password: str) -> Orthanc:
    """Start Orthanc with storage under ``folder``; returns when its REST API answers."""
    need("orthanc")  # one line naming the packages and `make install` when they are missing
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, scu_port = free_ports(3)
    config = {
        "Name": "medvision-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": CALLED_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {"medvision": [CALLING_AET, "127.0.0.1", scu_port]},
        "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "StableAge": 1,
        "SaveJobs": False,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as the server
    # DCMTK (Orthanc's DICOM stack) leaves Nagle on unless $TCP_NODELAY says otherwise; with it on, each
    # DIMSE exchange waits ~40 ms for a delayed ACK.
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    server = Orthanc(proc, http_port, dicom_port, user, password, folder)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start; see {folder / 'orthanc.log'}")
        try:
            if requests.get(f"{server.url}/system", auth=(user, password), timeout=1).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within 30 s; see {folder / 'orthanc.log'}")
