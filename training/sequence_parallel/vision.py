"""Vision encoding split across the sequence-parallel group by frames.

Qwen2.5-VL's vision tower attends within one temporal patch (its window and "full" attention
blocks both stop at frame-group boundaries, and its rotary positions are 2-D), so the embeddings
of a run of temporal patches do not depend on the others. Each rank therefore encodes a contiguous
run of (video, temporal patch) units, balanced by patch count, and the ranks all-gather the merged
embeddings once, as tensors over torch.distributed (the reference pickles them through Ray).
The result equals `get_video_features` on the whole batch (tested) and can be cached exactly as
the unsplit embeddings are. Qwen3-VL's tower also attends within one frame group; its DeepStack
features (per token, from intermediate blocks) are packed beside each token's embedding
(training.models.qwen3_vl.pack_video_features, the cached layout), so they are gathered and
split with their tokens and injected by the text model's pre-hook as on one process.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from training.mm_batch import base_model
from training.sequence_parallel.comm import gather_rows


@dataclass(frozen=True)
class FramePiece:
    """Temporal patches [t0, t1) of video `video`."""

    video: int
    t0: int
    t1: int


def split_frames(grid_thw: list[tuple[int, int, int]], parts: int) -> list[list[FramePiece]]:
    """Contiguous runs of (video, temporal patch) units for each of `parts` ranks, balanced by
    patch count (boundaries at the unit nearest each 1/parts of the total)."""
    units = [(v, t, h * w) for v, (tt, h, w) in enumerate(grid_thw) for t in range(tt)]
    cum = [0]
    for *_, cost in units:
        cum.append(cum[-1] + cost)
    cuts = [0]
    for k in range(1, parts):
        target = cum[-1] * k / parts
        i = bisect.bisect_left(cum, target, lo=cuts[-1])
        near = [j for j in (i - 1, i) if cuts[-1] <= j <= len(units)]
        cuts.append(min(near, key=lambda j: abs(cum[j] - target)))
    cuts.append(len(units))
    pieces: list[list[FramePiece]] = []
    for r in range(parts):
        mine: list[FramePiece] = []
        for v, t, _ in units[cuts[r] : cuts[r + 1]]:
            if mine and mine[-1].video == v and mine[-1].t1 == t:
                mine[-1] = FramePiece(v, mine[-1].t0, t + 1)
            else:
                mine.append(FramePiece(v, t, t + 1))
        pieces.append(mine)
    return pieces


def encode_videos_split(
    model, pixel_values: torch.Tensor, grid_thw: torch.Tensor, group, rank: int, size: int
) -> list[torch.Tensor]:
    """Per-video merged embeddings (as `mm_batch.encode_videos`), each rank encoding only its
    share of the frames. Every rank calls the vision tower exactly once (FSDP needs all ranks in
    each unit's collectives), on a dummy frame group if it was given none."""
    inner = base_model(model)
    merge = inner.visual.spatial_merge_size**2
    grids = [tuple(int(x) for x in g) for g in grid_thw.tolist()]
    offsets = [0]
    for t, h, w in grids:
        offsets.append(offsets[-1] + t * h * w)
    if offsets[-1] != pixel_values.shape[0]:
        raise ValueError(
            f"grid_thw covers {offsets[-1]} patches but pixel_values has {pixel_values.shape[0]} rows"
        )
    plan = split_frames(grids, size)
    mine = plan[rank]
    dummy = not mine
    if dummy:  # keep this rank in the vision tower's collectives; the output is discarded
        mine = [FramePiece(0, 0, 1)]
    rows, local_grid = [], []
    for p in mine:
        _, h, w = grids[p.video]
        rows.append(pixel_values[offsets[p.video] + p.t0 * h * w : offsets[p.video] + p.t1 * h * w])
        local_grid.append((p.t1 - p.t0, h, w))
    out = inner.get_video_features(
        torch.cat(rows), torch.tensor(local_grid, device=grid_thw.device), return_dict=True
    )
    if getattr(out, "deepstack_features", None):  # Qwen3-VL: each token's DeepStack levels travel
        from training.models.qwen3_vl import (  # with it, as cached
            attach_deepstack,
            pack_video_features,
        )

        attach_deepstack(
            model
        )  # the text model splits the wide rows again (mm_batch.encode_videos)
        local = torch.cat(pack_video_features(out))
    else:
        local = torch.cat(list(out.pooler_output))
    if dummy:
        local = local[:0] + 0.0 * local.sum()
    counts = [
        sum((p.t1 - p.t0) * grids[p.video][1] * grids[p.video][2] // merge for p in pieces)
        for pieces in plan
    ]
    full = gather_rows(local, counts, rank, group)
    sizes = [t * h * w // merge for t, h, w in grids]
    return list(full.split(sizes))
