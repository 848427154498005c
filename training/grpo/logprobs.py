"""Rollouts as training rows, and the one function that computes their log-probs.

`sequence_logprobs` is the single place where a policy scores tokens; the sequence-parallel
stage replaces it (GRPOTrainer(logprob_fn=...)) without touching the loop. It projects to the
vocabulary in chunks (training.mm_batch.token_logprobs), so the full [tokens x vocab] logits
never exist at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from data_gen.schema import QARecord
from training.grpo.rewards import RewardResult
from training.grpo.rollout import Response
from training.grpo.video_cache import StepVideo
from training.mm_batch import Batch, collate, hidden_states, token_logprobs
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
    the entropy there. Gradients flow when called under grad."""
    hidden = hidden_states(model, batch, video_embeds)
    return token_logprobs(model, hidden, batch.input_ids, batch.loss_mask, chunk_size=chunk_size,
                          temperature=temperature, with_entropy=with_entropy)


def rows_batch(rows: Sequence[Rollout], pad_id: int, with_pixels: bool, device) -> Batch:
    return collate([r.sequence for r in rows], [r.video for r in rows], pad_id,
                   with_pixels=with_pixels).to(device)


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
        batch = rows_batch(chunk, pad_id, with_pixels, device)
        lp, ent = logprob_fn(model, batch, embed_rows([r.video for r in chunk]),
                             temperature=temperature, chunk_size=chunk_size,
                             with_entropy=with_entropy)
        lps += [v.cpu() for v in gather_rows(lp, batch.loss_mask)]
        if ent is not None:
            ents += [v.cpu() for v in gather_rows(ent, batch.loss_mask)]
    return lps, ents
