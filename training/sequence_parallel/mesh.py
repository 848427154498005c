"""Data-parallel x sequence-parallel device mesh and FSDP2 sharding of the policy/reference.

Ranks are laid out dp-major: rank = dp_index * sp_size + sp_index, so an SP group is a run of
neighbouring ranks (the same node / NVLink island on GPU). `init_parallel` builds the
torch.distributed DeviceMesh ("dp", "sp") on top of the process group the launcher created
(torchrun, Ray Train, or `local_group` in tests): gloo on CPU, NCCL on GPU.

FSDP2 (`fully_shard`) wraps each decoder layer and each vision block, then the LogProbModel as
root. Where parameters are sharded is a choice (`ParallelConfig.shard_over`):
- "dp_sp" (default): over all dp x sp ranks. Memory per rank ~ model / world; needed for the
  long-video case of one node with SP 8 and DP 1, where sharding over DP alone would shard nothing.
- "dp": over the DP ranks only, replicated (HSDP) across each SP group: fewer, smaller
  collectives when DP is large.
Both give the single-process gradient: every SP rank computes the same loss and FSDP's mean over
the SP ranks undoes the SP-fold sum of the log-prob gather's backward (policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from training.mm_batch import base_model
from training.sequence_parallel.policy import LogProbModel


@dataclass
class ParallelConfig:
    """How training is spread over processes."""

    sp_size: int = 1  # ranks that split one sequence (Ulysses group); must divide the world size
    fsdp: bool = True  # shard parameters, gradients and optimizer state with FSDP2 (world > 1)
    shard_over: Literal["dp_sp", "dp"] = "dp_sp"  # FSDP shard dims (see module docstring)
    activation_checkpointing: bool = False  # recompute decoder layers / vision blocks in backward
    attention: str = "sdpa"  # kernel inside Ulysses: sdpa | flash_attention_2 (GPU)
    token_chunk: int = 2048  # log-prob tiles: scored tokens per tile
    vocab_chunk: int = 32768  # log-prob tiles: vocabulary entries per tile
    reference_cpu_offload: bool = False  # keep the frozen reference model's shards in CPU memory
    param_dtype: Literal["float32", "bfloat16"] = (
        "float32"  # FSDP compute dtype (grads reduced in fp32)
    )
    pack: bool = True  # rows packed end to end with varlen attention (no [B, 1, L, L] mask, no padding compute)
    attention_layout: Literal["auto", "ulysses", "kv_gather"] = (
        "auto"  # auto: Ulysses up to SP = query heads
    )
    kv_block: int = 1024  # kv_gather layout: keys per attention tile
    # GRPO: sample (hf engine) and encode videos on an unsharded per-rank copy of the policy
    # (true), or through the sharded policy in lockstep (false or unset: no copy, lockstep.py;
    # offline embeddings and dynamic sampling over data-parallel replicas included)
    rollout_replica: bool | None = None


@dataclass
class ParallelState:
    """This process's place in the dp x sp layout."""

    world_size: int
    rank: int
    dp_size: int
    dp_rank: int
    sp_size: int
    sp_rank: int
    device: torch.device
    mesh: DeviceMesh | None = None  # ("dp", "sp"); None for a single process
    sp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_parallel(sp_size: int = 1, device: torch.device | None = None) -> ParallelState:
    """The dp x sp layout over the already initialised default process group (or one process)."""
    device = device or default_device()
    if not (dist.is_available() and dist.is_initialized()):
        if sp_size != 1:
            raise ValueError(
                f"sp_size={sp_size} needs torch.distributed initialised with >= {sp_size} ranks"
            )
        return ParallelState(1, 0, 1, 0, 1, 0, device)
    world, rank = dist.get_world_size(), dist.get_rank()
    if sp_size < 1 or world % sp_size:
        raise ValueError(f"sp_size={sp_size} does not divide the world size {world}")
    dp_size = world // sp_size
    mesh = init_device_mesh(device.type, (dp_size, sp_size), mesh_dim_names=("dp", "sp"))
    return ParallelState(
        world_size=world,
        rank=rank,
        dp_size=dp_size,
        dp_rank=rank // sp_size,
        sp_size=sp_size,
        sp_rank=rank % sp_size,
        device=device,
        mesh=mesh,
        sp_group=mesh.get_group("sp"),
        dp_group=mesh.get_group("dp"),
    )


