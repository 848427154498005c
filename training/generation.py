"""Generation from prompt embeddings with the exact positions training uses.

Used by the `hf` rollout engine (GRPO) and the `hf` eval engine. The prompt is prefilled from
`embed_with_video` embeddings (cached video embeddings or freshly encoded ones) with the 3-D
M-RoPE positions of `rope_positions` (training.positions); every generated token then takes the
next text position of its row (largest prompt position + 1, + 2, ...), which is what
`rope_positions` assigns to the same tokens when the trainer later scores prompt + response. The
log-prob of each sampled token under the temperature-scaled distribution is returned so the
trainer can check it matches.

Three things keep it cheap:
- prefix sharing: with `num_samples = G` each prompt is prefilled once and its KV cache expanded
  G-fold (`DynamicCache.batch_repeat_interleave`) before decoding - the prefill of a long video
  prompt is > 99 % of rollout FLOPs with short responses, so G rows per prompt cost one prefill;
- the prefill runs causal without a materialised [B, 1, L, L] mask: left-padded prompts are
  rotated so their padding trails (mm_batch.right_align); decode steps then attend with a
  padding mask built once and sliced per step (no concatenation), none when no row is padded;
- no host synchronisation per token: tokens, log-probs and the done flags stay on the model's
  device and are read once at the end; whether every row is done is asked every `sync_every`
  steps (rows that finished keep decoding pad tokens until then; their outputs are ignored) -
  by default 16 on an accelerator and every step on the CPU, where a read costs nothing and a
  wasted step does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.mm_batch import (
    Batch,
    base_model,
    batch_video_embeds,
    embed_with_video,
    right_align,
    rope_positions,
    video_positions,
)
from training.positions import next_text_position


@dataclass
class Generated:
    token_ids: list[list[int]]  # per row, up to and including the stop token (if reached)
    logprobs: list[list[float]]  # per row, log p of each generated token (temperature-scaled)
    finished: list[bool]  # False when max_new_tokens ran out before a stop token


@dataclass
class Prefilled:
    """A prefilled batch, ready to decode: its KV cache and what the next step needs."""

    cache: object  # transformers DynamicCache
    hidden: torch.Tensor  # [B, H] last hidden state of each row (predicts its first new token)
    attention_mask: torch.Tensor  # [B, L] which cache slots are real tokens (pads may be anywhere)
    next_pos: torch.Tensor  # [B] text position of each row's next token
    padded: bool = True  # some row has pad slots in its cache (decode steps then need a mask)

    def expand(self, n: int) -> Prefilled:
        """Each row repeated n times in place (row i -> rows i*n .. i*n+n-1), cache included."""
        if n == 1:
            return self
        self.cache.batch_repeat_interleave(n)
        return Prefilled(self.cache, self.hidden.repeat_interleave(n, 0),
                         self.attention_mask.repeat_interleave(n, 0), self.next_pos.repeat_interleave(n, 0),
                         self.padded)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def prefill(model, batch: Batch, video_embeds: Sequence[torch.Tensor] | None = None) -> Prefilled:
    """Run the prompts of a left-padded batch through the LLM once, causal, no padding mask."""
    from transformers import DynamicCache

    if video_embeds is None:
        video_embeds = batch_video_embeds(model, batch)
    positions = rope_positions(model, batch)
    embeds = embed_with_video(model, batch.input_ids, video_embeds, video_positions(batch), batch.video_counts)
    mask = batch.attention_mask
    idx, _ = right_align(mask)
    if idx is not None:  # pads trail: real tokens never attend to them under the causal mask
        embeds = embeds.gather(1, idx[:, :, None].expand(-1, -1, embeds.shape[-1]))
        positions = positions.gather(2, idx[None].expand(positions.shape[0], -1, -1))
        mask = mask.gather(1, idx)
    cache = DynamicCache()
    lm = base_model(model).language_model
    out = lm(inputs_embeds=embeds, attention_mask=None, position_ids=positions, past_key_values=cache, use_cache=True)
    last = mask.sum(1) - 1  # [B] index of each row's last real token
    hidden = out.last_hidden_state.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.last_hidden_state.shape[-1]))
    return Prefilled(cache, hidden[:, 0], mask, next_text_position(positions, mask), padded=idx is not None)


def _step_masks(lm, state: Prefilled, total: int, dtype: torch.dtype):
    """mask(n): the attention mask of a decode step over n cache slots. None without pads; for
    sdpa/eager a 4-D mask built once and sliced, because from a 2-D mask transformers asks the
    host whether it is all ones on every step (a device sync per token)."""
    if not state.padded:
        return lambda n: None
    B, L = state.attention_mask.shape
    real = torch.ones((B, total), dtype=torch.bool, device=state.attention_mask.device)
    real[:, :L] = state.attention_mask.bool()
    impl = getattr(lm.config, "_attn_implementation", None) or "sdpa"
    if impl == "sdpa":
        m4 = real[:, None, None, :]  # True: attend
        return lambda n: m4[..., :n]
    if impl == "eager":  # additive
        m4 = torch.zeros((B, 1, 1, total), dtype=dtype, device=real.device).masked_fill(
            ~real[:, None, None, :], torch.finfo(dtype).min)
        return lambda n: m4[..., :n]
    return lambda n: real[:, :n].long()  # e.g. flash attention takes the 2-D padding mask


@torch.no_grad()
def decode(model, state: Prefilled, stop_ids: Sequence[int], pad_id: int, max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
           generator: torch.Generator | None = None, sync_every: int | None = None,
           done: torch.Tensor | None = None, keep_going: Callable[[bool], bool] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample from a prefilled state. Returns device tensors: tokens [B, T] (pad after the end),
    log-probs [B, T] (0 after the end), lengths [B] and done [B]. Nothing is read back to the
    host except `done.all()` every `sync_every` steps.

    `done`: rows finished from the start (dummy rows). `keep_going(any row alive)`: the stop
    decided with other processes (sequence_parallel.lockstep: an all-reduce, every step); once
    all of this process's rows are done it keeps stepping the model on pad tokens and samples
    nothing, so its generator draws are exactly those of a decode that stopped there."""
    hidden = state.hidden
    device = hidden.device
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else 16
    B, L = state.attention_mask.shape
    lm = base_model(model).language_model
    embed = base_model(model).get_input_embeddings()
    step_mask = _step_masks(lm, state, L + max_new_tokens, embed.weight.dtype)
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    pad = torch.full((B,), pad_id, dtype=torch.long, device=device)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device) if done is None else done.clone()
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    next_pos = state.next_pos
    lm_head = model.get_output_embeddings()
    steps = 0
    mine_alive = keep_going is None or not bool(done.all())
    for t in range(max_new_tokens):
        if mine_alive:
            logits = lm_head(hidden).float()
            if greedy:
                choice = logits.argmax(-1)
                logp = F.log_softmax(logits, -1)
            else:
                scaled = logits / temperature
                logp = F.log_softmax(scaled, -1)
                probs = _top_p_filter(scaled, top_p).softmax(-1)
                choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            alive = ~done
            tokens[:, t] = torch.where(alive, choice, pad)
            logps[:, t] = torch.where(alive, logp.gather(-1, choice[:, None]).squeeze(-1), 0.0)
            lengths += alive.long()
            done = done | torch.isin(choice, stop)
            steps = t + 1
            if keep_going is not None:
                mine_alive = not bool(done.all())
        if t + 1 == max_new_tokens:
            break
        if keep_going is None:
            if (t + 1) % max(1, sync_every) == 0 and bool(done.all()):
                break
        elif not keep_going(mine_alive):
            break
        step_ids = torch.where(done, pad, tokens[:, t])  # = this step's choice on the rows alive
        pos = next_pos.view(1, B, 1).expand(3, B, 1)
        out = lm(inputs_embeds=embed(step_ids[:, None]), attention_mask=step_mask(L + t + 1), position_ids=pos,
                 past_key_values=state.cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        next_pos = next_pos + 1
    return tokens[:, :steps], logps[:, :steps], lengths, done


def to_lists(tokens: torch.Tensor, logps: torch.Tensor, lengths: torch.Tensor, done: torch.Tensor) -> Generated:
    """Device tensors from `decode` -> per-row Python lists (one transfer each)."""
    toks, lps, lens, fin = tokens.tolist(), logps.tolist(), lengths.tolist(), done.tolist()
    return Generated([r[:n] for r, n in zip(toks, lens, strict=True)],
                     [r[:n] for r, n in zip(lps, lens, strict=True)], [bool(f) for f in fin])


@torch.no_grad()
def generate(model, batch: Batch, stop_ids: Sequence[int], pad_id: int, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             video_embeds: Sequence[torch.Tensor] | None = None,
             generator: torch.Generator | None = None, num_samples: int = 1,
             sync_every: int | None = None) -> Generated:
    """Sample (or greedily decode) up to `max_new_tokens` per row of a left-padded batch; with
    `num_samples = n`, n rows per prompt from one prefill (row i*n + j: sample j of prompt i)."""
    state = prefill(model, batch, video_embeds).expand(num_samples)
    return to_lists(*decode(model, state, stop_ids, pad_id, max_new_tokens, temperature, top_p, greedy,
                            generator, sync_every))
