"""How one long sequence and the attention heads are laid out over a sequence-parallel group.

Pure functions, no communication, so the plans are unit-tested on their own and every rank
computes the same plan from the same (full-batch) inputs without exchanging anything.

Sequence: the L positions of a batch are cut into `sp` contiguous slices whose lengths differ by
at most one token (the first L % sp ranks hold one more). Nothing is padded: the all-to-alls use
per-rank split sizes. The reference instead left-pads every rank's text part to the longest one
(~80 % padding at 32 frames, SP 4).

Heads: Ulysses gives each rank a 1/sp share of the query heads (and of the key/value heads) for the
whole sequence. When the head counts do not divide sp we keep exact results by
- replicating KV heads (smallest factor r with sp | Hkv*r and Hkv*r | Hq), which keeps GQA and costs
  only extra KV traffic, when sp divides the query heads;
- otherwise padding the query heads to the next multiple of sp with all-zero heads (KV expanded to
  one per query head, padded the same way) whose outputs are dropped; attention compute grows by
  Hq_padded / Hq (e.g. 28 heads at SP 8: 32/28 = 1.14x).
A ring/hybrid layout would avoid that overhead when sp is far above the head count; it is not
needed for the Qwen2.5-VL family at SP <= 8 (16 to 64 query heads) and is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F


def split_lengths(total: int, parts: int) -> tuple[int, ...]:
    """Lengths of `parts` contiguous slices of `total` items, differing by at most one."""
    if parts < 1:
        raise ValueError(f"cannot split into {parts} parts")
    base, extra = divmod(total, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


@dataclass(frozen=True)
class SequenceSplit:
    """The contiguous position range [start, end) of each rank for a sequence of `total` tokens."""

    lengths: tuple[int, ...]

    @classmethod
    def even(cls, total: int, parts: int) -> SequenceSplit:
        return cls(split_lengths(total, parts))

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def bounds(self, rank: int) -> tuple[int, int]:
        start = sum(self.lengths[:rank])
        return start, start + self.lengths[rank]

    def padding_fraction(self) -> float:
        """Share of padded positions if every rank were padded to the longest slice (what the
        all-to-all would cost with equal splits); 0 for an even split."""
        longest = max(self.lengths)
        return 1.0 - self.total / (longest * len(self.lengths)) if longest else 0.0


@dataclass(frozen=True)
class HeadPlan:
    """How query and key/value heads are made divisible by the sequence-parallel size."""

    num_heads: int  # query heads of the model
    num_kv_heads: int
    sp_size: int
    kv_repeat: int  # each KV head repeated this many times (interleaved, like repeat_kv)
    padded_heads: int  # query heads after padding (multiple of sp_size)
    padded_kv_heads: int  # KV heads after repetition and padding (multiple of sp_size)

    @property
    def local_heads(self) -> int:
        return self.padded_heads // self.sp_size

    @property
    def local_kv_heads(self) -> int:
        return self.padded_kv_heads // self.sp_size

    @property
    def compute_overhead(self) -> float:
        """Attention compute relative to the unpadded head count."""
        return self.padded_heads / self.num_heads

    def prepare(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """Apply the plan to [B, heads, L, D] projections (autograd-safe)."""
        if self.kv_repeat > 1:
            key = key.repeat_interleave(self.kv_repeat, dim=1)
            value = value.repeat_interleave(self.kv_repeat, dim=1)
        return (
            _pad_heads(query, self.padded_heads),
            _pad_heads(key, self.padded_kv_heads),
            _pad_heads(value, self.padded_kv_heads),
        )


def _pad_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    missing = heads - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, 0, missing)) if missing else x


@lru_cache(maxsize=64)
def plan_heads(num_heads: int, num_kv_heads: int, sp_size: int) -> HeadPlan:
    """The cheapest exact layout of (num_heads, num_kv_heads) over sp_size ranks."""
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if num_heads % sp_size == 0:
        for repeat in range(1, num_heads // num_kv_heads + 1):
            kv = num_kv_heads * repeat
            if kv % sp_size == 0 and num_heads % kv == 0:
                return HeadPlan(num_heads, num_kv_heads, sp_size, repeat, num_heads, kv)
    padded = -(-num_heads // sp_size) * sp_size
    return HeadPlan(num_heads, num_kv_heads, sp_size, num_heads // num_kv_heads, padded, padded)
