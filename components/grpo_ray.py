"""Entrypoint of a multi-node GRPO RayJob: `python -m components.grpo_ray --model M --data D --out O
--workers N [--use-gpu] [key=value ...]`.

`longrl train grpo` runs one process; the multi-process trainer (dp x sp, FSDP2, Ulysses) is the
library call `training.sequence_parallel.run.train_grpo_parallel`, which this thin launcher makes
with Ray Train joining the job's cluster (RAY_ADDRESS is set inside a RayJob). Overrides starting
with `parallel.` go to `ParallelConfig` (e.g. parallel.sp_size=4), the rest to `GRPOConfig`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(GRPOConfig overrides, ParallelConfig overrides without the `parallel.` prefix)."""
    grpo, parallel = [], []
    for item in overrides:
        if item.startswith("parallel."):
            parallel.append(item[len("parallel."):])
        else:
            grpo.append(item)
    return grpo, parallel


def build_configs(overrides: list[str]) -> tuple[Any, Any]:
    from common.config import load_config
    from training.grpo.config import GRPOConfig
    from training.sequence_parallel.mesh import ParallelConfig

    grpo, parallel = split_overrides(overrides)
    return load_config(GRPOConfig, None, grpo), load_config(ParallelConfig, None, parallel)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m components.grpo_ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, required=True, help="training processes (one per GPU)")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--launcher", default="ray", choices=["ray", "local"])
    parser.add_argument("overrides", nargs="*", help="key=value (GRPOConfig) or parallel.key=value")
    args = parser.parse_args(argv)
    from training.sequence_parallel.run import train_grpo_parallel

    cfg, parallel = build_configs(args.overrides)
    summary = train_grpo_parallel(cfg, parallel, args.model, args.data, args.out, num_workers=args.workers,
                                  launcher=args.launcher, use_gpu=args.use_gpu)  # fmt: skip
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":  # pragma: no cover - the RayJob entrypoint
    main()
