"""Autograd-aware collectives for Ulysses sequence parallelism (gloo on CPU, NCCL on GPU).

- `seq_to_heads` / `heads_to_seq`: the two all-to-alls around Ulysses attention. Slices may
  differ in length by a token and head groups by a head (no padding), so they use
  `all_to_all_single` with per-rank split sizes; the backward of an all-to-all is the all-to-all
  with the split sizes swapped. KV heads go only to the ranks whose query heads read them.
- `gather_sequence`: the KV all-gather of the kv_gather (context-parallel) layout.
- `gather_rows`: all-gather of per-rank row blocks of different lengths (response log-probs,
  video embeddings). Forward pads each block to the longest and uses one `all_gather_single`;
  backward reduce-scatters (sums) the gradients of every rank's copy, the adjoint of a gather.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    layout: str = "ulysses"  # or "kv_gather" (layout.attention_layout)
    kv_block: int = 1024  # kv_gather: keys per attention tile

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


def seq_to_heads(x: torch.Tensor, sp: SPContext, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[B, H, L_local, D] (all heads, this rank's positions) -> [B, h_r, L, D]: rank r gets heads
    ranges[r] (ranges may differ in size and overlap: a KV head read by two ranks goes to both)
    for every position, in rank order."""
    b, _, n, d = x.shape
    send_blocks = torch.cat([x[:, s:e].reshape(-1) for s, e in ranges])
    send = [b * (e - s) * n * d for s, e in ranges]
    mine = ranges[sp.rank][1] - ranges[sp.rank][0]
    recv = [b * mine * m * d for m in sp.split.lengths]
    got = _AllToAll.apply(send_blocks, send, recv, sp.group)
    parts = [p.view(b, mine, m, d) for p, m in zip(got.split(recv), sp.split.lengths, strict=True)]
    return torch.cat(parts, dim=2)


def heads_to_seq(y: torch.Tensor, sp: SPContext, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[B, L, h_mine, D] (attention output of this rank's query heads) -> [B, L_local, H, D];
    `ranges` are the query-head ranges of seq_to_heads (contiguous, covering all heads)."""
    b, _, hl, d = y.shape
    n = sp.split.lengths[sp.rank]
    parts = y.split(list(sp.split.lengths), dim=1)
    send_blocks = torch.cat([p.reshape(-1) for p in parts])
    send = [b * m * hl * d for m in sp.split.lengths]
    counts = [e - s for s, e in ranges]
    recv = [b * n * h * d for h in counts]
    got = _AllToAll.apply(send_blocks, send, recv, sp.group)
    blocks = [p.view(b, n, h, d) for p, h in zip(got.split(recv), counts, strict=True)]
    return torch.cat(blocks, dim=2)


def gather_sequence(x: torch.Tensor, sp: SPContext) -> torch.Tensor:
    """[B, H, L_local, D] -> [B, H, L, D]: every rank's positions, all-gathered (backward: the
    gradients of every rank's copy summed onto the owner, as gather_rows)."""
    flat = x.permute(2, 0, 1, 3).contiguous()  # positions first
    full = gather_rows(flat, list(sp.split.lengths), sp.rank, sp.group)
    return full.permute(1, 2, 0, 3)


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
