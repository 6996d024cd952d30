"""Dependencies are declared as used: runtime = what the package imports, extras = what tests, benchmarks and
the team server use, and environment.yml installs exactly pyproject's lists (so a conda environment passes
`make test`, lint included).

A runtime dependency the package never imports is weight on every install (MONAI, fairlearn, jsonschema and
psycopg were); an imported one left undeclared (requests, urllib3, huggingface_hub were) works only while some
other package happens to pull it in.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: Runtime dependencies the package needs without importing them, each with the reason.
NOT_IMPORTED = {
    "torchvision": "pinned with torch (matching wheels); timm imports it; the served model's requirements name it",
    "pyarrow": "pandas' Parquet engine: every manifest and prediction table is read and written through it",
    "pylibjpeg": "pydicom's decoder plugins: JPEG, JPEG 2000 and RLE pixel data decode through them",
    "pylibjpeg-libjpeg": "pydicom's JPEG / JPEG-LS decoder plugin",
    "pylibjpeg-openjpeg": "pydicom's JPEG 2000 decoder plugin",
    "pylibjpeg-rle": "pydicom's RLE decoder plugin",
}


def _name(requirement: str) -> str:
    """PEP 503 normalised distribution name of a requirement string (``mlflow[auth]>=2`` -> ``mlflow``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _imported(*folders: str) -> set[str]:
    """Top-level third-party modules imported anywhere under ``folders`` (absolute imports, stdlib left out)."""
    modules: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"medvision", "__future__"}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    installed = importlib.metadata.packages_distributions()
    return {m: {_name(d) for d in installed.get(m, [])} for m in modules}


RUNTIME = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = {group: {_name(r) for r in reqs} for group, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def test_every_module_the_package_imports_is_a_declared_runtime_dependency():
    by_module = _distributions(_imported("medvision"))
    undeclared = {m: d for m, d in by_module.items() if not d & RUNTIME}
    assert undeclared == {}, "declare these in [project] dependencies (pyproject.toml)"


def test_every_runtime_dependency_is_imported_by_the_package_or_says_why_not():
    imported = set().union(*_distributions(_imported("medvision")).values())
    unused = RUNTIME - imported - set(NOT_IMPORTED)
    assert unused == set(), "move these to the extra that uses them, or say in NOT_IMPORTED why runtime needs them"
    assert set(NOT_IMPORTED) <= RUNTIME  # no stale reasons


def test_test_and_server_libraries_stay_out_of_the_runtime_install():
    assert {"monai", "fairlearn", "jsonschema"} <= EXTRAS["dev"]
    assert {"psycopg", "mlflow"} <= EXTRAS["server"]
    assert not {"monai", "fairlearn", "jsonschema", "psycopg"} & RUNTIME
    # The reasons they are extras: tests and benchmarks import MONAI and fairlearn; nothing in the package does.
    tests = _imported("tests", "benchmarks")
    assert {"monai", "fairlearn"} <= tests and not {"monai", "fairlearn", "psycopg"} & _imported("medvision")
    assert "psycopg" not in _imported("medvision", "scripts")  # the team server's MLflow loads it, not our code


def test_environment_yml_installs_pyproject_with_every_extra_and_the_makefile_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    # Conda gives the interpreter; pip installs the project with its own dependency lists (never --no-deps), so
    # the two can never disagree, and the dev tools `make lint` runs come with the dev extra.
    assert {_name(d) for d in conda} == {"python", "pip"}
    python = next(d for d in conda if d.startswith("python"))
    assert re.fullmatch(r"python=3\.(1[0-9])", python) and int(python.split(".")[1]) >= 10
    torch_pins = re.search(r"^TORCH\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch_pins and set(torch_pins.group(1).split()) <= set(pip)
    project = [p for p in pip if p.startswith("-e ")]
    assert project == [f"-e .[{','.join(sorted(EXTRAS))}]"], project
    assert not any("--no-deps" in p for p in pip) and "--no-deps" not in (ROOT / "environment.yml").read_text()
