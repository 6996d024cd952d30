"""Hostile runs (issue 13.7, run layer): configs that try to escape their folder (stage ids, cohort names that are
not plain names) or blow up memory (YAML alias bombs), while ordinary anchors keep working.

Each test plants the bad input and asserts the behaviour docs/SECURITY.md promises; each failed on the code
before the fix.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest
from tiny_pipeline import _pipeline

from medvision.config import ConfigError
from medvision.pipeline import load_pipeline


def _synth_stage(**extra) -> dict:
    return {"kind": "cohort", "synth": {"kind": "derm", "patients": 20}, **extra}


@pytest.mark.parametrize("stage_id", ["../../escaped", "/abs", "a/b", ".hidden", ""])
def test_a_stage_id_that_is_not_a_plain_name_is_refused_naming_it(tmp_path, stage_id):
    path = _pipeline(tmp_path, {"name": "x", "stages": {stage_id: _synth_stage()}})
    with pytest.raises(ConfigError, match="stage id .* is not a plain name"):
        load_pipeline(path)


@pytest.mark.parametrize(
    "where", [{"overrides": {"name": "../up"}}, {"folder": {"images": "img", "name": "../../x"}, "synth": None}]
)
def test_a_cohort_name_that_is_not_a_plain_name_is_refused_by_check(tmp_path, where):
    stage = {**_synth_stage(), **where}
    stage = {k: v for k, v in stage.items() if v is not None}
    path = _pipeline(tmp_path, {"name": "x", "stages": {"c": stage}})
    with pytest.raises(ConfigError, match=r"stages\.c.*name '\.\./.*not a plain name"):
        load_pipeline(path)


def _limit_memory() -> None:  # a bomb that is expanded must fail the subprocess, not the test machine
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))


@pytest.mark.slow  # a fresh interpreter imports the whole stack (~20-40 s on a loaded CI box)
def test_a_billion_laughs_pipeline_is_refused_quickly_without_expanding_it(tmp_path):
    lines = ["name: x", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["stages: {c: {kind: cohort, synth: {kind: derm}}}"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1024
    code = textwrap.dedent(
        f"""
        from medvision.config import ConfigError
        from medvision.pipeline import load_pipeline
        try:
            load_pipeline({str(path)!r})
        except ConfigError as e:
            print(e)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, preexec_fn=_limit_memory
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alias bomb" in done.stdout and "bomb.yaml" in done.stdout


def test_a_billion_laughs_cohort_spec_is_refused_too(tmp_path):
    from medvision.cohort.spec import SpecError, load_spec

    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "cohort.yaml").write_text("\n".join([*lines, "name: c", "images: img"]) + "\n")
    with pytest.raises(SpecError, match="alias bomb"):
        load_spec(tmp_path / "cohort.yaml")


def test_ordinary_anchors_still_load(tmp_path):
    text = textwrap.dedent(
        """
        name: x
        params: {optim: &opt {name: adamw, lr: 0.001, epochs: 1, warmup_epochs: 0}}
        stages:
          c: {kind: cohort, synth: {kind: derm, patients: 20}}
          f: {kind: finetune, cohort: c, config: {backbone: {name: resnet-tiny, weights: none}, optim: *opt}}
        """
    )
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    assert load_pipeline(path).stages["f"].config["optim"]["lr"] == 0.001
