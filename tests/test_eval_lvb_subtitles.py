"""LongVideoBench subtitles (issue 14.8): the subtitle JSON files are read only when a run shows
subtitles, as Video-MME's SRTs are, so one malformed file cannot stop the benchmark from loading;
with --subtitles it fails its own video's questions (file and reason recorded) and the other
videos go on. Fixtures are in the released schema (tests/fixtures/eval_benchmarks.py); the runs
use the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.task import TaskError, get_task
from eval.tasks.longvideobench import parse_lvb_subtitles
from pipelines.cli import app

FAST = ["--set", "min_pixels=784", "--set", "max_pixels=3136", "--set", "max_new_tokens=4",
        "--set", "bootstrap=50", "--frames", "2"]  # fmt: skip
GOOD, BROKEN = "pZrK2xe5TRo", "86CxyhFV9MI"  # fixture videos (2 s each)
BAD_ENTRY = [{"start": "00:00:10.000", "line": "no end time"}]  # "end" missing


def _eval(model: Path, data: Path, out: Path, *extra: str):
    argv = ["eval", "--model", str(model), "--benchmark", "longvideobench", "--data", str(data),
            "--out", str(out), *FAST, *extra]  # fmt: skip
    return CliRunner().invoke(app, argv, catch_exceptions=False)


def _preds(path: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["qid"]: r for r in rows}


def _second_question_on(data: Path, video_id: str, qid: str) -> None:
    """Add a second question on `video_id` (LongVideoBench has several per video)."""
    rows = json.loads((data / "lvb_val.json").read_text())
    first = next(r for r in rows if r["video_id"] == video_id)
    rows.append({**first, "id": qid, "question": "Which line is spoken first?"})
    (data / "lvb_val.json").write_text(json.dumps(rows))


def test_malformed_subtitle_files_are_named_errors(tmp_path) -> None:
    cases = {
        "bad_json.json": ('[{"start": "00:00:01.000",', r"bad_json.json: not valid JSON"),
        "not_list.json": ('{"start": "00:00:01.000"}', r"not_list.json: not a LongVideoBench"),
        "no_end.json": (json.dumps(BAD_ENTRY), r"no_end.json entry 0: not a LongVideoBench"),
        # a non-numeric time was a ValueError outside the check: it crashed the run
        "bad_time.json": (
            json.dumps([{"timestamp": [0.0, 1.0], "text": "ok"}, {"timestamp": ["?", 2]}]),
            r"bad_time.json entry 1: not a LongVideoBench subtitle",
        ),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TaskError, match=message):
            parse_lvb_subtitles(tmp_path / name)
    (tmp_path / "latin1.json").write_bytes(b'[{"timestamp": [0, 1], "text": "caf\xe9"}]')
    with pytest.raises(TaskError, match=r"latin1.json: cannot read subtitles"):
        parse_lvb_subtitles(tmp_path / "latin1.json")
    (tmp_path / "empty.json").write_text("[]")
    assert parse_lvb_subtitles(tmp_path / "empty.json") == []  # a video without lines
    # shifted by the offset; an open end runs to duration (both in video time)
    (tmp_path / "open.json").write_text(json.dumps([{"timestamp": [10.5, None], "text": " hi "}]))
    (line,) = parse_lvb_subtitles(tmp_path / "open.json", offset=10.0, duration=2.0)
    assert (line.start_s, line.end_s, line.text) == (0.5, 2.0, "hi")


def test_subtitles_are_read_only_when_shown(make_benchmark) -> None:
    data = make_benchmark("longvideobench")
    _second_question_on(data, BROKEN, f"{BROKEN}_1")
    bad = data / "subtitles" / f"{BROKEN}_en.json"
    bad.write_text(json.dumps(BAD_ENTRY))
    items = {it.qid: it for it in get_task("longvideobench").load(data)}  # was: TaskError here
    a, b = items[f"{BROKEN}_0"], items[f"{BROKEN}_1"]
    assert a.subtitles is None and a.subtitle_file is b.subtitle_file  # one per video, lazy
    with pytest.raises(TaskError, match=rf"{BROKEN}_en.json entry 0: not a LongVideoBench"):
        a.subtitle_lines()
    with pytest.raises(TaskError, match=rf"{BROKEN}_en.json entry 0"):
        b.subtitle_lines()  # the error stays (the file is parsed once, not retried per question)
    good = items[f"{GOOD}_3"].subtitle_lines()
    assert [(s.start_s, s.end_s, s.text) for s in good] == [
        (0.0, 1.0, "the dog runs"),
        (1.0, 2.0, "she waves"),
    ]
    # a subtitle_path whose file is absent is a video without subtitles, not an error
    (data / "subtitles" / f"{GOOD}_en.json").unlink()
    items = {it.qid: it for it in get_task("longvideobench").load(data)}
    assert items[f"{GOOD}_3"].subtitle_lines() is None


def test_a_malformed_file_fails_only_its_questions_with_subtitles(
    tiny_model_dir, make_benchmark, tmp_path
) -> None:
    data = make_benchmark("longvideobench")
    _second_question_on(data, BROKEN, f"{BROKEN}_1")
    bad = data / "subtitles" / f"{BROKEN}_en.json"
    bad.write_text(json.dumps(BAD_ENTRY))
    qids = [f"{BROKEN}_0", f"{BROKEN}_1", f"{GOOD}_3"]

    # without --subtitles the file is never read: every question runs
    r = _eval(tiny_model_dir, data, tmp_path / "plain")
    assert r.exit_code == 0, r.output
    plain = _preds(tmp_path / "plain" / "longvideobench" / "predictions.jsonl")
    assert {q: p["status"] != "error" for q, p in plain.items()} == dict.fromkeys(qids, True)
    assert "subtitles" not in plain[f"{GOOD}_3"]

    # with --subtitles: the broken file's two questions are errors naming it, the other runs
    r = _eval(tiny_model_dir, data, tmp_path / "subs", "--subtitles")
    assert r.exit_code == 0, r.output
    bench = tmp_path / "subs" / "longvideobench_subtitles"
    preds = _preds(bench / "predictions.jsonl")
    assert sorted(preds) == sorted(qids)
    for qid in qids[:2]:
        assert preds[qid]["status"] == "error" and preds[qid]["prompt"] is None
        assert preds[qid]["error"].startswith(f"subtitles: {bad} entry 0: not a LongVideoBench")
    ok = preds[f"{GOOD}_3"]
    assert ok["status"] != "error" and ok["subtitles"] == "shown"
    # frames at 0.5 s and 1.5 s: one line on screen at each
    assert ok["prompt"].startswith(
        "This video's subtitles are listed below:\nthe dog runs\nshe waves\n"
    )
    m = json.loads((bench / "metrics.json").read_text())
    assert m["overall"]["errors"] == 2 and m["overall"]["n"] == 3
    assert {e["qid"] for e in m["error_examples"]} == set(qids[:2])
    assert all(str(bad) in e["error"] for e in m["error_examples"])
