"""Variable-length attention kernels: packed rows instead of padded rows and [B, 1, L, L] masks.

- `PackedRows`: the rows of a batch laid end to end (padding dropped) with their cu_seqlens, as
  flash-attention's varlen kernels take them. Positions (3-D M-RoPE) are per token, so packing
  changes nothing but where a token sits.
- `causal_varlen_attention`: causal attention inside each packed row. flash-attn's
  `flash_attn_varlen_func` on CUDA with flash-attn installed; otherwise one SDPA causal call per
  row (SDPA's own causal kernel: no mask tensor at all). Either way no L x L tensor exists.
- `windowed_attention`: the vision tower's non-causal attention inside windows / frames
  (cu_seqlens) batched: windows of equal length (nearly all of them: 8 x 8 patches) go through one
  SDPA call as a batch instead of one Python-level call per window as transformers' SDPA path does.
- `BlockAttention`: attention of some query positions against gathered keys, blockwise over the
  keys with an online log-sum-exp, the backward recomputing each block (FlashAttention's algorithm
  in plain torch); the kernel of the kv_gather (context-parallel) layout. Memory: one
  [queries x block] score tile, never queries x keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PackedRows:
    """Row lengths of a packed sequence [1, T] (rows end to end, padding removed)."""

    lengths: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @cached_property
    def starts(self) -> tuple[int, ...]:
        out, s = [], 0
        for n in self.lengths:
            out.append(s)
            s += n
        return tuple(out)

    def cu_seqlens(self, device) -> torch.Tensor:
        return torch.tensor([0, *[s + n for s, n in zip(self.starts, self.lengths, strict=True)]],
                            dtype=torch.int32, device=device)

    def segment_ids(self, device) -> torch.Tensor:
        """[T]: the row each packed position belongs to."""
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=device),
                                       torch.tensor(self.lengths, device=device))


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def causal_varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: PackedRows,
                            scaling: float | None, use_flash: bool = True) -> torch.Tensor:
    """[1, Hq, T, D] queries, [1, Hkv, T, D] keys/values (Hkv divides Hq) -> [1, T, Hq, D],
    causal within each packed row."""
    if query.shape[0] != 1 or query.shape[2] != rows.total:
        raise ValueError(f"packed attention wants [1, H, {rows.total}, D], got {tuple(query.shape)}")
    flash = _flash_varlen() if use_flash and query.is_cuda else None
    if flash is not None:
        cu = rows.cu_seqlens(query.device)
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
        out = flash(q, k, v, cu, cu, max(rows.lengths), max(rows.lengths), softmax_scale=scaling, causal=True)
        return out.unsqueeze(0)
    gqa = query.shape[1] != key.shape[1]
    outs = [F.scaled_dot_product_attention(query[:, :, s:s + n], key[:, :, s:s + n], value[:, :, s:s + n],
                                           is_causal=True, scale=scaling, enable_gqa=gqa)
            for s, n in zip(rows.starts, rows.lengths, strict=True) if n]
    return torch.cat(outs, dim=2).transpose(1, 2)


def windowed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                       scaling: float | None) -> torch.Tensor:
    """[1, H, N, D] -> [1, N, H, D]: full (non-causal) attention inside each [cu[i], cu[i+1]),
    windows of equal length batched into one SDPA call per distinct length."""
    bounds = cu_seqlens.tolist()
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    by_len: dict[int, list[int]] = {}
    for s, n in zip(starts, lengths, strict=True):
        if n:
            by_len.setdefault(n, []).append(s)
    h, total, d = query.shape[1], query.shape[2], query.shape[3]
    out = query.new_empty((total, h, d))
    for n, group in by_len.items():
        idx = (torch.tensor(group, device=query.device)[:, None] + torch.arange(n, device=query.device)).reshape(-1)
        q, k, v = (t[0][:, idx].view(h, len(group), n, d).transpose(0, 1) for t in (query, key, value))
        o = F.scaled_dot_product_attention(q, k, v, scale=scaling)  # [windows, H, n, D]
        out = out.index_copy(0, idx, o.permute(0, 2, 1, 3).reshape(-1, h, d))
    return out.unsqueeze(0)


def _block_scores(q, k, q_pos, k_pos, q_seg, k_seg, scale):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    allowed = (q_seg[:, None] == k_seg[None, :]) & (k_pos[None, :] <= q_pos[:, None])
    return s.masked_fill(~allowed, float("-inf"))


class BlockAttention(torch.autograd.Function):
    """out[g, i] = softmax over allowed keys j (same segment, k_pos <= q_pos) of q[g, i] . k[g, j];
    q [G, R, D], k/v [G, M, D]; positions / segments [R] and [M]. Every query must be allowed at
    least one key (it always sees itself here)."""

    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, q_seg, k_seg, scale: float, block: int):
        g, r, d = q.shape
        acc = q.new_zeros((g, r, v.shape[-1]))
        m = q.new_full((g, r), float("-inf"))
        denom = q.new_zeros((g, r))
        for j in range(0, k.shape[1], block):
            s = _block_scores(q, k[:, j:j + block], q_pos, k_pos[j:j + block], q_seg, k_seg[j:j + block], scale)
            m_new = torch.maximum(m, s.amax(-1))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - safe[..., None])
            corr = torch.exp(m - safe)
            denom = denom * corr + p.sum(-1)
            acc = acc * corr[..., None] + torch.matmul(p, v[:, j:j + block])
            m = m_new
        out = acc / denom[..., None]
        lse = m + torch.log(denom)
        ctx.save_for_backward(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = ctx.saved_tensors
        scale, block = ctx.scale, ctx.block
        delta = (dout * out).sum(-1)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for j in range(0, k.shape[1], block):
            kb, vb = k[:, j:j + block], v[:, j:j + block]
            p = torch.exp(_block_scores(q, kb, q_pos, k_pos[j:j + block], q_seg, k_seg[j:j + block], scale)
                          - lse[..., None])
            dv[:, j:j + block] = torch.matmul(p.transpose(-1, -2), dout)
            ds = p * (torch.matmul(dout, vb.transpose(-1, -2)) - delta[..., None])
            dq += torch.matmul(ds, kb) * scale
            dk[:, j:j + block] = torch.matmul(ds.transpose(-1, -2), q) * scale
        return dq, dk, dv, None, None, None, None, None, None


def gathered_kv_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: PackedRows,
                          start: int, scaling: float | None, block: int = 1024) -> torch.Tensor:
    """Causal packed attention of this rank's queries (packed positions [start, start + n)) against
    the gathered keys/values of every position: [1, Hq, n, D], [1, Hkv, T, D] -> [1, n, Hq, D].
    Keys of rows that end before `start` and keys after the last query are never touched."""
    _, hq, n, d = query.shape
    hkv = key.shape[1]
    group = hq // hkv
    device = query.device
    seg = rows.segment_ids(device)
    end = start + n
    first_row = int(seg[start]) if n else 0
    k0 = rows.starts[first_row] if n else start
    q_pos = torch.arange(start, end, device=device)
    k_pos = torch.arange(k0, end, device=device)
    # GQA without expanding KV: the `group` query heads of a KV head become rows of one matrix.
    q = query[0].reshape(hkv, group * n, d)
    out = BlockAttention.apply(q, key[0, :, k0:end], value[0, :, k0:end], q_pos.repeat(group), k_pos,
                               seg[start:end].repeat(group), seg[k0:end],
                               scaling if scaling is not None else d ** -0.5, block)
    return out.reshape(hq, n, d).transpose(0, 1).unsqueeze(0)
