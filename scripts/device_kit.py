"""Write the offline wheelhouse for a lent GPU machine that holds PyTorch and nothing else (``make device-kit``).

    python scripts/device_kit.py --out device-kit

The kit holds what ``benchmarks/gpu_throughput.py`` and ``benchmarks/recipe_choices.py`` import beyond PyTorch
(torch, torchvision and what they require), one wheel each, plus medvision itself, and a ``requirements.txt``
pinning exactly those. On the GPU machine (Linux x86_64, this Python)::

    pip install --no-index --no-deps --find-links device-kit -r device-kit/requirements.txt

``--no-deps`` because the kit is a subset: medvision's full dependency closure (MLflow's server, pyarrow, OpenCV,
SciPy, scikit-learn, matplotlib, ...) is several times the 60 MiB the kit may take, and neither benchmark imports
those. ``tests/test_device_kit.py`` installs the kit this way into a fresh environment that sees only PyTorch and
runs both benchmarks.

The wheels are made offline from the distributions installed in this environment (the versions ``make install``
resolved and the tests run against): each installed distribution's files, as its ``RECORD`` lists them, are packed
back into a wheel with its own ``WHEEL`` tags (so a platform wheel stays ``manylinux_..._x86_64``). Console scripts
are left out (pip writes them again from ``entry_points.txt``). medvision's wheel is built from the working tree.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
MAX_MIB = 60

#: What the lent machine already has: these and everything they require.
PROVIDED = ("torch", "torchvision")

#: What the two benchmarks import beyond PyTorch, directly or through the medvision modules they use (their
#: requirements follow). Lightning and timm for the training step; pydantic for medvision's configs and documents;
#: MLflow's client (mlflow-skinny) with its SQLAlchemy store (sqlalchemy, alembic) for the recipe benchmark, which
#: reads a ``sqlite:///`` tracking store.
NEEDED = (
    "lightning",
    "timm",
    "pydantic",
    "pyyaml",
    "pandas",
    "pydicom",
    "rich",
    "mlflow-skinny",
    "sqlalchemy",
    "alembic",
)

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same installed files give the same wheel bytes


def _requires(dist: Distribution) -> list[str]:
    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def closure(names: tuple[str, ...] | list[str]) -> dict[str, Distribution]:
    """The installed distributions ``names`` need, with everything they require (markers evaluated here)."""
    found: dict[str, Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError as e:
            raise SystemExit(f"device-kit: {name} is not installed in {sys.prefix}: run `make install`") from e
        found[name] = dist
        todo += _requires(dist)
    return found


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel_tag(wheel_file: str) -> str:
    tags = [line.split(":", 1)[1].strip() for line in wheel_file.splitlines() if line.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def repack(dist: Distribution, out: Path) -> Path:
    """An installed distribution packed back into a wheel in ``out`` (its RECORD's files, its WHEEL's tags)."""
    info = Path(str(dist._path))  # type: ignore[attr-defined]  # the .dist-info folder
    site = info.parent
    name_version = info.name[: -len(".dist-info")]
    if not (info / "WHEEL").is_file() or not dist.files:
        raise SystemExit(
            f"device-kit: {name_version} in {site} was not installed from a wheel (no WHEEL or RECORD; conda?): "
            "build the kit from the pip environment `make install` makes"
        )
    wheel_meta = (info / "WHEEL").read_text()
    name = re.sub(r"[-_.]+", "_", name_version.rsplit("-", 1)[0])
    target = out / f"{name}-{dist.version}-{_wheel_tag(wheel_meta)}.whl"
    scripts = {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}
    prefix = Path(sys.prefix).resolve()
    bindir = Path(sysconfig.get_path("scripts")).resolve()
    data_dir = f"{name_version}.data"
    record: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:

        def add(arcname: str, data: bytes) -> None:
            zf.writestr(zipfile.ZipInfo(arcname, _EPOCH), data, zipfile.ZIP_DEFLATED)
            record.append((arcname, _digest(data), str(len(data))))

        for rel in sorted(str(f) for f in dist.files or []):
            path = (site / rel).resolve()
            if rel.endswith(".pyc") or "__pycache__" in rel or rel.startswith(f"{info.name}/"):
                continue
            if rel.startswith(".."):
                if path.parent == bindir:
                    if path.name in scripts:
                        continue  # pip writes entry-point scripts itself
                    data = path.read_bytes()
                    if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
                        data = b"#!python\n" + data.split(b"\n", 1)[1]
                    add(f"{data_dir}/scripts/{path.name}", data)
                else:
                    add(f"{data_dir}/data/{path.relative_to(prefix)}", path.read_bytes())
                continue
            add(rel, path.read_bytes())
        skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
        for meta in sorted(p for p in info.rglob("*") if p.is_file()):
            rel = meta.relative_to(site).as_posix()
            if meta.name not in skip and "__pycache__" not in rel:
                add(rel, meta.read_bytes())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(record)
        writer.writerow((f"{info.name}/RECORD", "", ""))
        zf.writestr(zipfile.ZipInfo(f"{info.name}/RECORD", _EPOCH), buf.getvalue(), zipfile.ZIP_DEFLATED)
    return target


def build_medvision(out: Path) -> Path:
    """medvision's own wheel, from the working tree (no network: the installed setuptools builds it)."""
    with tempfile.TemporaryDirectory(prefix="medvision-wheel-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
             "-w", tmp, str(ROOT)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode:
            raise SystemExit(f"device-kit: building medvision's wheel failed:\n{proc.stdout}{proc.stderr}")
        (wheel,) = Path(tmp).glob("medvision-*.whl")
        return Path(shutil.move(str(wheel), out / wheel.name))


def build_kit(out: Path, max_mib: float = MAX_MIB) -> list[tuple[str, str, int]]:
    """Write the kit into ``out`` (emptied first); returns (name, version, wheel bytes) per wheel.

    Raises:
        SystemExit: the kit is larger than ``max_mib``.
    """
    provided = closure(PROVIDED)
    needed = {name: dist for name, dist in closure(NEEDED).items() if name not in provided}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = []
    for name, dist in sorted(needed.items()):
        rows.append((name, dist.version, repack(dist, out).stat().st_size))
    mv = build_medvision(out)
    rows.append(("medvision", mv.name.split("-")[1], mv.stat().st_size))
    (out / "requirements.txt").write_text(
        "# The kit's wheels, pinned; install with --no-index --no-deps (scripts/device_kit.py says why)\n"
        + "".join(f"{name}=={version}\n" for name, version, _ in rows)
    )
    total = sum(p.stat().st_size for p in out.iterdir())
    for name, version, size in sorted(rows, key=lambda r: -r[2]):
        print(f"{size / 2**20:8.2f} MiB  {name}=={version}")
    print(f"device-kit: {len(rows)} wheels, {total / 2**20:.1f} MiB in {out} (limit {max_mib:g} MiB)")
    if total > max_mib * 2**20:
        raise SystemExit(f"device-kit: {total / 2**20:.1f} MiB is over the {max_mib:g} MiB limit")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "device-kit")
    ap.add_argument("--max-mib", type=float, default=MAX_MIB)
    args = ap.parse_args()
    build_kit(args.out, args.max_mib)


if __name__ == "__main__":
    main()
