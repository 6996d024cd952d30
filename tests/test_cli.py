"""The command line: every command explains itself, and offline weight fetching fails with directions."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from medvision.cli import app


def _commands(group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(group, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_every_command_has_help():
    paths = _commands(typer.main.get_command(app))
    assert ("cohort", "build") in paths and ("weights", "fetch") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_weights_list_and_offline_fetch(monkeypatch, tmp_path):
    listed = CliRunner().invoke(app, ["weights", "list"])
    assert listed.exit_code == 0 and "bit-m-r50x1" in listed.output and "siglip-so400m" in listed.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["weights", "fetch", "vit-b16", "--to", str(tmp_path)])
    assert result.exit_code == 2
    assert "file:" in result.output and not list(tmp_path.iterdir())
