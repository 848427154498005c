"""How one long sequence and the attention heads are laid out over a sequence-parallel group.

Pure functions, no communication, so the plans are unit-tested on their own and every rank
computes the same plan from the same (full-batch) inputs without exchanging anything.

Sequence: the L positions of a batch are cut into `sp` contiguous slices whose lengths differ by
at most one token (the first L % sp ranks hold one more). Nothing is padded: the all-to-alls use
per-rank split sizes. The reference instead left-pads every rank's text part to the longest one
(~80 % padding at 32 frames, SP 4).

Heads: Ulysses gives each rank a share of the query heads for the whole sequence. Query heads are
split into contiguous ranges whose sizes differ by at most one (28 heads at SP 8: 4,4,4,4,3,3,3,3;
no zero heads are padded in, none computed), and each rank receives only the KV heads its query
heads read (GQA: query head i reads KV head i // (Hq / Hkv)): at most 2 for Qwen2.5-VL-7B at SP 8,
against one per query head (4 per rank) when query heads were padded. A rank whose query heads
span two KV heads runs the kernel once per KV head (`HeadPlan.runs`).

When SP exceeds the query-head count Ulysses would leave ranks without heads; `attention_layout`
then picks "kv_gather" (context parallelism: every rank keeps its positions and all heads, the
few KV heads are all-gathered over the sequence, attention runs blockwise; attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


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
    """Which query heads each rank computes and which KV heads it must receive (Ulysses)."""

    num_heads: int  # query heads of the model
    num_kv_heads: int
    sp_size: int
    q_ranges: tuple[tuple[int, int], ...]  # per rank: query heads [start, end)
    kv_ranges: tuple[tuple[int, int], ...]  # per rank: KV heads [start, end) its query heads read

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def q_counts(self) -> list[int]:
        return [e - s for s, e in self.q_ranges]

    def kv_counts(self) -> list[int]:
        return [e - s for s, e in self.kv_ranges]

    @property
    def kv_heads_sent(self) -> int:
        """KV heads summed over ranks (= num_kv_heads when nothing is replicated)."""
        return sum(self.kv_counts())

    def runs(self, rank: int) -> list[tuple[int, int, int]]:
        """(local q start, local q end, local KV head) for each KV head this rank's query heads
        read, in order: one kernel call per run (or one GQA call when `uniform`)."""
        (q0, q1), (k0, k1) = self.q_ranges[rank], self.kv_ranges[rank]
        out = []
        for j in range(k0, k1):
            lo, hi = max(q0, j * self.group), min(q1, (j + 1) * self.group)
            out.append((lo - q0, hi - q0, j - k0))
        return out

    def uniform(self, rank: int) -> bool:
        """True when the rank's heads form whole GQA groups of equal size (one kernel call)."""
        return len({hi - lo for lo, hi, _ in self.runs(rank)}) == 1


@lru_cache(maxsize=64)
def plan_heads(num_heads: int, num_kv_heads: int, sp_size: int) -> HeadPlan:
    """Query heads split in contiguous near-equal ranges; each rank gets the KV heads they read."""
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if sp_size > num_heads:
        raise ValueError(f"Ulysses cannot split {num_heads} query heads over {sp_size} ranks; "
                         "use the kv_gather layout (parallel.attention_layout)")
    group = num_heads // num_kv_heads
    q_ranges, start = [], 0
    for n in split_lengths(num_heads, sp_size):
        q_ranges.append((start, start + n))
        start += n
    kv_ranges = tuple((s // group, (e - 1) // group + 1) for s, e in q_ranges)
    return HeadPlan(num_heads, num_kv_heads, sp_size, tuple(q_ranges), kv_ranges)


LAYOUTS = ("auto", "ulysses", "kv_gather")


def attention_layout(requested: str, num_heads: int, sp_size: int) -> str:
    """"ulysses" (heads split over ranks) or "kv_gather" (positions kept, KV all-gathered);
    "auto" picks Ulysses while every rank gets at least one query head."""
    if requested not in LAYOUTS:
        raise ValueError(f"attention layout {requested!r} is not one of {', '.join(LAYOUTS)}")
    if requested == "auto":
        return "ulysses" if sp_size <= num_heads else "kv_gather"
    if requested == "ulysses" and sp_size > num_heads:
        raise ValueError(f"Ulysses cannot split {num_heads} query heads over {sp_size} ranks; "
                         "set parallel.attention_layout=kv_gather (or auto)")
    return requested
