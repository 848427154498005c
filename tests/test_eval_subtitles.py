"""Video-MME subtitles (issue 14.8, 14.9): SRT files are read only when a run shows subtitles, so
one malformed file cannot stop the benchmark from loading; with --subtitles it fails its own
video's questions (the file and the reason recorded), the rest go on. A video with subtitles but
no line at the sampled frames is not told "No subtitles available". Fixtures are in the released
schema (tests/fixtures/eval_benchmarks.py); the runs use the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.task import (
    NO_SUBTITLES,
    NO_SUBTITLES_AT_FRAMES,
    SubtitleLine,
    TaskError,
    get_task,
    subtitle_text,
)
from eval.tasks.common import parse_srt
from pipelines.cli import app

FAST = ["--set", "min_pixels=784", "--set", "max_pixels=3136", "--set", "max_new_tokens=4",
        "--set", "bootstrap=50", "--frames", "2"]  # fmt: skip
BAD_TIME = "1\n00:00:xx,000 --> 00:00:00,900\nwelcome to the show\n\n"


def _eval(model: Path, data: Path, out: Path, *extra: str):
    argv = ["eval", "--model", str(model), "--benchmark", "videomme", "--data", str(data),
            "--out", str(out), *FAST, *extra]  # fmt: skip
    return CliRunner().invoke(app, argv, catch_exceptions=False)


def _preds(path: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["qid"]: r for r in rows}


def test_malformed_srts_are_named_errors(tmp_path) -> None:
    cases = {
        "bad_time.srt": (BAD_TIME, r"bad_time.srt: cue 1: bad SRT time"),
        "backwards.srt": ("1\n00:00:02,000 --> 00:00:01,000\nhi\n", r"cue 1: ends \(1 s\) before"),
        "not_srt.srt": ("WEBVTT garbage without timings\n", r"not_srt.srt: not a SubRip file"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TaskError, match=message):
            parse_srt(tmp_path / name)
    (tmp_path / "empty.srt").write_text("")
    assert parse_srt(tmp_path / "empty.srt") == []  # an empty file is a video without lines


def test_subtitles_are_read_only_when_shown(make_benchmark) -> None:
    data = make_benchmark("videomme")
    (data / "subtitle" / "fFjv93ACGo8.srt").write_text(BAD_TIME)
    items = {it.qid: it for it in get_task("videomme").load(data)}  # was: TaskError at load
    a, b = items["001-1"], items["001-2"]
    assert a.subtitle_file is b.subtitle_file  # one file per video, parsed once for both
    with pytest.raises(TaskError, match=r"fFjv93ACGo8.srt: cue 1: bad SRT time"):
        a.subtitle_lines()
    assert items["601-1"].subtitle_lines() is None  # no file: no subtitles, not an error


def test_no_file_and_no_lines_at_the_frames_are_told_apart() -> None:
    lines = [SubtitleLine(0.0, 0.2, "hello"), SubtitleLine(5.0, 6.0, "bye")]
    assert subtitle_text(None, [1.0]) == (NO_SUBTITLES, "no_subtitles")
    assert subtitle_text([], [1.0]) == (NO_SUBTITLES, "no_subtitles")
    assert subtitle_text(lines, [1.0, 3.0]) == (NO_SUBTITLES_AT_FRAMES, "none_at_frames")
    assert subtitle_text(lines, [0.1, 5.5]) == ("hello\nbye", "shown")
    assert NO_SUBTITLES not in NO_SUBTITLES_AT_FRAMES


def test_a_malformed_srt_fails_only_its_questions_with_subtitles(
    tiny_model_dir, make_benchmark, tmp_path
) -> None:
    data = make_benchmark("videomme")
    srt = data / "subtitle" / "fFjv93ACGo8.srt"
    srt.write_text(BAD_TIME)

    # without --subtitles the file is never read: every question runs
    r = _eval(tiny_model_dir, data, tmp_path / "plain")
    assert r.exit_code == 0, r.output
    plain = _preds(tmp_path / "plain" / "videomme" / "predictions.jsonl")
    assert {q: p["status"] != "error" for q, p in plain.items()} == dict.fromkeys(
        ["001-1", "001-2", "601-1"], True
    )
    assert "subtitles" not in plain["001-1"]

    # with --subtitles: the file's two questions are errors naming it, the third is answered
    r = _eval(tiny_model_dir, data, tmp_path / "subs", "--subtitles")
    assert r.exit_code == 0, r.output
    preds = _preds(tmp_path / "subs" / "videomme_subtitles" / "predictions.jsonl")
    for qid in ("001-1", "001-2"):
        assert preds[qid]["status"] == "error" and preds[qid]["prompt"] is None
        assert preds[qid]["error"].startswith(f"subtitles: {srt}: cue 1: bad SRT time")
    assert preds["601-1"]["status"] != "error" and preds["601-1"]["subtitles"] == "no_subtitles"
    m = json.loads((tmp_path / "subs" / "videomme_subtitles" / "metrics.json").read_text())
    assert m["overall"]["errors"] == 2 and m["overall"]["n"] == 3
    assert {e["qid"] for e in m["error_examples"]} == {"001-1", "001-2"}
    assert all(str(srt) in e["error"] for e in m["error_examples"])


def test_subtitles_but_none_at_the_sampled_frames(tiny_model_dir, make_benchmark, tmp_path) -> None:
    data = make_benchmark("videomme")
    # the 2 s video is sampled at 0.5 s and 1.5 s; its only cue is on screen from 0.0 to 0.2 s
    (data / "subtitle" / "fFjv93ACGo8.srt").write_text(
        '1\n00:00:00,000 --> 00:00:00,200\n<font color="white">an early line</font>\n'
    )
    r = _eval(tiny_model_dir, data, tmp_path, "--subtitles")
    assert r.exit_code == 0, r.output
    preds = _preds(tmp_path / "videomme_subtitles" / "predictions.jsonl")
    p = preds["001-1"]
    assert p["subtitles"] == "none_at_frames"
    assert p["prompt"].startswith(
        f"This video's subtitles are listed below:\n{NO_SUBTITLES_AT_FRAMES}\nSelect the best"
    )
    assert NO_SUBTITLES not in p["prompt"] and "an early line" not in p["prompt"]
    assert preds["601-1"]["subtitles"] == "no_subtitles"  # no file at all
    assert f"listed below:\n{NO_SUBTITLES}\n" in preds["601-1"]["prompt"]
