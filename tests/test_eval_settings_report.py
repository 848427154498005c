"""Issue 14.10: the stored settings hold the dtype the engine really runs in (`auto` resolved, so a
CPU fp32 run and a GPU bf16 run cannot resume into one predictions file), vLLM's tensor
parallelism is reachable from the CLI, `eval list --layout` keeps bracketed text, and
summary.png shows every benchmark - an unscored one marked with why - with value labels."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from eval import report
from eval.config import EvalConfig, SettingsMismatch, check_resume, resolved_dtype, run_settings
from eval.runner import engine_options
from eval.task import get_task
from pipelines.cli import app

FAST = ["--set", "min_pixels=784", "--set", "max_pixels=3136", "--set", "max_new_tokens=4",
        "--set", "bootstrap=50", "--frames", "2"]  # fmt: skip


def _cfg(model, **kw) -> EvalConfig:
    return EvalConfig(model=str(model), data="d", out="o", **kw)


def test_auto_dtype_is_resolved_in_the_stored_settings(tiny_model_dir, tmp_path) -> None:
    task = get_task("synth")
    cpu = _cfg(tiny_model_dir, device="cpu")
    gpu = _cfg(tiny_model_dir, device="cuda")
    assert (cpu.dtype, gpu.dtype) == ("auto", "auto")
    assert (resolved_dtype(cpu), resolved_dtype(gpu)) == ("float32", "bfloat16")
    assert resolved_dtype(_cfg(tiny_model_dir, engine="vllm")) == "bfloat16"
    assert resolved_dtype(_cfg(tiny_model_dir, device="cuda", dtype="float16")) == "float16"
    cpu_settings = run_settings(cpu, task, "benchmark", 8)
    assert cpu_settings["dtype"] == "float32"
    # a CPU run's folder refuses a GPU run with the same `dtype: auto` (both were "auto" before)
    bench = tmp_path / "synth"
    check_resume(bench, cpu_settings, overwrite=False)
    (bench / "predictions.jsonl").write_text("{}\n")
    with pytest.raises(SettingsMismatch, match=r"dtype: 'float32' -> 'bfloat16'"):
        check_resume(bench, run_settings(gpu, task, "benchmark", 8), overwrite=False)
    check_resume(bench, run_settings(cpu, task, "benchmark", 8), overwrite=False)  # same: resumes
    # the engine is built with the dtype the settings name
    assert engine_options(cpu) == {"dtype": "float32", "device": "cpu"}


def test_a_cpu_run_records_float32(tiny_model_dir, synth_bench, tmp_path) -> None:
    argv = ["eval", "--model", str(tiny_model_dir), "--benchmark", "synth", "--data",
            str(synth_bench), "--out", str(tmp_path), "--limit", "2", "--set", "device=cpu", *FAST]  # fmt: skip
    r = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "synth" / "run_info.json").read_text())
    m = json.loads((tmp_path / "synth" / "metrics.json").read_text())
    assert info["settings"]["dtype"] == "float32" == m["engine"]["dtype"] == m["settings"]["dtype"]


def test_tensor_parallel_size_reaches_the_vllm_engine(
    tiny_model_dir, make_benchmark, tmp_path
) -> None:
    vllm = _cfg(tiny_model_dir, engine="vllm", vllm_tensor_parallel_size=2)
    opts = engine_options(vllm)
    assert opts["tensor_parallel_size"] == 2 and opts["dtype"] == "bfloat16"
    data = make_benchmark("mlvu")
    for video in (data / "video").rglob("*.mp4"):
        video.unlink()  # every question is a missing-video error: no engine is built (no vLLM)
    base = ["eval", "--model", str(tiny_model_dir), "--benchmark", "mlvu", "--data", str(data),
            "--out", str(tmp_path), *FAST]  # fmt: skip
    # the CLI option lands in the config the run saves and runs with
    r = CliRunner().invoke(
        app, [*base, "--engine", "vllm", "--tensor-parallel-size", "2"], catch_exceptions=False
    )
    assert r.exit_code == 1 and "no question could be scored" in r.output
    saved = yaml.safe_load((tmp_path / "eval_config.yaml").read_text())
    assert saved["vllm_tensor_parallel_size"] == 2 and saved["engine"] == "vllm"
    info = json.loads((tmp_path / "mlvu" / "run_info.json").read_text())
    assert info["settings"]["dtype"] == "bfloat16"  # vLLM's auto
    r = CliRunner().invoke(app, [*base, "--tensor-parallel-size", "2"], catch_exceptions=False)
    assert r.exit_code == 2 and "--tensor-parallel-size 2 needs --engine vllm" in r.output
    r = CliRunner().invoke(app, [*base, "--engine", "vllm", "--tensor-parallel-size", "0"])
    assert r.exit_code == 2 and "vllm_tensor_parallel_size must be >= 1" in r.output


def test_eval_list_layout_keeps_brackets() -> None:
    r = CliRunner().invoke(app, ["eval", "list", "--layout"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert '{"timestamp": [start_s, end_s], "text": ...}' in r.output  # LongVideoBench's layout
    assert "json/1_plotQA.json" in r.output


def _entry(score, ungraded=0, errors=0, n=10):
    overall = {"n": n, "scored": n - ungraded - errors, "unanswered": 0, "errors": errors,
               "judge_errors": 0, "ungraded": ungraded}  # fmt: skip
    ci = None if score is None else [score - 0.1, score + 0.1]
    return {"score": score, "score_ci95": ci, "headline": "micro", "overall": overall}


def test_summary_chart_shows_unscored_benchmarks_and_value_labels() -> None:
    summary = {
        "model": "m",
        "benchmarks": {
            "videomme": _entry(0.4567),
            "activitynetqa": _entry(None, ungraded=10),
            "mlvu": _entry(None, errors=10),
            "nextqa": _entry(1.0),
        },
    }
    fig = report.summary_figure(summary)
    (ax,) = fig.axes
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["videomme", "activitynetqa (not scored)", "mlvu (not scored)", "nextqa"]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["45.7", "ungraded (10 open-ended, no judge)", "no score (10 errors)", "100.0"]
    assert ax.get_xlim()[1] > 100  # the label of a full bar stays inside the chart
    assert len(ax.patches) == 2  # bars only for the scored benchmarks


def test_summary_png_is_written_for_an_ungraded_only_run(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "activitynetqa").mkdir(parents=True)
    (out / "activitynetqa" / "metrics.json").write_text("{}")
    report.write_summary(out, {"model": "m", "benchmarks": {"activitynetqa": _entry(None, 3)}})
    assert (out / report.SUMMARY_PLOT).is_file()  # was: no chart at all
