"""Extensions from outside the package: a plugin distribution, installed with no index, extends every registry.

The plugin is written here (a pyproject and a package), built and installed by pip into a folder of its own
(``--no-index --no-deps``: nothing is downloaded), and reached by child processes through ``PYTHONPATH``; this
interpreter never imports it. It declares one entry point per group, each exercising a recipe of
docs/ARCHITECTURE.md "Extending":

* ``medvision.readers``: a reader of ``.tinyimg`` files; ``medvision cohort build`` with a *spawn* pool (a fresh
  interpreter per worker, which inherits nothing from the build) ingests them, and the plugin's import log shows
  the workers loaded it themselves;
* ``medvision.backbones``: a backbone name ``medvision weights list`` shows and ``create_backbone`` builds;
* ``medvision.heads``: a head class, registered under its entry point's name, that a fine-tune config accepts;
* ``medvision.stages``: a stage kind that ``medvision run`` validates, runs, records and reuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

KEY = "00112233445566778899aabbccddeeff"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "medvision-tinyimg"
version = "0.1.0"

[tool.setuptools]
packages = ["medvision_tinyimg"]

[project.entry-points."medvision.readers"]
tinyimg = "medvision_tinyimg.reader:TinyImgReader"

[project.entry-points."medvision.backbones"]
tinyimg = "medvision_tinyimg.backbones:SPECS"

[project.entry-points."medvision.heads"]
centroid = "medvision_tinyimg.heads:CentroidHead"

[project.entry-points."medvision.stages"]
note = "medvision_tinyimg.stages:NoteKind"
"""

READER = '''\
"""A 16 x 16 grey image behind an 8-byte patient tag; the import is logged (pid) to show which processes load it."""
import os
from pathlib import Path

import numpy as np

from medvision.io import ImageHeader, ImageReadError, LoadedImage

if os.environ.get("TINYIMG_IMPORT_LOG"):
    with open(os.environ["TINYIMG_IMPORT_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")


class TinyImgReader:
    kind = "tinyimg"

    def can_read(self, path: Path) -> bool:
        return path.suffix == ".tinyimg"

    def _bytes(self, path: Path) -> bytes:
        data = path.read_bytes()
        if len(data) != 8 + 16 * 16:
            raise ImageReadError(path, "not a tinyimg file (wrong size)", "write 8 tag bytes and 256 pixels")
        return data

    def read_header(self, path: Path) -> ImageHeader:
        tag = self._bytes(path)[:8].decode()
        return ImageHeader(kind=self.kind, frames=1, channels=1, rows=16, columns=16, patient_id=tag, modality="OT")

    def read(self, path: Path, frame="middle") -> LoadedImage:
        pixels = np.frombuffer(self._bytes(path)[8:], np.uint8).reshape(1, 16, 16).astype(np.float32) / 255.0
        return LoadedImage(pixels, {"format": "tinyimg"})
'''

BACKBONES = """\
from medvision.models import BackboneSpec

SPECS = [
    BackboneSpec(
        name="tinyimg-cnn",
        arch="resnet18",
        arch_kwargs={"layers": (1, 1, 1, 1), "channels": (8, 8, 16, 16), "stem_width": 8},
        tiny=True,
        no_hub_reason="a plugin's test network",
        description="a plugin's tiny ResNet",
    )
]
"""

HEADS = '''\
import torch
from pydantic import Field

from medvision.heads import Head, HeadOptions, HeadOutput


class CentroidOptions(HeadOptions):
    temperature: float = Field(1.0, gt=0)


class CentroidHead(Head):
    """Logits are negative distances to learnt class centroids; the OOD score is the distance to the nearest."""

    Options = CentroidOptions
    ood_score_name = "centroid"

    def __init__(self, in_features, num_classes, **options):
        super().__init__(in_features, num_classes, **options)
        self.centroids = torch.nn.Parameter(torch.randn(num_classes, in_features))

    def forward(self, features):
        self._check_features(features)
        logits = -torch.cdist(features, self.centroids) / self.options.temperature
        return HeadOutput(logits=logits, probs=logits.softmax(-1), ood_score=-logits.max(-1).values)

    def loss(self, out, target):
        return torch.nn.functional.cross_entropy(out.logits, self._check_target(target, self.num_classes))
'''

