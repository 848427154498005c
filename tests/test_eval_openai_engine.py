"""The `openai` engine against a scripted OpenAI-compatible server on 127.0.0.1, spoken to by the
real `openai` client over HTTP: frames as image content parts, the benchmark's prompt and
scoring unchanged, retries, per-question failures recorded and (when transient) asked again on
resume, bounded concurrency, a down endpoint stopping the run without losing predictions, and
the key never written anywhere."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
from typer.testing import CliRunner

from pipelines.cli import app

KEY = "sk-test-openai-engine-0123456789"
# Perception Test fixture: question -> the letter our scripted "model" answers (2 of 3 right:
# the gold answers are C, A, B)
REPLIES = {
    "Is the camera moving or static?": "C",
    "How many objects were put on the table?": "A",
    "What is the person doing?": "C",
}


def _text(request) -> str:
    return next(p["text"] for p in request["messages"][-1]["content"] if p["type"] == "text")


def _images(request) -> list[str]:
    return [p["image_url"]["url"] for p in request["messages"][-1]["content"]
            if p["type"] == "image_url"]


def _reply(request, choice) -> str:
    text = _text(request)
    return next((f"The answer is {v}." for q, v in REPLIES.items() if q in text), "A")


def _run(server, data, out, *extra, benchmark="perceptiontest"):
    args = [
        "eval", "--engine", "openai", "--base-url", server.url, "--model", "scripted",
        "--benchmark", benchmark, "--data", str(data), "--out", str(out), "--frames", "4",
        "--set", "min_pixels=784", "--set", "max_pixels=3136", "--set", "bootstrap=50",
        "--set", "endpoint.backoff_s=0.01", "--set", "endpoint.backoff_max_s=0.02", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(app, args, catch_exceptions=False)


def _preds(out, bench="perceptiontest"):
    return [json.loads(x) for x in (out / bench / "predictions.jsonl").read_text().splitlines()]


def test_frames_prompt_and_scores_over_http(openai_server, make_benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_server.expected_key = KEY
    openai_server.responder = _reply
    data, out = make_benchmark("perceptiontest"), tmp_path / "out"
    res = _run(openai_server, data, out)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "perceptiontest" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 3 and metrics["overall"]["correct"] == 2
    assert abs(metrics["score"] - 2 / 3) < 1e-9
    assert metrics["settings"]["engine"] == "openai" and metrics["settings"]["model"] == "scripted"
    assert metrics["settings"]["dtype"] == "served" and metrics["settings"]["model_fingerprint"]
    assert metrics["engine"]["served_model"]["id"] == "scripted"
    reqs = openai_server.requests()
    assert len(reqs) == 3 and all(e["key_ok"] for e in openai_server.log)
    from eval.task import get_task

    task, items = get_task("perceptiontest"), get_task("perceptiontest").load(data)
    by_q = {it.question: it for it in items}
    for req in reqs:
        assert req["model"] == "scripted" and req["temperature"] == 0.0
        assert req["max_tokens"] == task.max_new_tokens
        text = _text(req)
        item = next(it for q, it in by_q.items() if q in text)
        assert text == task.render_prompt(item)  # the benchmark's own prompt, unchanged
        urls = _images(req)
        assert len(urls) == 4  # one image part per sampled frame, before the text
        assert req["messages"][-1]["content"][-1]["type"] == "text"
        raw = base64.b64decode(urls[0].split(",", 1)[1])
        assert urls[0].startswith("data:image/jpeg;base64,")
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        assert h % 28 == 0 and w % 28 == 0 and h * w <= 3136
    preds = _preds(out)
    assert sorted(p["extracted"] for p in preds) == ["A", "C", "C"]
    assert all(p["num_frames"] == 4 for p in preds)
    for f in (out / "perceptiontest").iterdir():  # the key is nowhere on disk
        assert KEY not in f.read_text(errors="replace")
    assert KEY not in (out / "eval_config.yaml").read_text() and KEY not in res.output


def test_transient_faults_are_retried(openai_server, make_benchmark, tmp_path):
    openai_server.responder = _reply
    openai_server.inject("500", "429", "malformed", "drop", "notchat")
    data, out = make_benchmark("perceptiontest"), tmp_path / "out"
    res = _run(openai_server, data, out, "--set", "endpoint.max_attempts=6",
               "--set", "endpoint.max_concurrency=1")  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "perceptiontest" / "metrics.json").read_text())
    assert metrics["overall"]["errors"] == 0 and metrics["overall"]["correct"] == 2
    assert metrics["engine"]["requests"]["retries"] == 5
    assert metrics["engine"]["requests"]["calls"] == 8


def test_failed_requests_are_recorded_and_transient_ones_asked_again(
    openai_server, make_benchmark, tmp_path
):
    openai_server.responder = _reply

    def faults(request, n):
        text = _text(request)
        if "What is the person doing?" in text:
            return "400"  # final: the server refuses this request, retrying cannot help
        if "How many objects" in text:
            return "503"  # transient to the end of this run
        return None

    openai_server.fault_fn = faults
    data, out = make_benchmark("perceptiontest"), tmp_path / "out"
    res = _run(openai_server, data, out, "--set", "endpoint.max_attempts=2")
    assert res.exit_code == 0, res.output
    preds = _preds(out)
    errors = [p for p in preds if p["status"] == "error"]
    assert len(errors) == 2 and len(preds) == 3
    by_retry = {bool(p.get("retry")): p for p in errors}
    assert "400" in by_retry[False]["error"] and "503" in by_retry[True]["error"]
    assert by_retry[True]["error"].startswith("generation: ")
    first_run = len(openai_server.log)

    openai_server.fault_fn = None
    res = _run(openai_server, data, out, "--set", "endpoint.max_attempts=2")
    assert res.exit_code == 0, res.output
    asked = openai_server.log[first_run:]
    assert len(asked) == 1 and "How many objects" in _text(asked[0]["body"])
    preds = _preds(out)
    assert len(preds) == len({p["qid"] for p in preds}) == 3  # never twice
    status = sorted(p["status"] for p in preds)
    assert status == ["answered", "answered", "error"]
    metrics = json.loads((out / "perceptiontest" / "metrics.json").read_text())
    assert metrics["retried"] == 1 and metrics["resumed"] == 2


def test_concurrency_is_bounded(openai_server, synth_bench, tmp_path):
    openai_server.latency_s = 0.15
    out = tmp_path / "out"
    res = _run(openai_server, synth_bench, out, "--batch-size", "12",
               "--set", "endpoint.max_concurrency=3", benchmark="synth")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(openai_server.requests()) == 12
    assert openai_server.max_in_flight == 3


def test_a_down_endpoint_stops_the_run_and_resume_finishes_it(
    openai_server, synth_bench, tmp_path
):
    down = {"on": False}
    openai_server.fault_fn = lambda req, n: "503" if down["on"] else None

    def answer_then_go_down(req, i):
        down["on"] = True  # the first request is answered, every later one gets a 503
        return "A"

    openai_server.responder = answer_then_go_down
    out = tmp_path / "out"
    res = _run(openai_server, synth_bench, out, "--batch-size", "4",
               "--set", "endpoint.max_concurrency=1", "--set", "endpoint.max_attempts=2",
               "--set", "endpoint.max_consecutive_failures=3", benchmark="synth")  # fmt: skip
    assert res.exit_code == 1
    assert "endpoint unavailable" in res.output and "resume" in res.output
    # batch 1: one answer and three transient failures (2 tries each), written; batch 2 is
    # not sent at all once 3 requests in a row have failed
    assert len(openai_server.log) == 1 + 3 * 2
    kept = _preds(out, "synth")
    assert len(kept) == 4 and sum(p["status"] == "answered" for p in kept) == 1
    assert all(p.get("retry") for p in kept if p["status"] == "error")
    down["on"] = False
    openai_server.responder = lambda req, i: "A"
    openai_server.fault_fn = None
    res = _run(openai_server, synth_bench, out, "--batch-size", "4", benchmark="synth")
    assert res.exit_code == 0, res.output
    assert len(openai_server.log) == 7 + 11  # the 3 failed and the 8 never asked
    preds = _preds(out, "synth")
    assert len(preds) == len({p["qid"] for p in preds}) == 12
    assert not [p for p in preds if p["status"] == "error"]


def test_an_unknown_served_model_is_one_clear_line(openai_server, make_benchmark, tmp_path):
    data = make_benchmark("perceptiontest")
    args = ["eval", "--engine", "openai", "--base-url", openai_server.url, "--model", "other",
            "--benchmark", "perceptiontest", "--data", str(data), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 2
    assert "does not serve model 'other'" in res.output and "scripted" in res.output
    res = CliRunner().invoke(app, args[:3] + args[5:], catch_exceptions=False)  # no --base-url
    assert res.exit_code == 2 and "--base-url" in res.output
