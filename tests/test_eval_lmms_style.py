"""`--prompt-style lmms` asks exactly lmms-eval's text (eval/lmms_prompts.py) end to end, and
falls back to the benchmark's own prompt where lmms-eval has no such benchmark (issue 14.11)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from eval.lmms_prompts import lmms_prompt
from eval.task import get_task
from pipelines.cli import app


def _run(model, data, out, bench, *extra):
    args = ["eval", "--model", str(model), "--benchmark", bench, "--data", str(data), "--out",
            str(out), "--frames", "2", "--set", "min_pixels=784", "--set", "max_pixels=3136",
            "--set", "max_new_tokens=4", "--set", "bootstrap=20", "--prompt-style", "lmms", *extra]
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_lmms_style_end_to_end(tiny_model_dir, make_benchmark, tmp_path) -> None:
    data = make_benchmark("videomme")
    r = _run(tiny_model_dir, data, tmp_path / "out", "videomme", "--subtitles")
    assert r.exit_code == 0, r.output
    preds = {p["qid"]: p for p in map(json.loads, (tmp_path / "out" / "videomme_subtitles" /
                                                   "predictions.jsonl").read_text().splitlines())}
    items = {it.qid: it for it in get_task("videomme").load(data)}
    q = preds["001-1"]
    assert q["prompt"].startswith("This video's subtitles are listed below: \n")
    assert "based on the video and the subtitles." in q["prompt"]
    assert q["prompt"].endswith("\n" + lmms_prompt("videomme", items["001-1"]))  # exact text
    assert preds["601-1"]["prompt"].startswith(  # no subtitle file
        "This video's subtitles are listed below: \nNo subtitles available\n")
    vn = make_benchmark("vnbench")
    r = _run(tiny_model_dir, vn, tmp_path / "vn", "vnbench")
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "vn" / "vnbench" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["prompt"].endswith("Answer with the option's letter from the given choices directly.")