STAGES = '''\
from typing import Literal

from medvision.pipeline import StageKind, StageOutput, StageSpec
from medvision.pipeline.executors import record_output, reused_output
from medvision.pipeline.kinds import Identity


class NoteStage(StageSpec):
    kind: Literal["note"]
    text: str
    #: an earlier cohort stage the note is about (optional)
    about: str | None = None


class NoteKind(StageKind[NoteStage]):
    """Writes its text to note.txt: the smallest stage with a stage key, a child run and reuse."""

    name = "note"
    config = NoteStage
    inputs = {"about": ("cohort",)}
    exclusive = True
    opens_file = True

    def identity(self, ctx):
        return {"-": Identity(ctx.stage.model_dump(mode="json"), [], None)}

    def execute(self, ctx):
        key = self.identity(ctx)["-"].key(self.name, ctx.version)
        reused = reused_output(ctx, key)
        if reused is not None:
            row = {"member": "-", "status": "reused", "run_id": reused.run_ids[0], "result": str(reused.path)}
            return reused, [row]
        run_id = ctx.tracker.start_child(ctx.stage_id, self.name, key, ctx.stage_id)
        path = ctx.folder / "note.txt"
        path.write_text(ctx.stage.text)
        output = StageOutput(kind=self.name, run_ids=[run_id], path=path)
        record_output(ctx, run_id, output)
        ctx.tracker.end(run_id, True)
        return output, [{"member": "-", "status": "ran", "run_id": run_id, "result": str(path)}]
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plugin built and installed by pip into a folder of its own, with no index and no dependencies."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "medvision_tinyimg").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    for name, text in {
        "__init__": "",
        "reader": READER,
        "backbones": BACKBONES,
        "heads": HEADS,
        "stages": STAGES,
    }.items():
        (src / "medvision_tinyimg" / f"{name}.py").write_text(text)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (site / "medvision_tinyimg" / "reader.py").exists()
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(site), "MEDVISION_PSEUDONYM_KEY": KEY, **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _medvision(args: list[str], cwd: Path, env: dict[str, str], start_method: str | None = None):
    """The real command line in a child interpreter; ``start_method`` sets multiprocessing's first (what Python 3.14's
    forkserver default, or macOS's spawn, would give the build's worker pools)."""
    boot = "import sys; from medvision.cli import main; sys.argv[0] = 'medvision'; main()"
    if start_method:
        boot = f"import multiprocessing; multiprocessing.set_start_method({start_method!r}); {boot}"
    return subprocess.run(
        [sys.executable, "-c", boot, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_plugin_reader_ingests_its_files_in_spawned_cohort_build_workers(plugin_site, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(72):  # over the 64 / 32 files below which indexing and decoding stay in one process
        tag = f"pat{i // 2:05d}".encode()
        (images / f"img{i:03d}.tinyimg").write_bytes(tag + rng.integers(0, 256, 256, dtype=np.uint8).tobytes())
    spec = {"name": "tiny", "images": str(images), "workers": 2, "preprocess": {"size": 16, "channels": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    log = tmp_path / "imports.log"

    # The control: the same reader registered at run time (register_reader in the parent) is lost to spawned workers,
    # which inherit nothing: they read every file as DICOM and reject it. So the pool really spawns.
    run_time = (
        "import multiprocessing, sys; multiprocessing.set_start_method('spawn')\n"
        + READER
        + "\nfrom medvision.io import register_reader\nregister_reader(TinyImgReader())\n"
        + "from medvision.cli import main\nsys.argv[0] = 'medvision'\nmain()\n"
    )
    env = {**_env(plugin_site), "PYTHONPATH": ""}  # the plugin is not installed for this one
    lost = subprocess.run(
        [sys.executable, "-c", run_time, "cohort", "build", "tiny.yaml", "--out", "lost"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert lost.returncode == 1 and "no images found" in lost.stderr and "not a DICOM file" in lost.stderr

    # Installed as a plugin (the entry point), every spawned worker loads it: all 72 files are ingested.
    done = _medvision(
        ["cohort", "build", "tiny.yaml", "--out", "built"], tmp_path, _env(plugin_site, TINYIMG_IMPORT_LOG=str(log)),
        start_method="spawn",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "built" / "cohort.json").read_text())
    assert card["images"] == 72 and card["patients"] == 36 and card["quarantined"] == 0
    importers = {int(p) for p in log.read_text().split()}
    # the CLI itself, and at least one worker of each of the two spawn pools (index, decode): they loaded the
    # entry point on their own, since a spawned worker inherits no module from the build
    assert len(importers) >= 3, importers


def test_a_plugin_backbone_head_and_stage_kind_are_there_for_the_cli_and_pipelines(plugin_site, tmp_path):
    env = _env(plugin_site)
    listed = _medvision(["weights", "list"], tmp_path, env)
    assert listed.returncode == 0 and "tinyimg-cnn" in listed.stdout, listed.stderr[-2000:]

    built = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import torch
            from medvision.heads import create_head
            from medvision.models import create_backbone
            bb = create_backbone("tinyimg-cnn", weights="none", in_chans=1)
            head = create_head("centroid", bb.num_features, 3, temperature=0.5)
            out = head(bb(torch.rand(2, 1, 32, 32)))
            print(tuple(out.probs.shape), tuple(out.ood_score.shape), type(head).ood_score_name)
        """)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.stdout.split("\n")[-2] == "(2, 3) (2,) centroid", built.stderr[-2000:]

    pipeline = {
        "name": "plugin-study",
        "output_dir": "out",
        "stages": {
            "cohort": {"kind": "cohort", "synth": {"kind": "cxr", "patients": 20, "seed": 0, "size": 32}},
            "ft": {
                "kind": "finetune",
                "cohort": "cohort",
                "config": {"backbone": {"name": "tinyimg-cnn", "weights": "none"}, "head": {"name": "centroid"}},
            },
            "note": {"kind": "note", "text": "made by a plugin", "about": "cohort"},
        },
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    checked = _medvision(["run", "p.yaml", "--check"], tmp_path, env)
    assert checked.returncode == 0 and "valid (3 stages" in checked.stdout, checked.stderr[-2000:]

    pipeline["stages"]["note"]["about"] = "ft"  # the kind's declared inputs are checked like a built-in's
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    wrong = _medvision(["run", "p.yaml", "--check"], tmp_path, env)
    assert wrong.returncode == 2 and "stages.note.about: 'ft' is a finetune stage; expected cohort" in wrong.stderr

    only_note = {"name": "notes", "output_dir": "out", "stages": {"note": {"kind": "note", "text": "hello"}}}
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(only_note))
    ran = _medvision(["run", "n.yaml"], tmp_path, env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (tmp_path / "out" / "note" / "note.txt").read_text() == "hello"
    assert f"note: {tmp_path / 'out' / 'note' / 'note.txt'}" in " ".join(ran.stdout.split())  # opens_file
    again = _medvision(["run", "n.yaml"], tmp_path, env)
    assert again.returncode == 0 and "reused" in again.stdout


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    """The control: the same names fail in this environment, where the plugin is not installed."""
    from medvision.config import ConfigError
    from medvision.heads import HeadConfigError, get_head_class
    from medvision.io import reader_for
    from medvision.pipeline.kinds import stage_kind

    with pytest.raises(HeadConfigError, match="unknown head 'centroid'"):
        get_head_class("centroid")
    with pytest.raises(ConfigError, match="unknown stage kind 'note'"):
        stage_kind("note")
    (tmp_path / "a.tinyimg").write_bytes(b"x" * 264)
    assert type(reader_for(tmp_path / "a.tinyimg")).__name__ == "DicomReader"  # the catch-all: not a tinyimg
