"""Container images of the components (built from docker/Dockerfile.cpu and docker/Dockerfile.gpu,
see docs/pipeline.md). Override at compile time with LONGRL_IMAGE / LONGRL_GPU_IMAGE, e.g. to
point at your registry: `LONGRL_IMAGE=registry.example.com/longrl:0.1.0 longrl pipeline compile`.
The images contain longrl and kfp, so components install nothing at run time."""

import os

CPU_IMAGE = os.environ.get("LONGRL_IMAGE", "ghcr.io/longrl/longrl:0.1.0")
GPU_IMAGE = os.environ.get("LONGRL_GPU_IMAGE", "ghcr.io/longrl/longrl-gpu:0.1.0")
# Passed to every @dsl.component: the image already has kfp (no pip install at run time).
CPU = {"base_image": CPU_IMAGE, "install_kfp_package": False}
GPU = {"base_image": GPU_IMAGE, "install_kfp_package": False}
