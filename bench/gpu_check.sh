#!/usr/bin/env bash
# The GPU check, as one prepared call on one H100/H200 (under 10 minutes: part limits 220+210+150 = 580 s):
#   1. the tests that are skipped without CUDA (vLLM rollout/eval engines, colocated vLLM weight
#      sync, transformers' video-processor layout), plus the CPU-default tests that take the GPU
#      path when CUDA is there (positions/log-probs on long videos, bf16-compute precision);
#   2. vLLM's positions and log-probs against the trainer's on a long-video prompt, for
#      Qwen2.5-VL, a Qwen3 text LM and Qwen3-VL (bench/gpu_vllm_check.py: 64 frames of a
#      10-minute clip, 18.75 s per temporal patch; Qwen2.5-VL's figures print first);
#   3. the scale figures (issue 12): 3B-shaped MR-SP vs naive step time and peak memory at
#      64/256/512 frames and the largest frame count each fits on one GPU, and the bf16 vs fp32
#      tiled log-prob kernel at 7B width (bench/gpu_scale_check.py, ~3 min).
# Every part prints its figures; a part that cannot run (no vLLM on the machine, say) says why
# and the rest still runs. The exit code is the number of failed parts.
#
# On the device tool: run bench/gpu_wheels.sh here first (it fetches the Python packages the
# lent machine's image lacks into .whl/), then `run` with carry [".whl"] and the command
#   bash bench/gpu_check.sh
# Files land in $OUT (the device tool's folder) or .tmp/gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-.tmp/gpu_check}
mkdir -p "$OUT_DIR" .tmp
export PYTHONUNBUFFERED=1 TMPDIR="$PWD/.tmp" RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true \
       HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD" || echo "gpu_check: carried wheels did not install"
else
    export PYTHONPATH="$PWD"
fi
failed=0
part() {  # part NAME TIMEOUT CMD...: run one part, keep its log, count a failure
    local name=$1 limit=$2; shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: rc=$rc"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
$PY - <<'PY' 2>&1 | tee "$OUT_DIR/versions.txt"
import importlib
for name in ("torch", "transformers", "vllm", "flash_attn", "torchvision", "av", "cv2"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as err:  # report, do not stop: the parts that need it say so
        print(f"{name} missing ({type(err).__name__}: {str(err)[:80]})")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
part tests 220 $PY -m pytest -q -p no:cacheprovider -rs -o addopts="" \
    tests/test_grpo_vllm.py tests/test_sequence_parallel_vllm.py tests/test_eval_engines.py \
    "tests/test_model_kit.py::test_patch_layout_equals_transformers_video_processor" \
    tests/test_positions.py tests/test_precision.py
part vllm_positions 210 $PY bench/gpu_vllm_check.py --frames 64 --seconds 600  # 3 families, one engine each
part scale 150 $PY bench/gpu_scale_check.py --frames 64,256,512 --budget-s 115
echo "gpu_check: $failed part(s) failed"
exit "$failed"