def fsdp_mesh(state: ParallelState, shard_over: str) -> DeviceMesh:
    """1-D mesh over every rank ("dp_sp"), or a 2-D (replicate=sp, shard=dp) HSDP mesh ("dp")."""
    ranks = torch.arange(state.world_size)
    if shard_over == "dp_sp":
        return DeviceMesh(state.device.type, ranks, mesh_dim_names=("dp_sp",))
    if shard_over == "dp":
        layout = ranks.view(state.dp_size, state.sp_size).T.contiguous()
        return DeviceMesh(state.device.type, layout, mesh_dim_names=("sp_replicate", "dp_shard"))
    raise ValueError(f"shard_over must be 'dp_sp' or 'dp', got {shard_over!r}")


def _fsdp_kwargs(state: ParallelState, cfg: ParallelConfig, offload: bool) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    dtype = torch.bfloat16 if cfg.param_dtype == "bfloat16" else None
    return {
        "mesh": fsdp_mesh(state, cfg.shard_over),
        "mp_policy": MixedPrecisionPolicy(
            param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None
        ),
        "offload_policy": CPUOffloadPolicy(pin_memory=state.device.type == "cuda")
        if offload
        else OffloadPolicy(),
    }


def shard_log_prob_model(
    lpm: LogProbModel, state: ParallelState, cfg: ParallelConfig, offload: bool = False
) -> LogProbModel:
    """FSDP2 over decoder layers, vision blocks, then the LogProbModel as root (its forward and
    `generate` unshard the embeddings / lm_head / norms it uses)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    kwargs = _fsdp_kwargs(state, cfg, offload)
    inner = base_model(lpm.model)
    for layer in inner.language_model.layers:
        fully_shard(layer, **kwargs)
    for block in inner.visual.blocks if hasattr(inner, "visual") else ():  # text-only LMs have none
        fully_shard(block, **kwargs)
    fully_shard(lpm, **kwargs)
    register_fsdp_forward_method(lpm, "generate")
    register_fsdp_forward_method(lpm, "encode_videos")
    register_fsdp_forward_method(lpm, "run_unsharded")
    return lpm


def build_log_prob_model(
    model: torch.nn.Module,
    state: ParallelState,
    cfg: ParallelConfig,
    trainable: bool = True,
    weights: str | Path | None = None,
) -> LogProbModel:
    """Wrap (and, with more than one rank, shard) a Qwen2.5-VL model for scoring/training.
    `trainable=False` is the frozen reference: no activation checkpointing, no grads, optional
    CPU offload of its shards. `weights`: `model` was built on the meta device
    (training.model_loading.meta_model) and each rank loads only its shards from this folder
    after sharding - no rank ever holds the full model."""
    offload = cfg.reference_cpu_offload and not trainable
    if weights is None:
        model.to(state.device)
    if trainable and cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    lpm = LogProbModel(
        model,
        state.sp_group if state.sp_size > 1 else None,
        cfg.token_chunk,
        cfg.vocab_chunk,
        cfg.attention,
        pack=cfg.pack,
        layout=cfg.attention_layout,
        kv_block=cfg.kv_block,
    )
    if cfg.fsdp and state.distributed:
        shard_log_prob_model(lpm, state, cfg, offload=offload)
    if weights is not None:
        from training.model_loading import load_sharded_weights

        load_sharded_weights(model, weights, "cpu" if offload else state.device)
    return lpm


def iter_full_tensors(lpm: LogProbModel, device: torch.device | str | None = None):
    """(name, full tensor) for every entry of the wrapped model's state dict, in the Hugging Face
    naming, one tensor at a time (vLLM weight sync streams these without holding the whole model).
    Sharded entries are all-gathered, so every rank must iterate in step."""
    from torch.distributed.tensor import DTensor

    for name, value in lpm.model.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        yield name, full.detach().to(device) if device is not None else full.detach()


def full_state_dict(lpm: LogProbModel) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU, on every rank (collective when sharded)."""
    return dict(iter_full_tensors(lpm, "cpu"))
