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


def test_a_malformed_pseudonym_key_is_the_users_input_not_a_bug(monkeypatch, tmp_path):
    """A key that is not hex (or too short) in $MEDVISION_PSEUDONYM_KEY: exit 2 naming the variable and how to make
    one, before anything is built, rather than "a bug in medvision" with a traceback file."""
    from medvision.sources.synth import synthesize

    spec = synthesize(tmp_path / "src", "derm", patients=4, seed=0, size=16)
    for bad, says in (("benchkey", "must be a hex string"), ("abcd", "too short")):
        monkeypatch.setenv("MEDVISION_PSEUDONYM_KEY", bad)
        result = CliRunner().invoke(app, ["cohort", "build", str(spec), "--out", str(tmp_path / "cohort")])
        assert result.exit_code == 2, result.output
        assert "$MEDVISION_PSEUDONYM_KEY" in result.output and says in result.output
        assert "a bug in medvision" not in result.output and not (tmp_path / "cohort" / "manifest.parquet").exists()
