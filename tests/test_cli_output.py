"""What a user reads when output goes to a file or a pipe (issue 16.12): rich draws for a wide
console there, so tables keep every column and header whole and long paths are not cut."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runs(root: Path) -> tuple[Path, Path]:
    from eval.runner import base_record
    from eval.task import EvalItem, get_task

    task = get_task("mlvu")
    items = [EvalItem(qid=f"plotQA_{i}", video_path=f"v/{i}.mp4", question="q?", answer="B",
                      options=["w", "x", "y", "z"], breakdown={"question_type": "plotQA"}, cluster=f"{i}")
             for i in range(6)]
    out = []
    for name, right in (("candidate-with-a-long-descriptive-run-name", 5), ("baseline-with-a-long-run-name", 2)):
        d = root / "some" / "deeply" / "nested" / "eval" / "folder" / name / "mlvu"
        d.mkdir(parents=True)
        rows = []
        for i, it in enumerate(items):
            letter = "B" if i < right else "C"
            rows.append({**base_record(task, it), "status": "answered", "correct": i < right, "error": None,
                         "prompt": "p", "raw_output": letter, "extracted": letter})
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out.append(d.parent)
    return out[0], out[1]


def test_tables_are_whole_when_output_is_piped(tmp_path):
    a, b = _runs(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", "compare", str(a), str(b), "--bootstrap", "50"],
                          cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert f"A = {a}\nB = {b}\n" in text  # each path whole, on its own line
    header = next(ln for ln in text.splitlines() if "benchmark" in ln and "acc A" in ln)
    for col in ("A - B (95% CI)", "wins", "losses", "p (headline test)", "excluded"):
        assert col in header, header  # at 80 columns these were cut to "p (h…" or wrapped
    row = next(ln for ln in text.splitlines() if "mlvu" in ln)
    assert "83.3" in row and "33.3" in row and "+50.0" in row, row
