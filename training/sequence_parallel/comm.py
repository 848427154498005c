"""Autograd-aware collectives for Ulysses sequence parallelism (gloo on CPU, NCCL on GPU).

- `seq_to_heads` / `heads_to_seq`: the two all-to-alls around attention. Slices may differ in
  length by a token (no padding), so they use `all_to_all_single` with per-rank split sizes;
  the backward of an all-to-all is the all-to-all with the split sizes swapped.
- `gather_rows`: all-gather of per-rank row blocks of different lengths (response log-probs,
  video embeddings). Forward pads each block to the longest and uses one `all_gather_single`;
  backward reduce-scatters (sums) the gradients of every rank's copy, the adjoint of a gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.sequence_parallel.layout import SequenceSplit


@dataclass(frozen=True)
class SPContext:
    """One forward pass's sequence-parallel layout, handed to the attention function."""

    group: dist.ProcessGroup
    rank: int
    split: SequenceSplit

    @property
    def size(self) -> int:
        return len(self.split.lengths)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = flat.new_empty(sum(recv))
        dist.all_to_all_single(out, flat.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        back = grad.new_empty(sum(ctx.send))
        dist.all_to_all_single(back, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return back, None, None, None


def seq_to_heads(x: torch.Tensor, sp: SPContext) -> torch.Tensor:
    """[B, H, L_local, D] (all heads, this rank's positions) -> [B, H/sp, L, D] (this rank's
    head group, every position in rank order)."""
    b, h, n, d = x.shape
    hl = h // sp.size
    send_blocks = x.reshape(b, sp.size, hl, n, d).transpose(0, 1).reshape(-1)
    send = [b * hl * n * d] * sp.size
    recv = [b * hl * m * d for m in sp.split.lengths]
    got = _AllToAll.apply(send_blocks, send, recv, sp.group)
    parts = [p.view(b, hl, m, d) for p, m in zip(got.split(recv), sp.split.lengths, strict=True)]
    return torch.cat(parts, dim=2)


def heads_to_seq(y: torch.Tensor, sp: SPContext) -> torch.Tensor:
    """[B, L, H/sp, D] (attention output of this rank's head group) -> [B, L_local, H, D]."""
    b, _, hl, d = y.shape
    n = sp.split.lengths[sp.rank]
    parts = y.split(list(sp.split.lengths), dim=1)
    send_blocks = torch.cat([p.reshape(-1) for p in parts])
    send = [b * m * hl * d for m in sp.split.lengths]
    recv = [b * n * hl * d] * sp.size
    got = _AllToAll.apply(send_blocks, send, recv, sp.group)
    return got.view(sp.size, b, n, hl, d).permute(1, 2, 0, 3, 4).reshape(b, n, sp.size * hl, d)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], rank: int, group) -> torch.Tensor:
        ctx.counts, ctx.rank, ctx.group = counts, rank, group
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        out = x.new_empty((longest * len(counts), *x.shape[1:]))
        dist.all_gather_single(out, padded, group=group)
        blocks = out.view(len(counts), longest, *x.shape[1:])
        return torch.cat([blocks[i, :c] for i, c in enumerate(counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        counts, longest = ctx.counts, max(ctx.counts)
        padded = grad.new_zeros((len(counts), longest, *grad.shape[1:]))
        for i, g in enumerate(grad.split(counts)):
            padded[i, : g.shape[0]] = g
        mine = grad.new_empty((longest, *grad.shape[1:]))
        dist.reduce_scatter_single(mine, padded.view(-1, *grad.shape[1:]), group=ctx.group)
        return mine[: counts[ctx.rank]], None, None, None


def gather_rows(x: torch.Tensor, counts: list[int], rank: int, group) -> torch.Tensor:
    """Concatenate every rank's [counts[r], ...] block in rank order (all ranks get all rows).
    `counts` must be known on every rank (it is derived from the full batch, never exchanged)."""
    if x.shape[0] != counts[rank]:
        raise ValueError(f"rank {rank} holds {x.shape[0]} rows but the plan says {counts[rank]}")
    if max(counts) == 0:
        return x
    return _GatherRows.apply(x, counts, rank, group)
