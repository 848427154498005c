"""`longrl eval` end to end with the tiny model: the synthetic benchmark with --frames and --fps,
recorded settings, undecodable videos, resuming after a real kill, the LLM judge, compare."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

ROOT = Path(__file__).resolve().parent.parent
# Tiny frames (one 56x56 frame pair -> 4 video tokens) and short answers keep every run fast.
FAST = [
    "--set",
    "min_pixels=784",
    "--set",
    "max_pixels=3136",
    "--set",
    "max_new_tokens=8",
    "--set",
    "bootstrap=200",
]


def _eval(*args: str) -> object:
    result = CliRunner().invoke(app, ["eval", *args], catch_exceptions=False)
    return result


def _preds(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_synth_end_to_end_with_frames_and_fps(tiny_model_dir, synth_bench, tmp_path) -> None:
    out_f, out_s = tmp_path / "frames", tmp_path / "fps"
    r = _eval(
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "synth",
        "--data",
        str(synth_bench),
        "--out",
        str(out_f),
        "--frames",
        "2",
        "--batch-size",
        "4",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    preds = _preds(out_f / "synth" / "predictions.jsonl")
    questions = [json.loads(x) for x in (synth_bench / "questions.jsonl").read_text().splitlines()]
    assert sorted(p["qid"] for p in preds) == sorted(q["id"] for q in questions)
    for p in preds:
        assert {
            "qid",
            "prompt",
            "raw_output",
            "extracted",
            "correct",
            "latency_s",
            "status",
        } <= set(p)
        assert p["num_frames"] == 2 and p["num_video_tokens"] == 4 and p["latency_s"] > 0
        assert p["status"] in ("answered", "unanswered")
        if p["status"] == "unanswered":
            assert p["extracted"] is None and p["correct"] is False
    m = json.loads((out_f / "synth" / "metrics.json").read_text())
    assert m["settings"]["frames"] == 2 and m["settings"]["fps"] == 0.0
    assert m["settings"]["max_pixels"] == 3136 and m["settings"]["prompt_style"] == "reasoning"
    assert m["overall"]["n"] == len(questions)
    n_open = sum(q["answer_type"] == "open_ended" for q in questions)
    # ground-truth names are graded exactly without a judge: nothing ungraded (issue 11.3)
    assert n_open and m["overall"]["ungraded"] == 0 and m["overall"]["judge_errors"] == 0
    assert m["overall"]["scored"] == len(questions)
    assert set(m["breakdown"]) == {"category", "subcategory", "answer_type"}
    assert (out_f / "synth" / "accuracy.png").stat().st_size > 1000
    assert (out_f / "summary.png").is_file() or m["score"] is None

    # --fps: 15 s at 0.5 fps -> round(7.5) = 8 frames (even: the temporal patch is 2)
    r = _eval(
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "synth",
        "--data",
        str(synth_bench),
        "--out",
        str(out_s),
        "--fps",
        "0.5",
        "--limit",
        "4",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    preds = _preds(out_s / "synth" / "predictions.jsonl")
    assert len(preds) == 4 and all(
        p["num_frames"] == 8 and p["num_video_tokens"] == 16 for p in preds
    )
    m = json.loads((out_s / "synth" / "metrics.json").read_text())
    assert m["settings"]["fps"] == 0.5 and m["settings"]["frames"] == 0

    # compare the two runs on their shared questions
    r = _eval("compare", str(out_f), str(out_s), "--out", str(tmp_path / "cmp.json"))
    assert r.exit_code == 0, r.output
    cmp = json.loads((tmp_path / "cmp.json").read_text())["benchmarks"]["synth"]
    assert (
        cmp["n"] + cmp["excluded"] == 4
        and cmp["wins"] + cmp["losses"] + cmp["ties_right"] + cmp["ties_wrong"] == cmp["n"]
    )


def test_undecodable_video_is_an_error_for_its_questions_only(
    tiny_model_dir, synth_bench, tmp_path
) -> None:
    data = tmp_path / "synth"
    shutil.copytree(synth_bench, data)
    (data / "synth_0001.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    out = tmp_path / "out"
    r = _eval(
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "synth",
        "--data",
        str(data),
        "--out",
        str(out),
        "--frames",
        "2",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    preds = _preds(out / "synth" / "predictions.jsonl")
    bad = [p for p in preds if p["video"].endswith("synth_0001.mp4")]
    good = [p for p in preds if p["video"].endswith("synth_0000.mp4")]
    assert bad and all(p["status"] == "error" and "synth_0001.mp4" in p["error"] for p in bad)
    assert all(p["raw_output"] is None for p in bad)  # never answered from a substitute
    assert good and all(p["status"] != "error" for p in good)
    m = json.loads((out / "synth" / "metrics.json").read_text())
    assert m["overall"]["errors"] == len(bad)
    assert m["overall"]["scored"] + m["overall"]["ungraded"] == len(good)
    assert m["overall"]["judge_errors"] == 0


def test_changed_settings_are_not_mixed_into_a_run(tiny_model_dir, synth_bench, tmp_path) -> None:
    args = [
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "synth",
        "--data",
        str(synth_bench),
        "--out",
        str(tmp_path),
        "--limit",
        "1",
        *FAST,
    ]
    assert _eval(*args, "--frames", "2").exit_code == 0
    r = _eval(*args, "--frames", "4")
    assert r.exit_code == 2 and "other settings" in r.output and "frames: 2 -> 4" in r.output
    assert _eval(*args, "--frames", "4", "--overwrite").exit_code == 0
    assert _preds(tmp_path / "synth" / "predictions.jsonl")[0]["num_frames"] == 4


@pytest.mark.slow
def test_resume_after_killing_a_real_run(tiny_model_dir, synth_bench, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "eval",
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "synth",
        "--data",
        str(synth_bench),
        "--out",
        str(out),
        "--frames",
        "2",
        "--batch-size",
        "1",
        "--limit",
        "6",
        "--set",
        "min_pixels=784",
        "--set",
        "max_pixels=3136",
        "--set",
        "max_new_tokens=32",
        "--set",
        "bootstrap=200",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    preds_path = out / "synth" / "predictions.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if preds_path.is_file() and len(preds_path.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (
            f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    before = _preds(preds_path)
    assert 2 <= len(before) < 6
    with preds_path.open("a") as fh:  # what a kill in the middle of a write leaves behind
        fh.write('{"qid": "torn-line", "raw_out')
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _preds(preds_path)
    qids = [p["qid"] for p in after]
    assert len(qids) == 6 and len(set(qids)) == 6 and "torn-line" not in qids
    assert after[: len(before)] == before  # nothing re-asked, nothing lost
    m = json.loads((out / "synth" / "metrics.json").read_text())
    assert m["resumed"] == len(before) and m["generated"] == 6 - len(before)
    # the resumed run answers exactly as an uninterrupted one (greedy, same batches)
    ref = tmp_path / "ref"
    ref_cmd = [c if c != str(out) else str(ref) for c in cmd]
    r = _eval(*ref_cmd[ref_cmd.index("eval") + 1 :])
    assert r.exit_code == 0, r.output
    ref_out = {p["qid"]: p["raw_output"] for p in _preds(ref / "synth" / "predictions.jsonl")}
    assert {p["qid"]: p["raw_output"] for p in after} == ref_out


@pytest.mark.parametrize("engine_flag", [["--engine", "nope"]])
def test_bad_options_are_clear_errors(tiny_model_dir, synth_bench, tmp_path, engine_flag) -> None:
    base = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(synth_bench),
        "--out",
        str(tmp_path),
        *FAST,
    ]
    r = _eval(*base, "--benchmark", "synth", "--frames", "2", "--fps", "1")
    assert r.exit_code == 2 and "not both" in r.output
    r = _eval(*base, "--benchmark", "videome")
    assert r.exit_code == 2 and "unknown benchmark" in r.output
    r = _eval(*base, "--benchmark", "synth", *engine_flag)
    assert r.exit_code == 2 and "unknown engine" in r.output
    r = _eval(*base, "--benchmark", "mlvu")
    assert r.exit_code == 2 and "no benchmark files" in r.output


def test_results_reach_mlflow_when_configured(
    tiny_model_dir, synth_bench, tmp_path, mlflow_env
) -> None:
    import os

    from mlflow import MlflowClient

    r = _eval(
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "synth",
        "--data",
        str(synth_bench),
        "--out",
        str(tmp_path),
        "--frames",
        "2",
        "--limit",
        "3",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    client = MlflowClient()
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    (run,) = client.search_runs([exp.experiment_id])
    m = json.loads((tmp_path / "synth" / "metrics.json").read_text())
    assert run.data.metrics["synth/n"] == 3.0
    assert run.data.metrics["synth/errors"] == 0.0
    if m["overall"]["accuracy"] is not None:
        assert run.data.metrics["synth/accuracy"] == pytest.approx(m["overall"]["accuracy"])
    assert run.data.params["frames"] == "2" and run.data.params["max_pixels"] == "3136"
    assert run.data.tags["longrl.stage"] == "eval" and run.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "eval/synth")}
    assert {
        "eval/synth/metrics.json",
        "eval/synth/accuracy.png",
        "eval/synth/predictions.jsonl",
    } <= names
    # lmms-eval's files beside ours, and the commit that ran
    lmms_dir = next(a.path for a in client.list_artifacts(run.info.run_id, "eval/lmms_eval"))
    lmms = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run.info.run_id, lmms_dir)}
    assert any(n.endswith("_results.json") for n in lmms)
    assert any(n.endswith("_samples_synth.jsonl") for n in lmms)
    assert run.data.tags["eval.git_commit"] == m["harness"]["git_commit"]


def test_videomme_with_subtitles_end_to_end(tiny_model_dir, make_benchmark, tmp_path) -> None:
    data = make_benchmark("videomme")
    r = _eval(
        "--model",
        str(tiny_model_dir),
        "--benchmark",
        "videomme",
        "--data",
        str(data),
        "--out",
        str(tmp_path),
        "--frames",
        "2",
        "--subtitles",
        *FAST,
    )
    assert r.exit_code == 0, r.output
    preds = {p["qid"]: p for p in _preds(tmp_path / "videomme_subtitles" / "predictions.jsonl")}
    # frames at 0.5 s and 1.5 s: both cues are on screen at one of them
    assert preds["001-1"]["prompt"].startswith(
        "This video's subtitles are listed below:\nwelcome to the show\nthree red shapes\nSelect the best answer"
    )
    assert "No subtitles available" in preds["601-1"]["prompt"]
    assert preds["001-1"]["system"] is None  # the benchmark's own prompt, no reasoning system turn
    m = json.loads((tmp_path / "videomme_subtitles" / "metrics.json").read_text())
    assert m["settings"]["subtitles"] is True and set(m["breakdown"]) == {
        "duration",
        "domain",
        "task_type",
    }
