"""The real programs some tests start (Orthanc, PostgreSQL, Chromium) and the kernel feature one uses (user
namespaces), each checked before the test uses it.

A missing one fails the test with ONE line naming what to install and the ``make install`` that installs it,
instead of a traceback from deep inside a fixture (a fresh machine used to get ``FileNotFoundError: 'Orthanc'``
or a 40-line ``CalledProcessError``). A failure, not a skip: the suite promises these checks ran.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["DICOMWEB_PLUGIN", "SERVICES", "missing", "need"]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

_INSTALL = "run `make install` (it installs what is missing; as root, or with sudo)"


def _orthanc() -> str | None:
    if shutil.which("Orthanc") is None:
        return "no `Orthanc` on PATH"
    if not DICOMWEB_PLUGIN.exists():
        return f"no DICOMweb plugin at {DICOMWEB_PLUGIN}"
    return None


def _postgresql() -> str | None:
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") and shutil.which("pg_ctl") is None:
        return "no pg_ctl under /usr/lib/postgresql/*/bin or on PATH"
    absent = [m for m in ("psycopg", "flask_wtf") if importlib.util.find_spec(m) is None]
    if absent:
        return f"the `server` extra is not installed (no {', '.join(absent)})"
    return None


def _chromium() -> str | None:
    return None if shutil.which("chromium") else "no `chromium` on PATH"


def _user_namespaces() -> str | None:
    if shutil.which("unshare") is None:
        return "no `unshare` on PATH"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"`unshare --user` failed: {done.stderr.strip()[:120]}"


#: name -> (check returning why it is missing or None, what the tests need, how to get it)
SERVICES: dict[str, tuple[Callable[[], str | None], str, str]] = {
    "orthanc": (_orthanc, "Debian's orthanc and orthanc-dicomweb packages", _INSTALL),
    "postgresql": (_postgresql, "Debian's postgresql package and the medvision[server] extra", _INSTALL),
    "chromium": (_chromium, "Debian's chromium package", _INSTALL),
    "userns": (
        _user_namespaces,
        "unprivileged user namespaces (a kernel setting, no package)",
        "`sysctl -w kernel.unprivileged_userns_clone=1` (and kernel.apparmor_restrict_unprivileged_userns=0 on "
        "Ubuntu), or run the tests as root",
    ),
}


@functools.cache
def missing(service: str) -> str | None:
    """Why ``service`` cannot be used here, or ``None`` when it can (checked once per session)."""
    return SERVICES[service][0]()


def need(*services: str) -> None:
    """Fail the calling test with one line per the first missing service: what is missing and how to install it."""
    for service in services:
        why = missing(service)
        if why is not None:
            _, what, fix = SERVICES[service]
            pytest.fail(f"this test needs {what} ({why}): {fix}", pytrace=False)
