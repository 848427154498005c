"""Ctrl-C stops a Ray-launched training run promptly (issue 16 point 3): a real `longrl train
grpo launcher=ray` on CPU workers gets SIGINT mid-training and exits with one line, leaving no
Ray process behind; the checkpoint it wrote resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fixtures.grpo import grpo_overrides


def _group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def test_sigint_stops_a_ray_launched_grpo_run(tiny_model_dir, colour_task, tmp_path):
    out = tmp_path / "grpo"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "grpo", "--model", str(tiny_model_dir),
           "--data", str(colour_task), "--out", str(out), *grpo_overrides(),
           "max_steps=500", "save_every=1", "launcher=ray", "num_workers=1", "device=cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("grpo step 2/500" in ln for ln in lines):  # training, a checkpoint written
            assert proc.poll() is None, "".join(lines[-30:])
            assert time.monotonic() < deadline, "no training step within 240 s:\n" + "".join(lines[-30:])
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        rc = proc.wait(timeout=60)
        stopped_s = time.monotonic() - t0
        reader.join(5)
        text = "".join(lines)
        assert rc == 130, text[-3000:]
        assert stopped_s < 20, f"took {stopped_s:.1f} s to stop"
        assert "error: interrupted (Ctrl-C)" in text and "resumes from the newest" in text
        assert "Traceback" not in text.split("interrupted: stopping the Ray Train workers")[-1]
        time.sleep(3)
        assert not _group_alive(proc.pid), _group_alive(proc.pid)  # no Ray worker left behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from training.checkpoint import list_checkpoints

    assert list_checkpoints(out), "the steps done before Ctrl-C were checkpointed"
