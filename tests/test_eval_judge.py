"""Open-ended answers graded by the LLM judge through the real `openai` client against a scripted
OpenAI-compatible server on 127.0.0.1: verdicts, a failing judge recorded (not crashed, not
guessed) and retried on the next run from the same predictions, and the verdict cache."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipelines.cli import app
from tests.fixtures.judge_server import Reply

FAST = [
    "--set",
    "min_pixels=784",
    "--set",
    "max_pixels=3136",
    "--set",
    "max_new_tokens=6",
    "--set",
    "bootstrap=100",
    "--frames",
    "2",
]


def _run(model, data, out, server, *extra):
    args = [
        "eval",
        "--model",
        str(model),
        "--benchmark",
        "longvideo_reason",
        "--data",
        str(data),
        "--out",
        str(out),
        *FAST,
        "--set",
        f"judge.base_url={server.base_url}",
        "--set",
        "judge.model=judge-test",
        "--set",
        "judge.max_attempts=2",
        "--set",
        "judge.backoff_s=0.01",
        *extra,
    ]
    return CliRunner().invoke(app, args, catch_exceptions=False)


def _open_pred(out):
    preds = [
        json.loads(x)
        for x in (out / "longvideo_reason" / "predictions.jsonl").read_text().splitlines()
    ]
    return [p for p in preds if p["answer_type"] == "open_ended"], preds


def test_judge_failure_is_recorded_then_retried_on_resume(
    tiny_model_dir, make_benchmark, judge_server, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-key-123456")
    data, out = make_benchmark("longvideo_reason"), tmp_path / "out"
    judge_server.respond = lambda req, n: Reply(status=503)
    r = _run(tiny_model_dir, data, out, judge_server)
    assert r.exit_code == 0, r.output
    (p,), preds = _open_pred(out)
    assert p["status"] == "judge_error" and p["correct"] is None and "503" in p["judge"]["error"]
    assert "sk-test-secret" not in json.dumps(preds)
    m = json.loads((out / "longvideo_reason" / "metrics.json").read_text())
    assert m["overall"]["judge_errors"] == 1 and m["overall"]["scored"] == 2  # excluded, counted
    assert len(judge_server.requests) == 2  # two attempts, then recorded
    assert judge_server.auth_headers[0] == "Bearer sk-test-secret-key-123456"
    raw_before = {q["qid"]: q["raw_output"] for q in preds}

    # The judge is back: the next run re-judges without regenerating anything.
    judge_server.respond = lambda req, n: Reply("Yes.")
    r = _run(tiny_model_dir, data, out, judge_server)
    assert r.exit_code == 0, r.output
    (p,), preds = _open_pred(out)
    assert p["status"] == "answered" and p["correct"] is True and p["judge"]["verdict"] is True
    assert {q["qid"]: q["raw_output"] for q in preds} == raw_before
    m = json.loads((out / "longvideo_reason" / "metrics.json").read_text())
    assert m["generated"] == 0 and m["overall"]["judge_errors"] == 0 and m["overall"]["scored"] == 3
    sent = judge_server.requests[-1]["messages"][-1]["content"]
    assert (
        "Reference answer: a lost dog finding its way home" in sent
        and "What is the story about?" in sent
    )
    assert (out / "longvideo_reason" / "judge_cache.jsonl").is_file()

    # A fresh output folder with the same cache path asks nothing: the verdict is cached.
    calls = len(judge_server.requests)
    cache = out / "longvideo_reason" / "judge_cache.jsonl"
    r = _run(
        tiny_model_dir, data, tmp_path / "again", judge_server, "--set", f"judge.cache_path={cache}"
    )
    assert r.exit_code == 0, r.output
    (p,), _ = _open_pred(tmp_path / "again")
    assert (
        p["correct"] is True
        and p["judge"]["cached"] is True
        and len(judge_server.requests) == calls
    )


def test_another_judge_regrades_and_metrics_name_the_judge(
    tiny_model_dir, make_benchmark, judge_server, tmp_path, monkeypatch
) -> None:
    """Re-running with another judge model re-asks that judge about every open-ended answer
    (the old verdicts are not kept silently) without regenerating; metrics.json names the judge
    that graded; an unchanged judge asks nothing."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    data, out = make_benchmark("longvideo_reason"), tmp_path / "out"
    judge_server.respond = lambda req, n: Reply("Yes." if req["model"] == "judge-test" else "No.")
    assert _run(tiny_model_dir, data, out, judge_server).exit_code == 0
    (p,), preds = _open_pred(out)
    assert p["correct"] is True and p["judge"]["model"] == "judge-test"
    m = json.loads((out / "longvideo_reason" / "metrics.json").read_text())
    assert m["judges"] == {"judge-test (judge-v1)": 1}
    raw_before, calls = {q["qid"]: q["raw_output"] for q in preds}, len(judge_server.requests)

    assert _run(tiny_model_dir, data, out, judge_server).exit_code == 0  # same judge: nothing asked
    assert len(judge_server.requests) == calls

    r = _run(tiny_model_dir, data, out, judge_server, "--set", "judge.model=judge-strict")
    assert r.exit_code == 0, r.output
    (p,), preds = _open_pred(out)
    assert p["correct"] is False and p["judge"]["model"] == "judge-strict"
    assert judge_server.requests[-1]["model"] == "judge-strict" and len(judge_server.requests) == calls + 1
    assert {q["qid"]: q["raw_output"] for q in preds} == raw_before  # nothing regenerated
    m = json.loads((out / "longvideo_reason" / "metrics.json").read_text())
    assert m["judges"] == {"judge-strict (judge-v1)": 1} and m["generated"] == 0
