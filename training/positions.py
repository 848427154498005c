"""3-D M-RoPE positions, owned by longrl: the scheme the Qwen2-VL / Qwen2.5-VL checkpoints were
trained with, and the one vLLM computes for them.

Why the project owns this instead of calling the model's `get_rope_index`: transformers 5.3-5.19
continue the text after a video at `start + max(h, w) / merge`, ignoring the video's time axis,
while the original Qwen2.5-VL code and vLLM continue at the largest position of the video + 1.
The two agree only when a temporal patch spans 1 s or less (`t * second_per_grid * tps` small);
on long videos (10-20 s per patch) they differ by hundreds or thousands of positions, so a
model trained with one and rolled out with the other sees different inputs. Every forward pass
in longrl (SFT, rollout prefill and decoding, old/reference/update scoring, sequence-parallel
scoring, evaluation) takes its positions from `mrope_positions`.

The scheme, per row (padding is skipped; padded slots get position 0):
- text tokens take consecutive positions on all three axes;
- a video of grid (t, h, w) with `merge`x`merge` spatial merging starts at `base` = the next
  text position and gives token (i, j, k) the position
  (base + long(i * second_per_grid * tokens_per_second), base + j, base + k), in t-major order;
  with `seconds_per_grid` None (Qwen2-VL) the temporal index is i itself;
- the text after a video continues at the largest position of that video + 1.

Video tokens are found by the token types (video = 2), never by token ids, so a sampled
`<|video_pad|>` in a response stays text. The work is vectorised per segment: a row costs a few
tensor operations per video, not a Python step per token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

VIDEO_TOKEN_TYPE = 2

Grid = tuple[int, int, int]


def video_temporal_index(t: int, second_per_grid: float | None, tokens_per_second: float) -> torch.Tensor:
    """Temporal position offsets of a video's t temporal patches, computed with the same
    float32 arithmetic as vLLM (an int64 arange times Python floats, then truncated)."""
    if second_per_grid is None:
        return torch.arange(t)
    return (torch.arange(t) * float(second_per_grid) * tokens_per_second).long()


def _video_block(base: int, grid: Grid, merge: int, second_per_grid: float | None,
                 tokens_per_second: float) -> torch.Tensor:
    t, h, w = grid
    gh, gw = h // merge, w // merge
    t_idx = video_temporal_index(t, second_per_grid, tokens_per_second)
    block = torch.stack([
        t_idx.view(t, 1, 1).expand(t, gh, gw).reshape(-1),
        torch.arange(gh).view(1, gh, 1).expand(t, gh, gw).reshape(-1),
        torch.arange(gw).view(1, 1, gw).expand(t, gh, gw).reshape(-1),
    ])
    return block + base


def row_positions(token_types: torch.Tensor, grids: Sequence[Grid], merge: int,
                  seconds_per_grid: Sequence[float] | None, tokens_per_second: float,
                  row: int = 0) -> torch.Tensor:
    """Positions [3, n] for one unpadded row whose video tokens (type 2) are, in order, the
    videos `grids`. A row whose video runs do not match its grids is an error naming the row."""
    types = token_types.to("cpu")
    n = types.shape[0]
    is_video = types == VIDEO_TOKEN_TYPE
    prev = torch.cat([torch.zeros(1, dtype=torch.bool), is_video[:-1]])
    nxt = torch.cat([is_video[1:], torch.zeros(1, dtype=torch.bool)])
    starts = (is_video & ~prev).nonzero().flatten().tolist()
    ends = [e + 1 for e in (is_video & ~nxt).nonzero().flatten().tolist()]
    if len(starts) != len(grids):
        raise ValueError(f"row {row}: {len(starts)} runs of video tokens but {len(grids)} videos")
    if seconds_per_grid is not None and len(seconds_per_grid) != len(grids):
        raise ValueError(f"row {row}: {len(grids)} videos but {len(seconds_per_grid)} seconds-per-grid values")
    out = torch.empty((3, n), dtype=torch.long)
    base = 0  # next text position
    cursor = 0  # next token index
    for v, (s, e) in enumerate(zip(starts, ends, strict=True)):
        t, h, w = (int(x) for x in grids[v])
        expected = t * (h // merge) * (w // merge)
        if e - s != expected:
            raise ValueError(f"row {row}: video {v} has {e - s} tokens but its grid {(t, h, w)} gives {expected}")
        out[:, cursor:s] = torch.arange(base, base + s - cursor)
        base += s - cursor
        spg = None if seconds_per_grid is None else float(seconds_per_grid[v])
        block = _video_block(base, (t, h, w), merge, spg, tokens_per_second)
        out[:, s:e] = block
        base = int(block.max()) + 1
        cursor = e
    out[:, cursor:] = torch.arange(base, base + n - cursor)
    return out


def mrope_positions(token_types: torch.Tensor, attention_mask: torch.Tensor,
                    grids: Sequence[Sequence[Grid]], merge: int,
                    seconds_per_grid: Sequence[Sequence[float]] | None, tokens_per_second: float
                    ) -> torch.Tensor:
    """Position ids [3, B, L] for a (left- or otherwise) padded batch. `grids[b]` lists row b's
    videos in order of appearance and `seconds_per_grid[b]` their seconds per temporal patch
    (None for models without temporal scaling, such as Qwen2-VL)."""
    B, L = token_types.shape
    if len(grids) != B:
        raise ValueError(f"{B} rows but video grids for {len(grids)}")
    out = torch.zeros((3, B, L), dtype=torch.long)
    mask = attention_mask.to("cpu").bool()
    types = token_types.to("cpu")
    for b in range(B):
        keep = mask[b]
        spg = None if seconds_per_grid is None else seconds_per_grid[b]
        out[:, b, keep] = row_positions(types[b][keep], grids[b], merge, spg, tokens_per_second, row=b)
    return out.to(token_types.device)


def next_text_position(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: the position the next generated token of each row takes (largest position + 1)."""
    masked = position_ids.masked_fill(~attention_mask.bool().unsqueeze(0), -1)
    return masked.amax(dim=(0, 2)) + 1


def frame_group_grids(grids: Sequence[Grid]) -> list[Grid]:
    """Qwen3-VL: every temporal patch of a video is its own vision segment (its timestamp is text
    between them), so a video of grid (t, h, w) is t segments of (1, h, w); with no temporal
    scaling each segment's tokens take (base, base + j, base + k) and the text after continues at
    base + max(h, w) / merge - what transformers' Qwen3-VL get_rope_index and vLLM compute."""
    return [(1, int(h), int(w)) for t, h, w in grids for _ in range(int(t))]
