"""Entrypoint of a multi-node GRPO RayJob: `python -m components.grpo_ray --model M --data D --out O
--workers N [--use-gpu] [--launcher ray|local] [key=value ...]`.

A thin spelling of `longrl train grpo --model M --data D --out O num_workers=N launcher=ray
device=cuda [key=value ...]`: both call `training.grpo.run.train_grpo`, so there is one way to
launch GRPO. Inside a RayJob RAY_ADDRESS is set and Ray Train joins the job's cluster. `parallel.*`
overrides (e.g. parallel.sp_size=4) are GRPOConfig's own keys.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def worker_overrides(workers: int, use_gpu: bool, launcher: str) -> list[str]:
    """The GRPOConfig keys that this entrypoint's flags stand for (without --use-gpu, `device`
    stays as configured: auto picks GPUs only where this command runs on one)."""
    return [f"num_workers={workers}", f"launcher={launcher}", *(["device=cuda"] if use_gpu else [])]


def build_configs(overrides: list[str]) -> tuple[Any, Any]:
    """(GRPOConfig, its `parallel` section) from key=value overrides."""
    from common.config import load_config
    from training.grpo.config import GRPOConfig

    cfg = load_config(GRPOConfig, None, overrides)
    return cfg, cfg.parallel


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m components.grpo_ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, required=True, help="training processes (one per GPU)")
    parser.add_argument("--use-gpu", action="store_true", help="GPU workers (NCCL): device=cuda")
    parser.add_argument("--launcher", default="ray", choices=["ray", "local"])
    parser.add_argument("overrides", nargs="*", help="GRPOConfig key=value, parallel.* included")
    args = parser.parse_args(argv)
    from training.grpo.run import train_grpo

    # The flags come last: they win over a num_workers/launcher/device among the overrides.
    cfg, _ = build_configs([*args.overrides, *worker_overrides(args.workers, args.use_gpu, args.launcher)])
    summary = train_grpo(cfg, args.model, args.data, args.out)
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":  # pragma: no cover - the RayJob entrypoint
    main()
