"""Entry points of multi-process GRPO: `train_grpo_parallel` (what a CLI or KFP component calls)
and `grpo_worker` (what every training process runs; Ray Train ships it by module path).

    train_grpo_parallel(cfg, ParallelConfig(sp_size=2), model_dir, data_dir, out_dir,
                        num_workers=2, launcher="ray")

`launcher="ray"` runs the workers with Ray Train's TorchTrainer (a local Ray, or the cluster at
RAY_ADDRESS, e.g. a KubeRay RayJob); "local" runs this process as one worker of a job started by
torchrun. The process group is gloo on CPU and NCCL on GPUs (training.distributed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config import from_dict, to_dict
from training.grpo.config import GRPOConfig
from training.sequence_parallel.mesh import ParallelConfig

SUMMARY_FILE = "summary.json"


def _ray_report(step: int, metrics: dict[str, float]) -> None:
    import ray.train

    ray.train.report({"step": step, **{k: v for k, v in metrics.items() if isinstance(v, int | float)}})


def grpo_worker(config: dict[str, Any]) -> None:
    """One training process: join the process group, run the dp x sp GRPO trainer, leave."""
    import torch

    from training.distributed import init_distributed, teardown
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer

    cfg = from_dict(GRPOConfig, config["cfg"])
    parallel = from_dict(ParallelConfig, config["parallel"])
    ctx = init_distributed(use_gpu=config["use_gpu"])
    if ctx.device.type == "cpu":
        torch.set_num_threads(config["cpus_per_worker"])
    try:
        trainer = ParallelGRPOTrainer(cfg, config["model_dir"], config["data_dir"], config["out_dir"], parallel,
                                      on_step=_ray_report if config["report_to_ray"] else None, device=ctx.device)
        trainer.train()
    finally:
        teardown(ctx)


def worker_payload(cfg: GRPOConfig, parallel: ParallelConfig, model_dir: str | Path, data_dir: str | Path,
                   out_dir: str | Path, use_gpu: bool = False, cpus_per_worker: int = 1,
                   report_to_ray: bool = True) -> dict[str, Any]:
    """What `grpo_worker` reads: plain data (Ray ships it to every worker)."""
    return {"cfg": to_dict(cfg), "parallel": to_dict(parallel), "model_dir": str(Path(model_dir).resolve()),
            "data_dir": str(Path(data_dir).resolve()), "out_dir": str(Path(out_dir).resolve()),
            "use_gpu": use_gpu, "cpus_per_worker": cpus_per_worker, "report_to_ray": report_to_ray}


def train_grpo_parallel(cfg: GRPOConfig, parallel: ParallelConfig, model_dir: str | Path, data_dir: str | Path,
                        out_dir: str | Path, num_workers: int, launcher: str = "ray", use_gpu: bool = False,
                        cpus_per_worker: int = 1) -> dict[str, Any]:
    """Run GRPO on `num_workers` processes (dp = num_workers / sp); returns OUT/summary.json.
    Rerunning with the same OUT resumes from its newest complete checkpoint (cfg.resume)."""
    from training.distributed import launch

    cfg.check()
    if num_workers % parallel.sp_size:
        raise ValueError(f"parallel.sp_size={parallel.sp_size} does not divide num_workers={num_workers}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    payload = worker_payload(cfg, parallel, model_dir, data_dir, out, use_gpu, cpus_per_worker, launcher == "ray")
    launch(grpo_worker, payload, num_workers=num_workers, use_gpu=use_gpu, launcher=launcher,
           storage_dir=out / "ray", name="grpo", cpus_per_worker=cpus_per_worker)
    return json.loads((out / SUMMARY_FILE).read_text())
