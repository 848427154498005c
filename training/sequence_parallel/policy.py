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
from training.sequence_parallel.attention import (
    check_no_sliding_layers,
    full_sequence_masks,
    use_ulysses_attention,
    use_varlen_vision_attention,
)
from training.sequence_parallel.comm import SPContext, gather_rows
from training.sequence_parallel.layout import SequenceSplit, attention_layout
from training.sequence_parallel.varlen import PackedRows
from training.sequence_parallel.vision import encode_videos_split


class LogProbModel(torch.nn.Module):
    """A Qwen2.5-VL model that returns per-token log-probs (and entropy) of scored tokens."""

    def __init__(
        self,
        model: torch.nn.Module,
        sp_group: dist.ProcessGroup | None = None,
        token_chunk: int = 2048,
        vocab_chunk: int = 32768,
        attention: str | None = None,
        pack: bool = True,
        layout: str = "auto",
        kv_block: int = 1024,
        vision_attention: str | None = "varlen",
    ):
        super().__init__()
        self.model = model
        self.sp_group = sp_group
        self.sp_size = dist.get_world_size(sp_group) if sp_group is not None else 1
        self.sp_rank = dist.get_rank(sp_group) if sp_group is not None else 0
        self.token_chunk, self.vocab_chunk = token_chunk, vocab_chunk
        self.pack = pack  # rows packed end to end (varlen attention), never a [B, 1, L, L] mask
        text = getattr(
            model.config, "text_config", model.config
        )  # text-only LMs: the config itself
        self.layout = attention_layout(layout, text.num_attention_heads, self.sp_size)
        if self.layout == "kv_gather" and not pack:
            raise ValueError(
                "parallel.attention_layout=kv_gather needs packed rows (parallel.pack=true)"
            )
        self.kv_block = kv_block
        use_ulysses_attention(model, attention)
        if vision_attention == "varlen" and hasattr(model.config, "vision_config"):
            use_varlen_vision_attention(model)

    @property
    def split_active(self) -> bool:
        return self.sp_size > 1

    def encode_videos(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-video embeddings (equal on every SP rank), split by frames over the SP group when
        there is one: what the trainer caches once per video and step."""
        return [e.clone() for e in self._encode_videos(pixel_values, grid_thw)]

    def _encode_videos(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        if not self.split_active:
            return encode_videos(self.model, pixel_values, grid_thw)
        return encode_videos_split(
            self.model, pixel_values, grid_thw, self.sp_group, self.sp_rank, self.sp_size
        )

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
        input_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs [B, L], entropy [B, L] or None) of the tokens where score_mask > 0.
        `video_mask` [B, L] marks where the video embeddings go (batch.mm_token_type_ids == 2);
        without it every <|video_pad|> token id is taken for a video position. `input_bias`, a
        scalar added to the input embeddings: a zero tied to a dummy vision encode, so its
        backward runs after the decoder layers' as a real video's does (lockstep.py)."""
        if video_embeds is None and pixel_values_videos is not None:
            video_embeds = self._encode_videos(pixel_values_videos, video_grid_thw)
        if video_embeds is None:
            raise ValueError("give cached video_embeds or pixel_values_videos with video_grid_thw")
        b, length = input_ids.shape
        if position_ids.shape != (3, b, length):
            raise ValueError(
                f"position_ids must be [3, {b}, {length}] (full sequence), got {tuple(position_ids.shape)}"
            )
        inner = base_model(self.model)
        if video_mask is None:  # callers holding a Batch pass mm_batch.video_positions(batch)
            video_mask = input_ids == inner.config.video_token_id
        if self.pack:
            return self._forward_packed(
                input_ids,
                attention_mask,
                position_ids,
                score_mask,
                video_embeds,
                video_mask,
                temperature,
                with_entropy,
                input_bias,
            )
        embeds = embed_with_video(self.model, input_ids, video_embeds, video_mask)
        if input_bias is not None:
            embeds = embeds + input_bias
        masks = full_sequence_masks(inner.language_model, embeds, attention_mask)
        split = SequenceSplit.even(length, self.sp_size)
        start, end = split.bounds(self.sp_rank)
        hidden = self._language_model(
            embeds[:, start:end], position_ids[:, :, start:end], masks, split, None
        )
        # Hidden state at position p predicts token p + 1: this rank scores tokens start+1..end.
        scored = score_mask[:, 1:] > 0
        rows, cols = scored[:, start:end].nonzero(as_tuple=True)
        targets = input_ids[:, 1:][:, start:end][rows, cols]
        lp, ent = self._score(hidden[rows, cols], targets, temperature, with_entropy)
        if self.split_active:
            counts = [int(scored[:, s:e].sum()) for s, e in map(split.bounds, range(self.sp_size))]
            lp, ent = self._gather(lp, counts), self._gather(ent, counts)
            # gathered rows come rank by rank, each rank's in row-major order of its slice
            order = [
                scored[:, s:e].nonzero() + torch.tensor([0, s], device=scored.device)
                for s, e in map(split.bounds, range(self.sp_size))
            ]
            rows, cols = torch.cat(order).unbind(1)
        return self._scatter(b, length, rows, cols + 1, lp, ent, input_ids.device)

    def _forward_packed(
        self,
        input_ids,
        attention_mask,
        position_ids,
        score_mask,
        video_embeds,
        video_mask,
        temperature,
        with_entropy,
        input_bias=None,
    ):
        """The rows packed end to end (padding dropped), split over the SP ranks as one sequence."""
        b, length = input_ids.shape
        inner = base_model(self.model)
        check_no_sliding_layers(inner.language_model)
        valid = attention_mask.bool()
        rows_idx, cols_idx = valid.nonzero(as_tuple=True)  # packed order: row by row
        packed = PackedRows(tuple(int(n) for n in valid.sum(1).tolist()))
        if len(video_embeds) == b:  # name the row whose embedding does not fit
            for i, ve in enumerate(video_embeds):
                n = int(video_mask[i].sum())
                if ve.shape[0] != n:
                    raise ValueError(
                        f"row {i}: video embedding of shape {tuple(ve.shape)} does not fit "
                        f"{n} video tokens"
                    )
        packed_embeds = [ve for ve in video_embeds if ve.shape[0]]
        embeds = embed_with_video(
            self.model,
            input_ids[valid][None],
            [torch.cat(packed_embeds)] if packed_embeds else [video_embeds[0][:0]],
            video_mask[valid][None],
        )
        if input_bias is not None:
            embeds = embeds + input_bias
        pos = position_ids[:, valid][:, None]  # [3, 1, T]
        # packed token i predicts packed token i + 1 of the same row
        nxt = (cols_idx + 1).clamp(max=length - 1)
        scored = (score_mask[rows_idx, nxt] > 0) & (cols_idx + 1 < length)
        targets = input_ids[rows_idx, nxt]
        split = SequenceSplit.even(packed.total, self.sp_size)
        start, end = split.bounds(self.sp_rank)
        hidden = self._language_model(
            embeds[:, start:end], pos[:, :, start:end], {"full_attention": None}, split, packed
        )[0]
        local = scored[start:end].nonzero(as_tuple=True)[0]
        lp, ent = self._score(hidden[local], targets[start:end][local], temperature, with_entropy)
        if self.split_active:
            counts = [int(scored[s:e].sum()) for s, e in map(split.bounds, range(self.sp_size))]
            lp, ent = self._gather(lp, counts), self._gather(ent, counts)
        where = scored.nonzero(as_tuple=True)[0]  # rank by rank = ascending packed order
        return self._scatter(
            b, length, rows_idx[where], cols_idx[where] + 1, lp, ent, input_ids.device
        )

    def _language_model(
        self, embeds, position_ids, masks, split: SequenceSplit, packed: PackedRows | None
    ):
        extra = {}
        if self.split_active:
            extra["sequence_parallel"] = SPContext(
                self.sp_group, self.sp_rank, split, self.layout, self.kv_block
            )
        if packed is not None:
            extra["packed_rows"] = packed
            if base_model(self.model).config.model_type in ("qwen3_vl", "qwen3_vl_moe"):
                masks = None  # its text model takes no mask mapping; packed attention reads no mask
        return (
            base_model(self.model)
            .language_model(
                inputs_embeds=embeds,
                position_ids=position_ids,
                attention_mask=masks,
                use_cache=False,
                **extra,
            )
            .last_hidden_state
        )

    def _score(self, hidden, targets, temperature, with_entropy):
        weight = self.model.get_output_embeddings().weight
        return linear_logprobs(
            hidden, weight, targets, temperature, self.token_chunk, self.vocab_chunk, with_entropy
        )

    def _gather(self, x: torch.Tensor | None, counts: list[int]) -> torch.Tensor | None:
        return None if x is None else gather_rows(x, counts, self.sp_rank, self.sp_group)

    @staticmethod
    def _scatter(b, length, rows, cols, lp, ent, device):
        out = torch.zeros((b, length), dtype=torch.float32, device=device).index_put(
            (rows, cols), lp
        )
        ent_out = None if ent is None else torch.zeros_like(out).index_put((rows, cols), ent)
        return out, ent_out

    def generate(self, *args, **kwargs):
        """The wrapped model's `generate` (unsplit; sequence parallelism is for scoring)."""
        return self.model.generate(*args, **kwargs)

    def run_unsharded(self, fn, *args, **kwargs):
        """fn(wrapped model, *args, **kwargs) with the root's own parameters (embeddings, lm_head,
        norms, patch embedding, merger) unsharded for its duration - a registered FSDP forward
        method (mesh.shard_log_prob_model); the decoder layers / vision blocks all-gather as they
        are called (training.sequence_parallel.lockstep keeps the ranks in step)."""
        return fn(self.model, *args, **kwargs)
