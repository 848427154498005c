"""The batch plan: which examples form each optimizer step, and which worker and micro-batch
gets each of them.

Per epoch the usable examples are shuffled with (seed, epoch). With length grouping, groups of
`length_group_batches` global batches are sorted by length and cut into global batches, whose
order is then shuffled again: every global batch holds examples of similar length, so left
padding wastes little compute on long videos, while the order of batches stays random. The last
incomplete global batch of an epoch is dropped (as DataLoader's drop_last) so that every worker
always has the same number of micro-batches - FSDP's collectives need every rank in step.

Inside a global batch, examples are sorted by length and cut into micro-batches; micro-batch k
goes to worker k % world_size at accumulation round k // world_size, so the workers of one round
get micro-batches of similar length. The plan is a pure function of (lengths, seed, epoch,
sizes): a resumed run rebuilds it and skips the batches already done.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def epoch_batches(lengths: dict[int, int], global_batch: int, epoch: int, seed: int,
                  grouping: bool = True, group_batches: int = 16) -> list[list[int]]:
    """Global batches (lists of example keys) of one epoch. `lengths` maps each usable
    example's key to its token length."""
    keys = sorted(lengths)
    rng = random.Random(f"sft-{seed}-{epoch}")
    rng.shuffle(keys)
    n_batches = len(keys) // global_batch
    keys = keys[: n_batches * global_batch]
    if not grouping:
        return [keys[i * global_batch:(i + 1) * global_batch] for i in range(n_batches)]
    batches: list[list[int]] = []
    group = global_batch * group_batches
    for g in range(0, len(keys), group):
        # Stable sort, ties broken by the shuffled order, longest first.
        chunk = sorted(keys[g:g + group], key=lambda k: -lengths[k])
        batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
    rng.shuffle(batches)
    return batches


def micro_batches(batch: Sequence[int], lengths: dict[int, int], micro_batch_size: int,
                  world_size: int, rank: int) -> list[list[int]]:
    """This worker's micro-batches (in accumulation order) of one global batch."""
    expected = micro_batch_size * world_size
    if len(batch) % expected:
        raise ValueError(f"global batch of {len(batch)} does not split into micro-batches of "
                         f"{micro_batch_size} on {world_size} workers")
    ordered = sorted(batch, key=lambda k: -lengths[k])
    micros = [ordered[i:i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]
    return micros[rank::world_size]


def steps_per_epoch(n_examples: int, global_batch: int) -> int:
    return n_examples // global_batch


def padding_fraction(batches: Sequence[Sequence[int]], lengths: dict[int, int], micro_batch_size: int) -> float:
    """Share of padded positions when each micro-batch is padded to its longest example."""
    real = padded = 0
    for batch in batches:
        for micro in micro_batches(batch, lengths, micro_batch_size, 1, 0):
            real += sum(lengths[k] for k in micro)
            padded += max(lengths[k] for k in micro) * len(micro)
    return 1.0 - real / padded if padded else 0.0
