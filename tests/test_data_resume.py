"""Kill a real `longrl data build` (SIGKILL, mid-captioning and again mid-filtering), run it again,
and check that it redoes only unfinished units and ends with exactly the dataset of an
uninterrupted run - nothing lost, nothing twice - and that the API key appears nowhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_gen.build import run_build
from data_gen.schema import SPLITS
from tests.fixtures.data_gen import FakeLVRModel
from tests.test_data_build import SECRET, llm_config

ROOT = Path(__file__).resolve().parent.parent


def _argv(videos: Path, out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "data", "build", "--videos", str(videos), "--out", str(out),
            "--annotator", "llm", "--captioner-url", url, "--captioner-model", "scripted",
            "--reasoner-url", url, "--reasoner-model", "scripted", "--filter-url", url,
            "--filter-model", "scripted", "--k", "2", "--frames", "3", "--concurrency", "2",
            "--api-key-env", "LONGRL_TEST_KEY", "--no-progress", "questions_per_category=1",
            "frame_max_pixels=3072", "filter.num_frames=2", "client.backoff_s=0.01"]


def _cached(out: Path, kind: str) -> list[dict]:
    """Finished units (a killed writer may leave a .tmp-* file: not a finished unit)."""
    return [json.loads(p.read_text()) for p in (out / "cache" / kind).glob("*/*.json")
            if not p.name.startswith(".")]


def _run_until(argv: list[str], env: dict, until, timeout: float = 60.0) -> tuple[int, str]:
    """Start the build; SIGKILL it as soon as `until()` is true (None: let it finish)."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if until is not None and until():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=timeout)
    time.sleep(0.3)  # requests the killed process left in flight finish on the server
    return proc.returncode, output


def _records(out: Path) -> dict[str, list[dict]]:
    return {s: sorted(pq.read_table(out / f"{s}.parquet").to_pylist(), key=lambda r: r["id"]) for s in SPLITS}


def _asked(entries: list[dict], marker: str) -> list[str]:
    """User texts of the answered requests of one kind (caption spans, filter questions)."""
    out = []
    for e in entries:
        body = e["body"]
        if e["status"] == 200 and e["fault"] is None and body["messages"][0]["content"].startswith(marker):
            content = body["messages"][1]["content"]
            text = " ".join(p.get("text", "") for p in content) if isinstance(content, list) else content
            images = [p["image_url"]["url"][-40:] for p in content if p.get("type") == "image_url"] if isinstance(content, list) else []
            out.append(text + "|" + ",".join(images))
    return out


@pytest.mark.slow  # ~30 s: three real CLI processes (imports dominate) and a clean run
def test_killed_build_resumes_without_loss_or_duplicates(tmp_path, synth_dir, openai_server):
    openai_server.responder = FakeLVRModel()
    openai_server.latency_s = 0.05
    openai_server.expected_key = SECRET
    out = tmp_path / "out"
    env = {**os.environ, "LONGRL_TEST_KEY": SECRET, "PYTHONPATH": str(ROOT)}
    argv = _argv(synth_dir, out, openai_server.url)

    code, out1 = _run_until(argv, env, lambda: len(_cached(out, "caption")) >= 3)
    assert code == -signal.SIGKILL
    captions_1 = len(_cached(out, "caption"))
    assert 3 <= captions_1 < 9, "killed too late to test anything"
    mark_1 = len(openai_server.log)

    code, out2 = _run_until(argv, env, lambda: len(_cached(out, "verdict")) >= 4)
    assert code == -signal.SIGKILL
    verdicts_2 = {v["parts"]["question"] for v in _cached(out, "verdict")}
    assert 4 <= len(verdicts_2) < 24, "killed too late to test anything"
    assert len(_cached(out, "caption")) == 9 and len(_cached(out, "qa")) == 3
    mark_2 = len(openai_server.log)

    code, out3 = _run_until(argv, env, None)
    assert code == 0, out3
    log = openai_server.log
    # Run 2 asked only for the captions run 1 had not finished; run 3 asked for none.
    run2_caps = _asked(log[mark_1:mark_2], "You describe short video clips")
    # (a request run 1 sent but did not finish is rightly asked again; a finished one never)
    assert len(run2_caps) == len(set(run2_caps)) == 9 - captions_1
    assert _asked(log[mark_2:], "You describe short video clips") == []
    assert _asked(log[mark_2:], "You write question-answer pairs") == []
    # Run 3 asked only about questions whose verdicts were not cached when run 2 died.
    run3_questions = {t.split("\n", 1)[1].split("\n")[0] for t in _asked(log[mark_2:], "You answer questions")}
    assert run3_questions and run3_questions.isdisjoint(verdicts_2)
    assert len(run3_questions) == 24 - len(verdicts_2)

    # Same dataset as a run that was never interrupted (fresh cache, same server).
    clean = llm_config(synth_dir, tmp_path / "clean", openai_server.url)
    clean.filter.k, clean.filter.num_frames, clean.client.concurrency = 2, 2, 2
    clean.frame_max_pixels = 3072
    os.environ["LONGRL_TEST_KEY"] = SECRET
    try:
        run_build(clean)
    finally:
        del os.environ["LONGRL_TEST_KEY"]
    resumed, fresh = _records(out), _records(tmp_path / "clean")
    assert resumed == fresh and sum(len(v) for v in resumed.values()) > 0
    ids = [r["id"] for rs in resumed.values() for r in rs]
    assert len(ids) == len(set(ids))
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == len(set(rejects)) == len((tmp_path / "clean" / "rejects.jsonl").read_text().splitlines())

    # The key stays in the environment: not in output, caches, logs or datasets.
    assert all(e["key_ok"] for e in log)
    for text in (out1, out2, out3):
        assert SECRET not in text
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
