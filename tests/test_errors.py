"""Exit codes come from the error's class: the user's input is exit 2 and one line; a bug is a bug (exit 1, one
line that says so, the traceback kept in a private file); SIGTERM is 143."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from medvision.cli import app
from medvision.cli._errors import run_guarded
from medvision.errors import InputError, MedvisionError


def _command(fn) -> typer.Typer:
    one = typer.Typer()
    one.command()(lambda: run_guarded(fn))
    return one


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_a_value_error_from_deep_inside_numpy_is_a_bug_not_the_users_input():
    result = CliRunner().invoke(_command(lambda: np.zeros(3).reshape(2, 2)), [])
    assert result.exit_code == 1
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: a bug in medvision (ValueError: cannot reshape")
    path = Path(lines[0].split("The traceback is in ")[1].split(";")[0])
    text = path.read_text()
    assert "Traceback (most recent call last)" in text and "reshape" in text
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # a private folder: tracebacks can quote inputs


class _NoStudy(InputError):
    """A study the user named does not exist."""


class _ServerDown(MedvisionError):
    """The work failed for a reason the message explains."""


@pytest.mark.parametrize(("error", "code"), [(_NoStudy("study 'x' not found"), 2), (_ServerDown("server down"), 1)])
def test_a_medvision_error_ends_with_its_own_exit_code_and_one_line(error, code):
    def fail():
        raise error

    result = CliRunner().invoke(_command(fail), [])
    assert result.exit_code == code and _error_lines(result.output) == [f"error: {error}"]
    assert "bug" not in result.output and "Traceback" not in result.output


def test_the_commands_own_input_errors_exit_2_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["cohort", "build", str(tmp_path / "x.yaml"), "--images", str(tmp_path)])
    assert result.exit_code == 2
    assert _error_lines(result.output) == ["error: give either a cohort spec file or --images DIR (not both)"]
    missing = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "holds no metrics.json" in missing.output
