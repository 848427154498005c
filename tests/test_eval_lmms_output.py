"""lmms-eval-schema outputs beside ours (OUT/lmms_eval/<model>/<date>_results.json and
<date>_samples_<task>.jsonl) and the harness version + git commit in metrics.json, from real
runs (openai engine against the scripted server, so no model is needed)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from tests.test_eval_openai_engine import _reply, _run

ROOT = Path(__file__).resolve().parent.parent


def _files(out: Path, pattern: str) -> list[Path]:
    return sorted((out / "lmms_eval" / "scripted").glob(pattern))


def test_results_and_samples_in_lmms_layout(openai_server, make_benchmark, tmp_path) -> None:
    openai_server.responder = _reply
    data, out = make_benchmark("perceptiontest"), tmp_path / "out"
    res = _run(openai_server, data, out)
    assert res.exit_code == 0, res.output
    (results_path,) = _files(out, "*_results.json")
    (samples_path,) = _files(out, "*_samples_perceptiontest_val_mc.jsonl")
    assert results_path.name[:15] == samples_path.name[:15]  # one date id per command
    r = json.loads(results_path.read_text())
    for key in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples", "config", "git_hash", "date", "task_hashes", "model_name",
                "model_name_sanitized", "total_evaluation_time_seconds"):
        assert key in r, key
    task = r["results"]["perceptiontest_val_mc"]
    assert task["alias"] == "perceptiontest_val_mc"
    assert abs(task["accuracy,none"] - 2 / 3) < 1e-12 and task["accuracy_stderr,none"] == "N/A"
    assert r["n-samples"]["perceptiontest_val_mc"] == {"original": 3, "effective": 3}
    assert r["configs"]["perceptiontest_val_mc"]["dataset_path"] == "lmms-lab/PerceptionTest_Val"
    assert r["config"]["model_args"] == "pretrained=scripted"
    m = json.loads((out / "perceptiontest" / "metrics.json").read_text())
    commit = m["harness"]["git_commit"]
    assert r["git_hash"] == commit[:7] and len(commit) == 40
    # the checkout's commit (HEAD when the process first asked; others may commit meanwhile)
    subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", commit, "HEAD"],
                   check=True)

    lines = [json.loads(x) for x in samples_path.read_text().splitlines()]
    preds = {p["qid"]: p for p in (json.loads(x) for x in (
        out / "perceptiontest" / "predictions.jsonl").read_text().splitlines())}
    from eval.task import get_task

    items = get_task("perceptiontest").load(data)
    assert [ln["doc_id"] for ln in lines] == [0, 1, 2]
    for ln, item in zip(lines, items, strict=True):  # the benchmark's question order
        p = preds[item.qid]
        assert ln["longrl"]["qid"] == item.qid and ln["target"] == item.answer
        assert ln["filtered_resps"] == [p["extracted"]]
        assert ln["resps"] == [[p["raw_output"]]]  # differs from the filtered answer: kept
        assert ln["input"] == p["prompt"]
        assert ln["prompt_hash"] == hashlib.sha256(p["prompt"].encode()).hexdigest()
        assert ln["target_hash"] == hashlib.sha256(item.answer.encode()).hexdigest()
        assert ln["accuracy"] == float(p["correct"])
    hashes = "".join(f"sample_{i}" + ln["doc_hash"] for i, ln in enumerate(lines))
    assert r["task_hashes"]["perceptiontest_val_mc"] == hashlib.sha256(hashes.encode()).hexdigest()

    import importlib.metadata

    assert m["harness"]["name"] == "longrl"
    assert m["harness"]["version"] == importlib.metadata.version("longrl")
    assert m["lmms_eval"]["samples"] == str(samples_path.relative_to(out))


def test_mlvu_in_percent_and_a_resumed_command_replaces_the_samples(
    openai_server, make_benchmark, tmp_path
) -> None:
    import time

    openai_server.responder = lambda req, i: "(A)"  # right on plotQA (Yellow), wrong on count
    data, out = make_benchmark("mlvu"), tmp_path / "out"
    assert _run(openai_server, data, out, benchmark="mlvu").exit_code == 0
    time.sleep(1.1)  # a later date id
    assert _run(openai_server, data, out, benchmark="mlvu").exit_code == 0
    assert len(_files(out, "*_results.json")) == 2  # one per command, as lmms-eval leaves them
    (samples,) = _files(out, "*_samples_mlvu_dev.jsonl")  # the latest only: the whole benchmark
    assert len(samples.read_text().splitlines()) == 3
    latest = json.loads(_files(out, "*_results.json")[-1].read_text())
    m = json.loads((out / "mlvu" / "metrics.json").read_text())
    value = latest["results"]["mlvu_dev"]["mlvu_percetion_score,none"]
    assert abs(value - 100 * m["score"]) < 1e-9 and abs(value - 50.0) < 1e-9  # M-Avg (1 + 0)/2
    line = json.loads(samples.read_text().splitlines()[0])
    assert line["mlvu_percetion_score"]["question_type"] == "plotQA"
    assert line["mlvu_percetion_score"]["pred_answer"] == "A"


def test_activitynetqa_reports_lmms_failures_as_no() -> None:
    from eval.lmms_output import results_entry

    metrics = {"score": 0.8, "questions": 10, "overall": {"scored": 8},
               "judge_protocol": {"failures_as_no": {"yes_rate": 0.6, "mean_score": 3.1},
                                  "excluding_failures": {"yes_rate": 0.75, "mean_score": 3.9}}}
    e = results_entry("activitynetqa", False, metrics, [])
    assert e["results"]["gpt_eval_accuracy,none"] == 0.6
    assert e["results"]["gpt_eval_score,none"] == 3.1
