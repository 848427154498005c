#!/usr/bin/env bash
# Fetch, on this (CPU) machine, the wheels bench/gpu_check.sh needs on the lent GPU machine whose
# image (Python 3.12, torch 2.11 CUDA, transformers 5.17, torchvision) lacks them, into .whl/
# (ignored by git; the device tool carries at most 64 MiB). vLLM itself (~400 MB with its CUDA
# kernels) does not fit the carry limit: where the image has no vLLM, the vLLM parts report it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for pkg in av openai pydantic pydantic-core annotated-types typing-inspection sniffio distro jiter \
           jsonschema jsonschema-specifications referencing rpds-py; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pkg" || echo "gpu_wheels: $pkg not fetched"
done
du -sh .whl
