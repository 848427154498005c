"""Checkpoints that are plain Hugging Face model folders plus the state to resume exactly.

    OUT/checkpoints/step-00000010/
        config.json, model.safetensors, generation_config.json, tokenizer files,
        preprocessor/video_preprocessor/chat-template files      <- from_pretrained / vLLM load this
        trainer_state/
            state.json        step, epoch, position in the epoch, world size, trainer extras
            optimizer/        torch.distributed.checkpoint (DCP) shards of the optimizer state
            master/           DCP shards of the float32 weights (only when the folder's weights
                              were saved in a lower precision, e.g. bfloat16 for serving)
            scheduler.pt      LR scheduler state
            rng/rank00000.pt  python, numpy, torch (and CUDA) RNG states of each rank
        COMPLETE              written last

A checkpoint is written into `.step-<8-digit step>.tmp` and renamed when every rank has finished, so
a crash mid-write never leaves a folder that looks complete. Older checkpoints beyond `keep_last`
are deleted after the new one is complete.

DCP stores each rank's shard and reshards on load, so a run saved with N workers can resume with
M. With several nodes, OUT must be on storage every node sees (a shared PVC). Model weights are
gathered to rank 0 for the HF folder (a 7B model in bfloat16 is ~15 GB of host memory there).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.distributed import DistContext, barrier
from training.model_io import DTYPES, save_model_folder

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "step-"
STATE_DIR = "trainer_state"
MARKER = "COMPLETE"


@dataclass
class TrainerState:
    """Where training stands. `step` counts optimizer steps done; `epoch` and `batch_in_epoch`
    locate the next global batch in the (seeded, reproducible) batch plan; `extra` holds
    trainer-specific JSON data (e.g. ids of examples skipped at run time)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


@contextlib.contextmanager
def _quiet_single_process_dcp():
    """DCP warns on every single-process save/load that it assumes one process; that is ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_model_state(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) weights on CPU: on rank 0 only when sharded (others get {})."""
    if not ctx.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_model_folder(model: nn.Module, tokenizer, out_dir: str | Path, source_dir: str | Path,
                        ctx: DistContext, dtype: str = "") -> Path:
    """Write `model` (sharded or not) as a Hugging Face folder; every rank must call it.

    `dtype` ("bfloat16", "float16", "float32"; "" keeps the parameters' dtype) is the precision
    of the saved weights and of `config.json`'s dtype.
    """
    out = Path(out_dir)
    state = full_model_state(model, ctx)
    if ctx.is_main:
        if dtype:
            target = DTYPES[dtype]
            state = {k: (v.to(target) if v.is_floating_point() else v) for k, v in state.items()}
        save_model_folder(model, tokenizer, out, source_dir=source_dir, state_dict=state)
        if dtype:
            cfg_path = out / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["dtype"] = dtype
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    barrier(ctx)
    return out


def _param_dtype(model: nn.Module) -> str:
    dtype = next(model.parameters()).dtype
    return {v: k for k, v in DTYPES.items()}[dtype]


def save_checkpoint(out_dir: str | Path, state: TrainerState, runner: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, tokenizer, source_dir: str | Path, ctx: DistContext,
                    keep_last: int = 2, save_dtype: str = "") -> Path:
    """Write checkpoint `state.step` (every rank calls this) and prune to the newest `keep_last`
    (0 keeps all). `runner` is the training.distributed.ModelRunner (sharded or not)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    root = checkpoints_root(out_dir)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f".{final.name}.tmp"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / STATE_DIR / "rng").mkdir(parents=True)
    barrier(ctx)
    model = runner.model
    lower_precision = bool(save_dtype) and save_dtype != _param_dtype(model)
    export_model_folder(model, tokenizer, tmp, source_dir, ctx, dtype=save_dtype if lower_precision else "")
    single = not ctx.distributed
    with _quiet_single_process_dcp():
        dcp.save({"optimizer": get_optimizer_state_dict(runner, optimizer)},
                 checkpoint_id=str(tmp / STATE_DIR / "optimizer"), no_dist=single)
        if lower_precision:  # keep the full-precision master weights for an exact resume
            dcp.save({"model": get_model_state_dict(runner)}, checkpoint_id=str(tmp / STATE_DIR / "master"),
                     no_dist=single)
    torch.save(rng_state(), tmp / STATE_DIR / "rng" / f"rank{ctx.rank:05d}.pt")
    barrier(ctx)
    if ctx.is_main:
        torch.save(scheduler.state_dict(), tmp / STATE_DIR / "scheduler.pt")
        state.world_size = ctx.world_size
        (tmp / STATE_DIR / "state.json").write_text(json.dumps(asdict(state), indent=1))
        (tmp / MARKER).write_text(str(state.step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep_last > 0:
            for old in list_checkpoints(out_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return final


def _optimizer_template(runner: nn.Module, optimizer: torch.optim.Optimizer, dcp_dir: Path) -> dict[str, Any]:
    """The optimizer state dict to load into, limited to the parameters that had state when the
    checkpoint was written: a parameter that had no gradient yet has no AdamW state, and must
    start its own step count from zero after the resume exactly as it would have without one."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    template = get_optimizer_state_dict(runner, optimizer)
    saved = FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
    template["state"] = {fqn: st for fqn, st in template["state"].items()
                         if all(f"optimizer.state.{fqn}.{k}" in saved for k in st)}
    return template


def read_trainer_state(path: str | Path) -> TrainerState:
    data = json.loads((Path(path) / STATE_DIR / "state.json").read_text())
    return TrainerState(**data)


def load_checkpoint(path: str | Path, runner: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ctx: DistContext, seed: int = 0) -> TrainerState:
    """Restore optimizer, scheduler, RNG and (when saved) master weights from a checkpoint.

    The model's weights themselves come from loading the checkpoint folder with
    `training.model_io.load_model` before sharding; call this after sharding and building the
    optimizer and scheduler. A rank without a saved RNG state (the world grew) is seeded from
    (seed, step, rank) instead.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} file)")
    state = read_trainer_state(path)
    sdir = path / STATE_DIR
    with _quiet_single_process_dcp():
        if (sdir / "master").is_dir():
            model_sd = {"model": get_model_state_dict(runner)}
            dcp.load(model_sd, checkpoint_id=str(sdir / "master"), no_dist=not ctx.distributed)
            set_model_state_dict(runner, model_sd["model"])
        optim_sd = {"optimizer": _optimizer_template(runner, optimizer, sdir / "optimizer")}
        dcp.load(optim_sd, checkpoint_id=str(sdir / "optimizer"), no_dist=not ctx.distributed)
    # strict=False: parameters without saved state (no gradient yet) stay without state.
    set_optimizer_state_dict(runner, optimizer, optim_sd["optimizer"], options=StateDictOptions(strict=False))
    scheduler.load_state_dict(torch.load(sdir / "scheduler.pt", weights_only=False))
    rng_file = sdir / "rng" / f"rank{ctx.rank:05d}.pt"
    if rng_file.is_file() and state.world_size == ctx.world_size:
        # weights_only=False: numpy's RNG state is a tuple with an ndarray; this is our own file.
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        seed_everything(seed + 1_000_003 * state.step + ctx.rank)
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
