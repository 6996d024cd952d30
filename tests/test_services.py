"""On a machine without Orthanc or Chromium, a test that needs one fails with one line naming the package and the
`make install` that provides it (checked by running pytest on such a test with those programs off PATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services import SERVICES, missing

TESTS = Path(__file__).resolve().parent

_NEEDS = """
from services import need

def test_pacs():
    need("orthanc")

def test_report():
    need("chromium")
"""


def test_every_service_the_suite_starts_is_present_on_this_machine():
    # `make install` provides them all; a missing one here would fail its tests with the line checked below.
    assert {name: missing(name) for name in SERVICES} == dict.fromkeys(SERVICES)


def test_a_missing_service_fails_its_test_with_one_line_naming_the_package_and_make_install(tmp_path: Path):
    (tmp_path / "test_needs.py").write_text(_NEEDS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        # Neither program on PATH; a wide terminal so pytest's summary lines are not cut.
        env={**os.environ, "PATH": str(tmp_path / "empty"), "PYTHONPATH": str(TESTS), "COLUMNS": "400"},
        timeout=120,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    lines = done.stdout.splitlines()
    for test, package in (("test_pacs", "orthanc and orthanc-dicomweb packages"), ("test_report", "chromium package")):
        said = [line for line in lines if f"{test}" in line and line.startswith("FAILED")]
        assert len(said) == 1, done.stdout[-2000:]
        assert f"this test needs Debian's {package}" in said[0] and "run `make install`" in said[0]
    assert "Traceback" not in done.stdout and "raise " not in done.stdout  # the line, not a stack
