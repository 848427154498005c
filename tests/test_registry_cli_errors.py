"""`longrl registry` on a real MLflow server: an unknown model name or version is one line naming
it (issue 16.8), and `gate --fail-if-not-promoted` lets scripts tell a refused candidate from a
promoted one by the exit code (issue 16.15)."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from common import registry
from pipelines.cli import app
from tests.test_registry import _register

runner = CliRunner()


def _one_line_error(result, *needles: str) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code not in (0, None), result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_names_and_versions_are_one_line(mlflow_env, tmp_path):
    name = f"lvr-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    _register(name, tmp_path, "1")
    cases = [
        (["show", "--name", "nosuch"], "name=nosuch not found"),
        (["promote", "--name", "nosuch", "--version", "1"], "(name=nosuch, version=1) not found"),
        (["promote", "--name", name, "--version", "99"], f"(name={name}, version=99) not found"),
        (["gate", "--name", "nosuch", "--version", "1"], "(name=nosuch, version=1) not found"),
        (["gate", "--name", name, "--version", "99"], "version=99) not found"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["registry", *args])
        line = _one_line_error(result, f"registry {args[0]} --name {args[2]}", needle, "registry show` lists")
        assert result.exit_code == 2, line


def test_gate_exit_code_for_scripts(mlflow_env, tmp_path):
    name = f"lvr-{os.environ['MLFLOW_EXPERIMENT_NAME']}"
    v1, v2 = _register(name, tmp_path, "1"), _register(name, tmp_path, "2")
    registry.record_eval(name, v1, {"accuracy": 0.50}, succeeded=True)
    registry.record_eval(name, v2, {"accuracy": 0.40}, succeeded=True)
    first = runner.invoke(app, ["registry", "gate", "--name", name, "--version", v1, "--fail-if-not-promoted"])
    assert first.exit_code == 0 and "promoted to @champion" in first.output, first.output
    worse = ["registry", "gate", "--name", name, "--version", v2]
    plain = runner.invoke(app, worse)
    assert plain.exit_code == 0 and "not promoted" in plain.output  # the default is unchanged
    strict = runner.invoke(app, [*worse, "--fail-if-not-promoted"])
    assert strict.exit_code == 3 and "not promoted" in strict.output, strict.output
    assert registry.version_by_alias(name, "champion").version == v1
