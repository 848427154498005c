"""The prepared GPU check stays runnable: its shell script parses, and the long-video position
check runs its trainer side on CPU (--dry-run) with the position the vLLM transcription gives."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_script_parses_and_names_its_parts():
    subprocess.run(["bash", "-n", str(ROOT / "bench/gpu_check.sh")], check=True)
    text = (ROOT / "bench/gpu_check.sh").read_text()
    for needed in ("test_grpo_vllm.py", "test_sequence_parallel_vllm.py", "test_eval_engines.py",
                   "test_patch_layout_equals_transformers_video_processor", "gpu_vllm_check.py"):
        assert needed in text


def test_vllm_check_dry_run_reports_the_long_video_position():
    out = subprocess.run([sys.executable, str(ROOT / "bench/gpu_vllm_check.py"), "--dry-run", "--frames", "64",
                          "--seconds", "600", "--archs", "qwen2_5_vl"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"prompt: (\d+) tokens, grid \((\d+), (\d+), (\d+)\), ([\d.]+) s per temporal patch", out.stdout)
    assert m, out.stdout
    n, t, h, w = (int(x) for x in m.groups()[:4])
    assert float(m.group(5)) == 18.75
    # vLLM's scheme: text after the video continues at base + (t - 1) * 18.75 * 2 + 1; the prompt
    # holds n - t*h*w/4 text tokens, of which those after the video add one position each.
    first = [int(x) for x in re.findall(r"first response position (\d+)", out.stdout)]
    assert len(first) == 2 and first[0] == first[1]
    video_tokens = t * h * w // 4
    assert first[0] == (n - video_tokens) + int((t - 1) * 18.75 * 2) + 1
