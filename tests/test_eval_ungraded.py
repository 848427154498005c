"""Open-ended questions without a judge are "ungraded" - counted apart, not failures - and the
pipeline's gate counts only real failures; the gate reads the folders eval really writes
(`--set subtitles=true` -> OUT/videomme_subtitles/). Real `longrl eval` runs on the tiny model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from components.eval_launch import eval_argv, eval_succeeded, output_names
from pipelines.cli import app
from tests.fixtures.judge_server import Reply

FAST = ["min_pixels=784", "max_pixels=3136", "max_new_tokens=6", "bootstrap=100"]


def _eval(model, data, out, benchmark: str, overrides: list[str], limit: int = 0):
    """`longrl eval` with the argv the pipeline's evaluation step builds."""
    argv = eval_argv(model, data, out, benchmark, 2, limit, [*FAST, *overrides])
    r = CliRunner().invoke(app, argv[argv.index("eval") :], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads((out / "longvideo_reason" / "metrics.json").read_text())["overall"]


def _open_ended(out):
    rows = (out / "longvideo_reason" / "predictions.jsonl").read_text().splitlines()
    return [p for p in map(json.loads, rows) if p["answer_type"] == "open_ended"]


def test_ungraded_is_not_a_failure_and_is_graded_once_a_judge_is_there(
    tiny_model_dir, make_benchmark, judge_server, tmp_path
) -> None:
    data = make_benchmark("longvideo_reason")  # 2 graded questions + 1 open-ended
    names = output_names("longvideo_reason", [])
    by_design = _eval(tiny_model_dir, data, tmp_path / "a", "longvideo_reason", [])
    assert (by_design["ungraded"], by_design["judge_errors"], by_design["errors"]) == (1, 0, 0)
    assert by_design["scored"] == 2 and by_design["n"] == 3
    (p,) = _open_ended(tmp_path / "a")
    assert p["status"] == "ungraded" and p["correct"] is None and "judge.base_url" in p["judge"]["note"]
    assert eval_succeeded(tmp_path / "a", names, max_error_rate=0.0) == (True, "ok")

    # A run that must cover open-ended questions: a missing judge is a failure the gate counts.
    required = _eval(tiny_model_dir, data, tmp_path / "b", "longvideo_reason", ["require_judge=true"])
    assert (required["ungraded"], required["judge_errors"], required["scored"]) == (0, 1, 2)
    ok, why = eval_succeeded(tmp_path / "b", names, max_error_rate=0.05)
    assert not ok and "33.3% of questions failed" in why

    # The same run folder once a judge is configured: the ungraded answer is judged, nothing is
    # generated again.
    judge_server.respond = lambda req, n: Reply("yes")
    judge = [f"judge.base_url={judge_server.base_url}", "judge.model=j", "judge.max_attempts=1"]
    graded = _eval(tiny_model_dir, data, tmp_path / "a", "longvideo_reason", judge)
    assert (graded["ungraded"], graded["judge_errors"], graded["scored"]) == (0, 0, 3)
    (p,) = _open_ended(tmp_path / "a")
    assert p["status"] == "answered" and p["correct"] is True and len(judge_server.requests) == 1


def test_the_gate_reads_the_folder_eval_writes_with_subtitles(
    tiny_model_dir, make_benchmark, tmp_path
) -> None:
    data = make_benchmark("videomme")
    names = output_names("videomme", ["subtitles=true"])
    assert names == ["videomme_subtitles"]
    out = tmp_path / "out"
    argv = eval_argv(tiny_model_dir, data, out, "videomme", 2, 2, [*FAST, "subtitles=true"])
    r = CliRunner().invoke(app, argv[argv.index("eval") :], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    # beside the benchmark folders only lmms-eval's (OUT/lmms_eval/<model>/, no metrics.json)
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == sorted([*names, "lmms_eval"])
    assert not list((out / "lmms_eval").glob("*/metrics.json"))
    assert eval_succeeded(out, names, max_error_rate=0.0) == (True, "ok")
    # tasks without subtitles keep their name; unknown names fail before any model is run
    assert output_names("longvideo_reason, videomme", ["subtitles=true"]) == [
        "longvideo_reason", "videomme_subtitles"
    ]  # fmt: skip
    with pytest.raises(KeyError, match="unknown benchmark 'nope'"):
        output_names("nope", [])
