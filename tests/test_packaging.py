"""An installed wheel carries what a checkout has: every package, the report templates and the shipped recipes."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_the_explicit_package_list_names_every_package_in_the_tree():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["medvision*"]))
    assert found - listed == set(), "add the new package to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {"medvision._pipelines", "medvision._templates"}


@pytest.mark.slow
def test_a_wheel_renders_reports_and_finds_the_demo_without_a_checkout(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("medvision-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"medvision/_templates/report.html.j2", "medvision/_pipelines/demo.yaml"} <= names
    code = (
        "from medvision.report.render import TEMPLATE_DIR\n"
        "from medvision.demo import DEMO_PIPELINE\n"
        "from medvision.pipeline import load_pipeline\n"
        "load_pipeline(DEMO_PIPELINE)\n"
        "print(TEMPLATE_DIR)\n"
    )
    # -I: isolated, so neither the checkout (cwd) nor the editable install can answer; only the unpacked wheel
    # and the environment's dependencies are importable.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": ":".join([str(site), *deps]), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {[str(site)]!r}\n{code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).is_relative_to(site)
