"""Run a function on N local processes joined in one torch.distributed group (tests, benchmarks).

`run_local_group(fn, world_size, *args)` starts the ranks with torch.multiprocessing, initialises
a gloo (CPU) or NCCL (GPU) process group on 127.0.0.1, calls fn(rank, world_size, *args) and
returns every rank's return value (saved with torch.save). With the default "fork" start method
the ranks inherit the parent's already imported torch/transformers, so a 4-rank world is up in
well under a second instead of re-importing for seconds per rank ("spawn" is available).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, backend: str, threads: int, out_dir: str,
               fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_local_group(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
                    start_method: str = "fork", threads_per_rank: int = 1) -> list[Any]:
    """fn(rank, world_size, *args) on `world_size` processes; their results in rank order.
    A failing rank raises here with its traceback (torch.multiprocessing.ProcessRaisedException)."""
    with tempfile.TemporaryDirectory(prefix="longrl_group_") as out_dir:
        mp.start_processes(
            _rank_main,
            args=(world_size, free_port(), backend, threads_per_rank, out_dir, fn, args),
            nprocs=world_size,
            start_method=start_method,
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
