"""The README's walkthrough runs as written, in order (issue 16 points 1, 2, 5): the block marked
`<!-- walkthrough ... -->` is read from README.md, each command is run with the `longrl` CLI (in
this process: the same argv, without paying the torch import for each of the commands), from a
fresh folder, and each must succeed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def walkthrough_commands(text: str) -> list[list[str]]:
    """The commands of the block after the walkthrough marker: continuation lines joined,
    comments dropped, each split as a shell would."""
    marker = text.index("<!-- walkthrough")
    block = re.search(r"```bash\n(.*?)```", text[marker:], re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_says_how_to_get_longrl_on_path():
    text = README.read_text()
    assert "source .venv/bin/activate" in text and ".venv/bin/longrl" in text
    assert text.index("source .venv/bin/activate") < text.index("<!-- walkthrough")


def test_readme_walkthrough_runs_in_order(tmp_path, monkeypatch):
    commands = walkthrough_commands(README.read_text())
    assert commands and all(c[0] == "longrl" for c in commands), commands
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for argv in commands:
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output[-3000:]}"
        for path in [a for a in argv if a.startswith("runs/")]:  # every folder a command names exists
            if argv.index(path) > 0 and argv[argv.index(path) - 1] in ("--out", "--data", "--model"):
                assert (tmp_path / path).exists(), (shlex.join(argv), path)
    # GRPO had something to learn from: replies reached the answer tag, groups differed.
    rows = [json.loads(ln) for ln in (tmp_path / "runs/grpo/metrics.jsonl").read_text().splitlines()]
    assert max(r["reward/format"] for r in rows) > 0, rows
    assert max(r["advantage/abs_mean"] for r in rows) > 0, rows
    assert (tmp_path / "runs/eval-base/summary.json").is_file()
    assert (tmp_path / "runs/compare.png").stat().st_size > 5000  # candidate vs base plot
    assert (tmp_path / "runs/pipeline.yaml").is_file()
