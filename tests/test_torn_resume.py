"""Resume through torn files (issue 17.8): a last line cut short by power loss or a full disk in
metrics.jsonl / samples.jsonl / judge_cache.jsonl is dropped with a warning naming the file and
the run goes on without losing or repeating a step; damage before the last line is refused in
one line naming file and line."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.fixtures.grpo import grpo_overrides
from tests.fixtures.sft import TINY_SFT_OVERRIDES, write_split

runner = CliRunner()


def _tear(path, text: str = '{"step": 9, "loss": 0.12') -> None:
    with path.open("a") as fh:
        fh.write(text)  # no newline: a write cut short


def _steps(path) -> list[int]:
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines() if ln.strip()]


def _error_line(result) -> str:
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code not in (0, None) and len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def test_sft_resumes_through_a_torn_metrics_line(tiny_model_dir, sft_records, tmp_path, caplog):
    data = write_split(sft_records[:4], tmp_path / "data")
    out = tmp_path / "sft"
    base = ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            *TINY_SFT_OVERRIDES, "eval_generate=0", "save_every=1"]
    assert runner.invoke(app, [*base, "max_steps=2"]).exit_code == 0
    _tear(out / "metrics.jsonl")
    with caplog.at_level(logging.WARNING, logger="longrl.jsonl"):
        again = runner.invoke(app, [*base, "max_steps=3"])
    assert again.exit_code == 0, again.output
    assert "metrics.jsonl:3: dropped a torn last line" in caplog.text
    assert _steps(out / "metrics.jsonl") == [1, 2, 3]
    # damage before the last line is not papered over
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:10], lines[2]]) + "\n")
    refused = runner.invoke(app, [*base, "max_steps=4"])
    line = _error_line(refused)
    assert f"{out / 'metrics.jsonl'}:2: not valid JSON" in line and "fix or remove the line" in line


def test_grpo_resumes_through_torn_metrics_and_samples(tiny_model_dir, colour_task, tmp_path, caplog):
    out = tmp_path / "grpo"
    base = ["train", "grpo", "--model", str(tiny_model_dir), "--data", str(colour_task), "--out", str(out),
            *grpo_overrides(), "save_every=1"]
    first = runner.invoke(app, [*base, "max_steps=2"])
    assert first.exit_code == 0, first.output
    samples = out / "samples.jsonl"
    assert samples.is_file()
    n_samples = {s: sum(1 for ln in samples.read_text().splitlines() if json.loads(ln)["step"] == s) for s in (1, 2)}
    _tear(out / "metrics.jsonl")
    _tear(samples, '{"step": 3, "completion": "<think>red</thi')
    with caplog.at_level(logging.WARNING, logger="longrl.jsonl"):
        again = runner.invoke(app, [*base, "max_steps=3"])
    assert again.exit_code == 0, again.output
    assert "metrics.jsonl:3: dropped a torn last line" in caplog.text and "samples.jsonl" in caplog.text
    assert _steps(out / "metrics.jsonl") == [1, 2, 3]
    got = [json.loads(ln)["step"] for ln in samples.read_text().splitlines()]
    assert [got.count(s) for s in (1, 2)] == [n_samples[1], n_samples[2]] and got.count(3) == n_samples[1]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0][:7], *lines[1:]]) + "\n")
    line = _error_line(runner.invoke(app, [*base, "max_steps=4"]))
    assert f"{out / 'metrics.jsonl'}:1: not valid JSON" in line


def test_judge_cache_torn_tail_dropped_and_damage_named(tmp_path, caplog):
    from common.jsonl import JsonlError
    from training.grpo.judge import JudgeConfig, LLMJudge

    cache = tmp_path / "judge_cache.jsonl"
    cache.write_text('{"key": "a", "correct": true}\n{"key": "b", "correct": false}\n{"key": "c", "corr')
    with caplog.at_level(logging.WARNING, logger="longrl.jsonl"):
        judge = LLMJudge(JudgeConfig(cache_path=str(cache)))
    assert judge.cache == {"a": True, "b": False}
    assert "judge_cache.jsonl:3: dropped a torn last line" in caplog.text
    assert cache.read_text().endswith("false}\n")  # repaired: the next append starts a clean line
    cache.write_text('{"key": "a", "correct": true}\n{"key": "b", "cor\n{"key": "c", "correct": true}\n')
    with pytest.raises(JsonlError, match=r"judge_cache.jsonl:2: not valid JSON"):
        LLMJudge(JudgeConfig(cache_path=str(cache)))


def test_compare_leaves_out_a_torn_prediction_and_names_damage(tmp_path, caplog):
    from eval.compare import compare_runs
    from eval.runner import base_record
    from eval.task import EvalItem, get_task

    task = get_task("mlvu")
    items = [EvalItem(qid=f"plotQA_{i}", video_path=f"v/{i}.mp4", question="q?", answer="B",
                      options=["w", "x", "y", "z"], breakdown={"question_type": "plotQA"}, cluster=f"{i}")
             for i in range(6)]

    def rec(item, correct):
        letter = "B" if correct else "C"
        return {**base_record(task, item), "status": "answered", "correct": correct, "error": None,
                "prompt": "p", "raw_output": letter, "extracted": letter}

    for name, right in (("A", 6), ("B", 3)):
        d = tmp_path / name / "mlvu"
        d.mkdir(parents=True)
        (d / "predictions.jsonl").write_text("".join(json.dumps(rec(it, i < right)) + "\n" for i, it in enumerate(items)))
    _tear(tmp_path / "A" / "mlvu" / "predictions.jsonl", '{"qid": "plotQA_6", "stat')
    with caplog.at_level(logging.WARNING, logger="longrl.jsonl"):
        res = compare_runs(tmp_path / "A", tmp_path / "B", n_boot=50)["benchmarks"]["mlvu"]
    assert res["n"] == 6 and "predictions.jsonl:7: dropped a torn last line" in caplog.text
    lines = (tmp_path / "B" / "mlvu" / "predictions.jsonl").read_text().splitlines()
    lines[2] = lines[2][:20]
    (tmp_path / "B" / "mlvu" / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "A"), str(tmp_path / "B")])
    line = _error_line(result)  # was: the broken line skipped, 5 questions compared silently
    assert "predictions.jsonl:3: not valid JSON" in line


def test_a_failed_build_still_writes_its_summary(tmp_path, corrupt_videos):
    import shutil

    from data_gen.build import BuildError, run_build
    from data_gen.build_config import BuildConfig

    videos = tmp_path / "videos"
    videos.mkdir()
    for kind in ("zero_bytes", "text"):
        shutil.copy(corrupt_videos[kind][0], videos / f"{kind}.mp4")
    cfg = BuildConfig(videos=str(videos), out=str(tmp_path / "out"), annotator="groundtruth", progress=False)
    with pytest.raises(BuildError):
        run_build(cfg)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("BuildError: ")
    assert summary["rejects"] == 2 and "requests" in summary and "cache" in summary
