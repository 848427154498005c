"""Generation from prompt embeddings with the exact positions training uses.

Used by the `hf` rollout engine (GRPO) and the `hf` eval engine. The prompt is prefilled from
`embed_with_video` embeddings (cached video embeddings or freshly encoded ones) with the 3-D
M-RoPE positions of `rope_positions` (training.positions); every generated token then takes the
next text position of its row (largest prompt position + 1, + 2, ...), which is what
`rope_positions` assigns to the same tokens when the trainer later scores prompt + response. The log-prob of each sampled token under
the temperature-scaled distribution is returned so the trainer can check it matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.mm_batch import (
    Batch,
    base_model,
    batch_video_embeds,
    embed_with_video,
    rope_positions,
    video_positions,
)
from training.positions import next_text_position


@dataclass
class Generated:
    token_ids: list[list[int]]  # per row, up to and including the stop token (if reached)
    logprobs: list[list[float]]  # per row, log p of each generated token (temperature-scaled)
    finished: list[bool]  # False when max_new_tokens ran out before a stop token


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def generate(model, batch: Batch, stop_ids: Sequence[int], pad_id: int, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             video_embeds: Sequence[torch.Tensor] | None = None,
             generator: torch.Generator | None = None) -> Generated:
    """Sample (or greedily decode) up to `max_new_tokens` per row of a left-padded batch."""
    from transformers import DynamicCache

    if video_embeds is None:
        video_embeds = batch_video_embeds(model, batch)
    positions = rope_positions(model, batch)
    embeds = embed_with_video(model, batch.input_ids, video_embeds, video_positions(batch), batch.video_counts)
    lm = base_model(model).language_model
    cache = DynamicCache()
    out = lm(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions,
             past_key_values=cache, use_cache=True)
    hidden = out.last_hidden_state[:, -1]
    next_pos = next_text_position(positions, batch.attention_mask)  # [B]
    attn = batch.attention_mask
    B = batch.size
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    lm_head = model.get_output_embeddings()
    embed = base_model(model).get_input_embeddings()
    for _ in range(max_new_tokens):
        logits = lm_head(hidden).float()
        if greedy:
            choice = logits.argmax(-1)
            logp = F.log_softmax(logits, -1)
        else:
            scaled = logits / temperature
            logp = F.log_softmax(scaled, -1)
            probs = _top_p_filter(scaled, top_p).softmax(-1)
            choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        chosen_lp = logp.gather(-1, choice[:, None]).squeeze(-1)
        for i in range(B):
            if not done[i]:
                tokens[i].append(int(choice[i]))
                logps[i].append(float(chosen_lp[i]))
        done |= torch.isin(choice, stop)
        if bool(done.all()):
            break
        step_ids = torch.where(done, torch.full_like(choice, pad_id), choice)
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype)], dim=1)
        pos = next_pos.view(1, B, 1).expand(3, B, 1)
        out = lm(inputs_embeds=embed(step_ids[:, None]), attention_mask=attn, position_ids=pos,
                 past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        next_pos = next_pos + 1
    return Generated(tokens, logps, [bool(d) for d in done])
