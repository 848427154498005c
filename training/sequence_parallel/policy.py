"""Per-token log-probs of a Qwen2.5-VL model, optionally split over a sequence-parallel group.

`LogProbModel(model, sp_group)` is the module the trainer calls for every old-policy, reference
and update pass. One forward:
1. video embeddings: the cached ones, or the vision tower split by frames over the SP group;
2. the FULL sequence is built once on every rank (token embeddings with the video scattered in,
   `mm_batch.embed_with_video`) together with its 3-D M-RoPE positions [3, B, L] (computed by the
   caller on the full sequence with `mm_batch.rope_positions`) and its attention mask;
3. each rank keeps a contiguous slice of positions (lengths differ by at most one token, no
   padding) and runs the language model on it; attention all-to-alls (attention.py);
4. each rank projects only the positions whose next token is scored (the response) through the
   lm_head in chunks (logprobs.py) and the ranks all-gather those log-probs only.
The result is a [B, L] tensor identical on every SP rank, in `mm_batch.token_logprobs`'
convention: out[b, t] = log p(input_ids[b, t] | < t) where score_mask[b, t] > 0, else 0.

Gradients: each SP rank computes the same loss from the gathered log-probs; the gather's
backward sums the ranks' gradients, so per-rank parameter gradients sum to SP x the true gradient
and averaging over the SP group (FSDP's mean reduction over dp x sp, or an explicit all-reduce)
gives exactly the single-process gradient.

Being an nn.Module it is the FSDP2 root: the embeddings, lm_head and final norm it touches outside
the decoder layers are unsharded for the duration of its forward. `generate` is registered as an
FSDP forward method too (mesh.shard_log_prob_model), so rollouts on the HF engine work sharded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from training.linear_logprobs import linear_logprobs
from training.mm_batch import base_model, embed_with_video, encode_videos
from training.sequence_parallel.attention import full_sequence_masks, use_ulysses_attention
from training.sequence_parallel.comm import SPContext, gather_rows
from training.sequence_parallel.layout import SequenceSplit
from training.sequence_parallel.vision import encode_videos_split


class LogProbModel(torch.nn.Module):
    """A Qwen2.5-VL model that returns per-token log-probs (and entropy) of scored tokens."""

    def __init__(self, model: torch.nn.Module, sp_group: dist.ProcessGroup | None = None,
                 token_chunk: int = 2048, vocab_chunk: int = 32768, attention: str | None = None):
        super().__init__()
        self.model = model
        self.sp_group = sp_group
        self.sp_size = dist.get_world_size(sp_group) if sp_group is not None else 1
        self.sp_rank = dist.get_rank(sp_group) if sp_group is not None else 0
        self.token_chunk, self.vocab_chunk = token_chunk, vocab_chunk
        use_ulysses_attention(model, attention)

    @property
    def split_active(self) -> bool:
        return self.sp_size > 1

    def encode_videos(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Per-video embeddings (equal on every SP rank), split by frames over the SP group when
        there is one: what the trainer caches once per video and step."""
        return [e.clone() for e in self._encode_videos(pixel_values, grid_thw)]

    def _encode_videos(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        if not self.split_active:
            return encode_videos(self.model, pixel_values, grid_thw)
        return encode_videos_split(self.model, pixel_values, grid_thw, self.sp_group, self.sp_rank, self.sp_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        score_mask: torch.Tensor,
        video_embeds: Sequence[torch.Tensor] | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
        video_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs [B, L], entropy [B, L] or None) of the tokens where score_mask > 0.
        `video_mask` [B, L] marks where the video embeddings go (batch.mm_token_type_ids == 2);
        without it every <|video_pad|> token id is taken for a video position."""
        if video_embeds is None and pixel_values_videos is not None:
            video_embeds = self._encode_videos(pixel_values_videos, video_grid_thw)
        if video_embeds is None:
            raise ValueError("give cached video_embeds or pixel_values_videos with video_grid_thw")
        b, length = input_ids.shape
        if position_ids.shape != (3, b, length):
            raise ValueError(f"position_ids must be [3, {b}, {length}] (full sequence), got {tuple(position_ids.shape)}")
        inner = base_model(self.model)
        if video_mask is None:  # callers holding a Batch pass mm_batch.video_positions(batch)
            video_mask = input_ids == inner.config.video_token_id
        embeds = embed_with_video(self.model, input_ids, video_embeds, video_mask)
        masks = full_sequence_masks(inner.language_model, embeds, attention_mask)

        split = SequenceSplit.even(length, self.sp_size)
        start, end = split.bounds(self.sp_rank)
        extra = {}
        if self.split_active:
            extra["sequence_parallel"] = SPContext(self.sp_group, self.sp_rank, split)
        hidden = inner.language_model(
            inputs_embeds=embeds[:, start:end], position_ids=position_ids[:, :, start:end],
            attention_mask=masks, use_cache=False, **extra,
        ).last_hidden_state

        # Hidden state at position p predicts token p + 1: this rank scores tokens start+1..end.
        scored = score_mask[:, 1:] > 0
        rows, cols = scored[:, start:end].nonzero(as_tuple=True)
        targets = input_ids[:, 1:][:, start:end][rows, cols]
        weight = self.model.get_output_embeddings().weight
        lp, ent = linear_logprobs(hidden[rows, cols], weight, targets, temperature,
                                  self.token_chunk, self.vocab_chunk, with_entropy)
        if self.split_active:
            counts = [int(scored[:, s:e].sum()) for s, e in map(split.bounds, range(self.sp_size))]
            lp = gather_rows(lp, counts, self.sp_rank, self.sp_group)
            if ent is not None:
                ent = gather_rows(ent, counts, self.sp_rank, self.sp_group)
            # gathered rows come rank by rank, each rank's in row-major order of its slice
            order = [scored[:, s:e].nonzero() + torch.tensor([0, s], device=scored.device)
                     for s, e in map(split.bounds, range(self.sp_size))]
            rows, cols = torch.cat(order).unbind(1)
        out = torch.zeros((b, length), dtype=torch.float32, device=input_ids.device)
        out = out.index_put((rows, cols + 1), lp)
        ent_out = None
        if ent is not None:
            ent_out = torch.zeros_like(out).index_put((rows, cols + 1), ent)
        return out, ent_out

    def generate(self, *args, **kwargs):
        """The wrapped model's `generate` (unsplit; sequence parallelism is for scoring)."""
        return self.model.generate(*args, **kwargs)

