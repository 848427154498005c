"""The `longrl` CLI: every group and command explains itself, and --help never loads torch."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from pipelines.cli import app

EXPECTED_GROUPS = {"model", "synth"}


def _walk(cmd, path: tuple[str, ...] = ()):
    yield path, cmd
    if getattr(cmd, "commands", None):  # typer vendors click: duck-type groups
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))


def test_every_command_has_help():
    root = typer.main.get_command(app)
    runner = CliRunner()
    seen = []
    for path, cmd in _walk(root):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert (cmd.help or "").strip(), f"command {' '.join(path)} has no help text"
        seen.append(path)
    top = {p[0] for p in seen if p}
    assert top >= EXPECTED_GROUPS


def test_help_does_not_import_torch():
    code = "import sys; from pipelines.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, check=True)
    assert "model" in out.stdout
