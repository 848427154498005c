"""torch.distributed set-up, FSDP2 sharding of Qwen2.5-VL, and launching workers with Ray Train.

One training function runs unchanged in three settings:

- one process, no process group (the default; CPU tests, a single GPU);
- N processes started by Ray Train (`launch(..., launcher="ray")`: `TorchTrainer` creates the
  workers and the process group - gloo on CPU, NCCL on GPUs - on one node or a Ray cluster);
- N processes started by torchrun (`WORLD_SIZE` etc. in the environment; `launcher="local"`).

Inside the function call `init_distributed()` first and `teardown(ctx)` last.

Sharding (`shard_model`): every module whose class is listed in the model's `_no_split_modules`
(for Qwen2.5-VL the decoder layers and the vision blocks) becomes its own FSDP2 unit
(`fully_shard`), and a `ModelRunner` wrapping the whole model is the root unit. The root owns
the embeddings, the final norm, the LM head and the vision merger. Callers run every
computation through the runner - `runner(fn, *args)` calls `fn(model, *args)` inside the root's
forward - so FSDP's hooks gather the root's parameters even though longrl's forward passes
(training.mm_batch.hidden_states, token_logprobs, generation) call submodules directly rather
than `model.forward`. Without sharding the runner is a transparent wrapper.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process stands: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False  # True when init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(use_gpu: bool | None, local_rank: int) -> torch.device:
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("use_gpu was requested but CUDA is not available")
    try:  # under Ray Train the worker's GPU is chosen by Ray
        from ray.train.torch import get_device

        device = get_device()
    except Exception:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def init_distributed(use_gpu: bool | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join (or create) the process group and pick the device.

    - A process group that already exists (Ray Train made it) is used as it is.
    - `WORLD_SIZE` > 1 in the environment (torchrun) creates one: NCCL on GPUs, gloo on CPU.
    - Otherwise this is a single process and no group is created.
    `use_gpu=None` means "a GPU when CUDA is available".
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, _pick_device(use_gpu, local), created_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=_pick_device(use_gpu, 0))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(use_gpu, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, device, created_group=True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if `init_distributed` created it (Ray Train owns its own)."""
    if ctx.created_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few floats over ranks (float64, so counts stay exact)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class ModelRunner(nn.Module):
    """Root module for FSDP2: `runner(fn, *args, **kwargs)` returns `fn(runner.model, ...)`.

    The root unit's parameters (embeddings, LM head, final norm, vision merger) are gathered
    for the whole call and again for its backward, whatever submodules `fn` calls.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def shard_unit_classes(model: nn.Module) -> set[str]:
    """Class names that become their own FSDP unit: the model's `_no_split_modules`
    (Qwen2.5-VL: Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(model).__name__} declares no _no_split_modules to shard by")
    return names


def shard_model(model: nn.Module, ctx: DistContext, param_dtype: torch.dtype | None = None,
                reshard_after_forward: bool = True) -> ModelRunner:
    """Wrap `model` in a ModelRunner, sharded with FSDP2 when there is more than one rank.

    Call after freezing parameters and enabling gradient checkpointing, and before building the
    optimizer. `param_dtype` (e.g. bfloat16) runs the sharded compute in that dtype while the
    sharded master weights and gradient reduction stay float32 (FSDP2 MixedPrecisionPolicy).
    """
    runner = ModelRunner(model)
    if not ctx.distributed:
        return runner
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    units = shard_unit_classes(model)
    for module in list(model.modules()):
        if type(module).__name__ in units:
            fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(runner, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return runner


def set_gradient_sync(runner: nn.Module, sync: bool) -> None:
    """Skip (False) or do (True) FSDP2's gradient reduce-scatter after the next backward: during
    gradient accumulation only the last micro-batch needs it. A no-op without FSDP."""
    if hasattr(runner, "set_requires_gradient_sync"):
        runner.set_requires_gradient_sync(sync)


def launch(fn: Callable[[dict], Any], config: dict, num_workers: int = 1, use_gpu: bool = False,
           launcher: str = "auto", storage_dir: str | Path | None = None, name: str = "train",
           cpus_per_worker: int = 1) -> None:
    """Run `fn(config)` on `num_workers` processes.

    launcher "local": in this process (one worker, or one of torchrun's workers);
    "ray": Ray Train `TorchTrainer` workers (connects to `RAY_ADDRESS` when set, otherwise
    starts a local Ray); "auto": "local" for one worker, "ray" for more.
    `fn` must be importable by module path (Ray ships it to the workers by reference).
    """
    if launcher == "auto":
        launcher = "local" if num_workers == 1 else "ray"
    if launcher == "local":
        if num_workers != 1 and int(os.environ.get("WORLD_SIZE", "1")) != num_workers:
            raise ValueError(f"launcher 'local' runs one worker per process; got num_workers={num_workers} "
                             "(use launcher='ray' or start the processes with torchrun)")
        fn(config)
        return
    if launcher != "ray":
        raise ValueError(f"launcher {launcher!r} is not one of auto, local, ray")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started, was_connected = False, ray.is_initialized()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=max(num_workers * cpus_per_worker, 1), include_dashboard=False,
                     log_to_driver=True)
            started = True
    try:
        trainer = TorchTrainer(
            fn,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=name, storage_path=str(Path(storage_dir or ".").resolve())),
        )
        _fit_interruptibly(trainer, ray, shutdown_on_interrupt=not was_connected)
    finally:
        if started:
            ray.shutdown()


def _fit_interruptibly(trainer: Any, ray: Any, shutdown_on_interrupt: bool) -> None:
    """`trainer.fit()` in a helper thread, so Ctrl-C reaches this (main) thread at once: Ray
    Train's own SIGINT handler waits on its controller, which never answers while the job waits
    for resources (e.g. GPUs that do not exist). On Ctrl-C the driver disconnects from Ray, which
    ends the job's actors and workers (complete checkpoints stay; the same --out resumes)."""
    import sys
    import threading

    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print("interrupted: stopping the Ray Train workers", file=sys.stderr, flush=True)
        if shutdown_on_interrupt:
            ray.shutdown()
        raise
    if "error" in outcome:
        raise outcome["error"]
