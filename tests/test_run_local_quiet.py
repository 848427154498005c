"""`longrl pipeline run-local` is quiet by default (issue 16.13): kfp.local's output goes to
OUT/pipeline.log and OUT/logs/TASK.log, the console gets one line per task; `-v` prints it all;
a failed task's error still reaches the console. Real kfp.local runs (subprocess runner)."""

# No `from __future__ import annotations`: KFP reads the component functions' annotations as types.

import io
import re

import pytest
from kfp import dsl

LIGHT = {"base_image": "python:3.11", "install_kfp_package": False}


@dsl.component(**LIGHT)
def chatty(n: int) -> int:
    for i in range(n):
        print(f"chatty line {i} of {n}")
    return n


@dsl.component(**LIGHT)
def broken(x: int):
    print("about to check the answer")
    raise ValueError(f"the answer {x} is wrong")


@dsl.pipeline(name="quiet-ok")
def ok_pipeline(n: int):
    first = chatty(n=n)
    chatty(n=first.output)


@dsl.pipeline(name="quiet-fail")
def failing_pipeline(n: int):
    broken(x=chatty(n=n).output)


def _run(tmp_path, pipeline, verbose=False, raises=False):
    from kfp import local
    from rich.console import Console

    from pipelines.local_log import TaskConsole

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)  # fmt: skip
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    with TaskConsole(tmp_path / "out", console, verbose=verbose) as tc:
        if raises:
            with pytest.raises(RuntimeError, match="Inner task failed"):
                pipeline(n=40)
        else:
            pipeline(n=40)
    return buf.getvalue(), tc


def test_quiet_by_default_full_output_in_the_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text, tc = _run(tmp_path, ok_pipeline)
    lines = text.splitlines()
    assert len(lines) == 2, text  # one line per task, nothing else
    assert re.match(r"ok chatty +SUCCESS +\d+\.\d s$", lines[0]) and lines[1].startswith(
        "ok chatty-2 "
    )
    assert [(t.name, t.state) for t in tc.tasks] == [("chatty", "SUCCESS"), ("chatty-2", "SUCCESS")]
    assert all(t.seconds > 0 for t in tc.tasks)
    assert "chatty line" not in capsys.readouterr().out  # nothing leaked past the router either
    full = (tmp_path / "out" / "pipeline.log").read_text()
    assert (
        full.count("chatty line") == 80
        and "Executing task 'chatty-2'" in full
        and "\x1b[" not in full
    )
    task_log = (tmp_path / "out" / "logs" / "chatty-2.log").read_text()
    assert task_log.count("chatty line") == 40 and "chatty line 39 of 40" in task_log


def test_verbose_prints_the_full_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text, _ = _run(tmp_path, ok_pipeline, verbose=True)
    streamed = capsys.readouterr().out
    assert streamed.count("chatty line") == 80 and "Executing task" in streamed
    assert text.count(" SUCCESS ") == 2  # the task lines as well
    assert (tmp_path / "out" / "pipeline.log").read_text().count("chatty line") == 80


def test_a_failed_task_shows_its_error_and_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, tc = _run(tmp_path, failing_pipeline, raises=True)
    assert [(t.name, t.state) for t in tc.tasks] == [("chatty", "SUCCESS"), ("broken", "FAILURE")]
    assert re.search(r"^!! broken +FAILURE", text, re.M)
    assert "ValueError: the answer 40 is wrong" in text
    assert "about to check the answer" in (tmp_path / "out" / "logs" / "broken.log").read_text()
    assert f"full log: {tmp_path / 'out' / 'logs' / 'broken.log'}" in text
    assert "chatty line 3 " not in text  # the successful task's output stays in its log
    assert (
        "Traceback (most recent call last)" in text and '"executorInput"' not in text
    )  # from the traceback on
    assert len(text.splitlines()) < 2 + 3 + 25


def test_run_local_cli_is_quiet_and_names_the_failed_step(mlflow_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli_pipeline import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "demo"
    # A video folder that does not exist: prepare-videos fails within seconds.
    res = CliRunner().invoke(app, ["run-local", "--out", str(out), "--tracking-uri", mlflow_server,
                                   "--param", f"video_source={tmp_path / 'no-videos'}",
                                   "--param", "mlflow_experiment=run-local-quiet"])  # fmt: skip
    assert res.exit_code == 1, res.output
    text = res.output
    assert re.search(r"^ok start-tracking +SUCCESS", text, re.M)
    assert re.search(r"^!! prepare-videos +FAILURE", text, re.M)
    assert (
        "StepError: video source" in text
        and "no-videos" in text
        and f"full log: {out / 'logs' / 'prepare-videos.log'}" in text
    )
    assert "pipeline failed:" in text and "\x1b[" not in text
    assert len(text.splitlines()) < 45, text  # was ~110 lines of kfp JSON and warnings
    assert "Executing task" not in text and "UserWarning" not in text
    full = (out / "pipeline.log").read_text()
    # (kfp's "no effect locally" warnings land there too, outside pytest, which captures warnings)
    assert (
        "Executing task 'prepare-videos'" in full
        and "is neither 'synth' nor an existing folder" in full
    )
    assert (out / "logs" / "start-tracking.log").is_file()
