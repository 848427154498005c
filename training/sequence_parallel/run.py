"""Multi-process GRPO: `train_grpo_parallel` (the multi-worker half of training.grpo.run.train_grpo,
which the CLI and the KubeRay entrypoint call) and `grpo_worker` (what every training process
runs; Ray Train ships it by module path).

The config says it all: `num_workers`, `launcher`, `cpus_per_worker`, `device` and `parallel.*`
(dp = num_workers / parallel.sp_size). `launcher="ray"` (the default for more than one worker)
runs the workers with Ray Train's TorchTrainer (a local Ray, or the cluster at RAY_ADDRESS, e.g. a
KubeRay RayJob); "local" runs this process as one worker of a job started by torchrun. The
process group is gloo on CPU and NCCL on GPUs (training.distributed).
"""

from __future__ import annotations

import dataclasses
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
    from transformers.utils import logging as hf_logging

    from training.distributed import init_distributed, teardown
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer

    hf_logging.disable_progress_bar()  # per-file load/save bars would bury the training progress
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
    """What `grpo_worker` reads: plain data (Ray ships it to every worker). `parallel` is the
    layout the workers use (and record in OUT/config.yaml)."""
    cfg = dataclasses.replace(cfg, parallel=parallel)
    return {"cfg": to_dict(cfg), "parallel": to_dict(parallel), "model_dir": str(Path(model_dir).resolve()),
            "data_dir": str(Path(data_dir).resolve()), "out_dir": str(Path(out_dir).resolve()),
            "use_gpu": use_gpu, "cpus_per_worker": cpus_per_worker, "report_to_ray": report_to_ray}


def train_grpo_parallel(cfg: GRPOConfig, model_dir: str | Path, data_dir: str | Path,
                        out_dir: str | Path) -> dict[str, Any]:
    """Run GRPO on `cfg.num_workers` processes (dp = num_workers / parallel.sp_size); returns
    OUT/summary.json. Call `training.grpo.run.train_grpo` (it checks the launch first)."""
    from training.distributed import launch
    from training.grpo.run import check_launch
    from training.model_io import check_model_dir
    from training.records import load_records

    check_launch(cfg)
    # What fails the same way on every worker is found here, before workers (and Ray) start.
    check_model_dir(model_dir)
    load_records(data_dir, cfg.data.split, cfg.data.video_root, cfg.data.answer_types, cfg.data.max_records)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    launcher = "ray" if cfg.launcher == "auto" else cfg.launcher
    use_gpu = cfg.wants_gpu()
    payload = worker_payload(cfg, cfg.parallel, model_dir, data_dir, out, use_gpu, cfg.cpus_per_worker,
                             report_to_ray=launcher == "ray")
    launch(grpo_worker, payload, num_workers=cfg.num_workers, use_gpu=use_gpu, launcher=launcher,
           storage_dir=out / "ray", name="grpo", cpus_per_worker=cfg.cpus_per_worker)
    return json.loads((out / SUMMARY_FILE).read_text())
