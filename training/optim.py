"""Optimiser, learning-rate schedule and gradient clipping shared by the SFT and GRPO trainers.

- `build_adamw`: torch AdamW over the trainable parameters, with weight decay only on matrices
  (biases, norms and other 1-D parameters are not decayed - the usual transformer recipe).
- `warmup_cosine`: a LambdaLR that rises linearly for `warmup_steps` optimizer steps and then
  follows a half cosine down towards `min_lr_ratio * lr` at `total_steps`.
- `clip_grad_norm`: clips in place and returns the global norm as a float, for plain tensors and
  for FSDP2 (DTensor) gradients alike (the norm is reduced across ranks).

Everything here works on an FSDP2-sharded model the same as on a plain one: call it after
`training.distributed.shard_model`, never before (the parameters change identity when sharded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter that requires a gradient."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and non-decayed 1-D parameters (biases, norms)."""
    decay, no_decay = [], []
    for _, p in trainable_parameters(model):
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_adamw(model: nn.Module, lr: float, weight_decay: float = 0.0,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (fused kernels on CUDA)."""
    on_cuda = any(p.is_cuda for _, p in trainable_parameters(model))
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             fused=True if on_cuda else None)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr used by optimizer step `step` (0-based).

    Warm-up: (step + 1) / warmup_steps, so the first step already trains (HF's schedule spends
    step 0 at lr 0). Then a half cosine from 1 towards `min_lr_ratio`, which it would reach one
    step after the last (so the last step still learns when min_lr_ratio is 0).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `warmup_cosine_factor`; call `.step()` once after each optimizer step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps {warmup_steps} must be within [0, total_steps={total_steps}]")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio {min_lr_ratio} must be within [0, 1]")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_factor(s, warmup_steps, total_steps, min_lr_ratio)
    )


def warmup_steps_for(total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> int:
    """Explicit `warmup_steps` when > 0, else `warmup_ratio` of the run (rounded up)."""
    if warmup_steps > 0:
        return min(warmup_steps, total_steps)
    return min(total_steps, math.ceil(warmup_ratio * total_steps))


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip gradients to `max_norm` (<= 0: measure only) and return the total L2 norm.

    With FSDP2 the gradients are DTensor shards; torch's clip_grad_norm_ reduces their norm
    across ranks and the result is materialised with `full_tensor()`.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
