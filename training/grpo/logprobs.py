"""Rollouts as training rows, and the one function that computes their log-probs.

`sequence_logprobs` is the single place where a policy scores tokens; the sequence-parallel
stage replaces it (GRPOTrainer(logprob_fn=...)) without touching the loop. It projects to the
vocabulary in chunks (training.mm_batch.token_logprobs), so the full [tokens x vocab] logits
never exist at once.

Two things are done once instead of per pass:
- the 3-D positions of a row are computed the first time the row is batched and reused by the
  old-policy, reference and update passes (`Rollout.positions`);
- left-padded rows are rotated so their padding trails (`right_align`), which lets attention run
  causal without a materialised [B, 1, L, L] mask (SDPA's `is_causal` path skips the upper
  triangle): real tokens never see trailing pads under a causal mask, so their hidden states are
  those of the masked left-padded pass (tested), and the outputs are rotated back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from data_gen.schema import QARecord
from training.grpo.rewards import RewardResult
from training.grpo.rollout import Response
from training.grpo.video_cache import StepVideo
from training.mm_batch import (
    Batch,
    base_model,
    collate,
    embed_with_video,
    right_align,
    rope_positions,
    token_logprobs,
    video_positions,
)
from training.prompts import EncodedExample, append_response_ids


@dataclass
class Rollout:
    """One sampled response and everything the update needs to know about it."""

    record: QARecord
    video: StepVideo
    prompt: EncodedExample
    response: Response
    group: int  # index of its prompt within the step
    text: str = ""
    reward: RewardResult | None = None
    extras: dict[str, float] = field(default_factory=dict)  # e.g. overlong penalty
    positions: torch.Tensor | None = None  # [3, num_tokens] 3-D positions, computed once per step

    @property
    def sequence(self) -> EncodedExample:
        return append_response_ids(self.prompt, self.response.token_ids)

    @property
    def num_tokens(self) -> int:
        return self.prompt.prompt_len + len(self.response.token_ids)


LogprobFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def sequence_logprobs(model, batch: Batch, video_embeds: Sequence[torch.Tensor], *,
                      temperature: float = 1.0, chunk_size: int = 1024,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p of every response token (batch.loss_mask) as [B, L] (0 elsewhere), and optionally
    the entropy there. Gradients flow when called under grad. Attention runs causal without a
    padding mask on right-aligned rows (see the module docstring)."""
    positions = rope_positions(model, batch)
    embeds = embed_with_video(model, batch.input_ids, video_embeds, video_positions(batch), batch.video_counts)
    idx, inv = right_align(batch.attention_mask)
    ids, loss_mask = batch.input_ids, batch.loss_mask
    if idx is not None:
        embeds = embeds.gather(1, idx[:, :, None].expand(-1, -1, embeds.shape[-1]))
        positions = positions.gather(2, idx[None].expand(positions.shape[0], -1, -1))
        ids, loss_mask = ids.gather(1, idx), loss_mask.gather(1, idx)
    hidden = base_model(model).language_model(inputs_embeds=embeds, attention_mask=None,
                                              position_ids=positions, use_cache=False).last_hidden_state
    lp, ent = token_logprobs(model, hidden, ids, loss_mask, chunk_size=chunk_size,
                             temperature=temperature, with_entropy=with_entropy)
    if inv is not None:
        lp = lp.gather(1, inv)
        ent = ent.gather(1, inv) if ent is not None else None
    return lp, ent


def batch_positions(model, rows: Sequence[Rollout], batch: Batch) -> torch.Tensor:
    """[3, B, L] positions of a left-padded batch of rows from each row's cached positions,
    computing (and caching) them for rows that have none yet."""
    missing = [i for i, r in enumerate(rows) if r.positions is None]
    if missing:
        # a wrapper without a config (the sequence-parallel LogProbModel) holds the HF model as .model
        hf = model if hasattr(model, "config") else model.model
        fresh = rope_positions(hf, batch)
        for i in missing:
            rows[i].positions = fresh[:, i, batch.attention_mask[i].bool()].cpu()
    B, L = batch.input_ids.shape
    out = torch.zeros((3, B, L), dtype=torch.long)
    for i, r in enumerate(rows):
        n = r.positions.shape[1]  # type: ignore[union-attr]
        out[:, i, L - n:] = r.positions
    return out


def rows_batch(rows: Sequence[Rollout], pad_id: int, with_pixels: bool, device, model=None) -> Batch:
    """The rows left-padded into one batch; with `model`, it carries the rows' cached positions."""
    batch = collate([r.sequence for r in rows], [r.video for r in rows], pad_id, with_pixels=with_pixels)
    if model is not None:
        batch.position_ids = batch_positions(model, rows, batch)
    return batch.to(device)


def gather_rows(values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[B, L] -> per row, the values at mask > 0 (in order)."""
    return [values[i][mask[i] > 0] for i in range(values.shape[0])]


def scatter_rows(vectors: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Inverse of gather_rows: per-row vectors placed at mask > 0 of a [B, L] zero tensor."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for i, v in enumerate(vectors):
        sel = mask[i] > 0
        if int(sel.sum()) != v.numel():
            raise ValueError(f"row {i}: {v.numel()} values for {int(sel.sum())} response tokens")
        out[i, sel] = v.to(out.device, out.dtype)
    return out


@torch.no_grad()
def rows_logprobs(model, embed_rows: Callable[[Sequence[StepVideo]], list[torch.Tensor]],
                  rows: Sequence[Rollout], pad_id: int, micro_rows: int, *, with_pixels: bool,
                  temperature: float, chunk_size: int, logprob_fn: LogprobFn = sequence_logprobs,
                  with_entropy: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-row response log-probs (and entropies) of `model`, micro-batch by micro-batch."""
    device = next(model.parameters()).device
    lps: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    for s in range(0, len(rows), micro_rows):
        chunk = rows[s:s + micro_rows]
        batch = rows_batch(chunk, pad_id, with_pixels, device, model)
        lp, ent = logprob_fn(model, batch, embed_rows([r.video for r in chunk]),
                             temperature=temperature, chunk_size=chunk_size,
                             with_entropy=with_entropy)
        lps += [v.cpu() for v in gather_rows(lp, batch.loss_mask)]
        if ent is not None:
            ents += [v.cpu() for v in gather_rows(ent, batch.loss_mask)]
    return lps, ents
