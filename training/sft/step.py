"""The SFT loss of one micro-batch: summed negative log-likelihood of the response tokens.

Inputs are built exactly as the GRPO rollout and the evaluation build them (training.mm_batch):
left padding, 3-D M-RoPE positions from `rope_positions`, video embeddings scattered at the
`<|video_pad|>` positions, and log-probs through the LM head in chunks. The trainer scales each
micro-batch's sum by world_size / (response tokens of the whole global batch), which makes the
optimizer step the same for any split of the global batch over workers and micro-batches (FSDP
averages gradients over ranks, hence the world_size factor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from training.mm_batch import Batch, collate, hidden_states, token_logprobs
from training.sft.data import LoadedExample


def make_batch(rows: Sequence[LoadedExample], pad_id: int, device: torch.device) -> Batch:
    return collate([r.encoded for r in rows], [r.video for r in rows], pad_id).to(device)


def response_nll(model, batch: Batch, chunk_size: int) -> torch.Tensor:
    """Sum over the batch of -log p(response token | everything before it)."""
    hidden = hidden_states(model, batch)
    logprobs, _ = token_logprobs(model, hidden, batch.input_ids, batch.loss_mask, chunk_size=chunk_size)
    return -logprobs.sum()


def autocast_context(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def forward_backward(runner, batch: Batch, scale: float, chunk_size: int, bf16: bool) -> float:
    """Backpropagate `scale * NLL(batch)` (scale 0 for a pass that only keeps FSDP ranks in
    step) and return the unscaled NLL sum."""
    with autocast_context(batch.input_ids.device, bf16):
        nll = runner(response_nll, batch, chunk_size)
    (nll * scale).backward()
    return float(nll.detach())


@torch.no_grad()
def nll_sum(runner, batch: Batch, chunk_size: int, bf16: bool) -> float:
    with autocast_context(batch.input_ids.device, bf16):
        return float(runner(response_nll, batch, chunk_size))
