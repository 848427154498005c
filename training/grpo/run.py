"""`train_grpo`: the one entry point of GRPO training (the `longrl train grpo` command - also the
KubeRay step's entrypoint - and Python callers all use it).

    cfg = load_config(GRPOConfig, "grpo.yaml", ["num_workers=8", "parallel.sp_size=4"])
    summary = train_grpo(cfg, MODEL_DIR, DATA_DIR, OUT)

One worker (the default) trains in this process (`GRPOTrainer`). `num_workers > 1`, or
`launcher=ray`, runs the dp x sp trainer (`ParallelGRPOTrainer`, dp = num_workers / sp_size) in
worker processes: Ray Train's (a local Ray, or the cluster at RAY_ADDRESS) or, with
`launcher=local`, the processes torchrun started, each of which calls this function. The output
folder is the same either way. Every combination that cannot start is refused by
`check_launch` before any process or model is started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.grpo.config import GRPOConfig


def launch_environment_problems(cfg: GRPOConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """What the process environment says against the launch (torchrun sets WORLD_SIZE)."""
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    launcher = cfg.launcher if cfg.launcher != "auto" else ("local" if cfg.num_workers == 1 else "ray")
    if launcher == "ray":
        return [] if world == 1 else [
            f"WORLD_SIZE={world}: this is one of torchrun's processes, and Ray Train would start "
            f"{cfg.num_workers} more from each; under torchrun use launcher=local"]
    if world == cfg.num_workers:
        return []
    if cfg.num_workers == 1:
        return [f"WORLD_SIZE={world} (torchrun) but num_workers=1: set num_workers={world} launcher=local"]
    return [f"launcher=local with num_workers={cfg.num_workers} runs inside the processes torchrun starts "
            f"(torchrun --nproc-per-node {cfg.num_workers} ...), but WORLD_SIZE={world}; "
            "or use launcher=ray"]


def check_launch(cfg: GRPOConfig, environ: Mapping[str, str] = os.environ) -> GRPOConfig:
    """Raise ValueError naming the keys for a config or launch that cannot work; starts nothing."""
    cfg.check()
    problems = cfg.launch_problems() or launch_environment_problems(cfg, environ)
    if problems:
        raise ValueError("; ".join(problems))
    return cfg


def announce_resume(cfg: GRPOConfig, out_dir: str | Path) -> None:
    """The resume rule (common.config.check_resume: only run length, checkpointing, logging and
    endpoints may change), then "resuming from step N" on the console (rank 0)."""
    import sys

    from common.config import check_resume
    from training.checkpoint import PREFIX, latest_checkpoint

    found = latest_checkpoint(out_dir) if cfg.resume else None
    if found is None:
        return
    check_resume(cfg, out_dir, "resume=false")
    if os.environ.get("RANK", "0") == "0":
        print(f"resuming from step {int(found.name[len(PREFIX):])} ({found})", file=sys.stderr, flush=True)


def train_grpo(cfg: GRPOConfig, model_dir: str | Path, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Run GRPO as `cfg` says (one process, or num_workers workers); returns OUT/summary.json's
    content. Started again on the same OUT, a run resumes from its newest complete checkpoint."""
    check_launch(cfg)
    announce_resume(cfg, out_dir)
    if not cfg.multi_process:
        from training.grpo.trainer import GRPOTrainer

        return GRPOTrainer(cfg, model_dir, data_dir, out_dir).train()
    from training.sequence_parallel.run import train_grpo_parallel

    return train_grpo_parallel(cfg, model_dir, data_dir, out_dir)
