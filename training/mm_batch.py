"""Batches for Qwen2.5-VL: left padding, 3-D M-RoPE positions, cached video embeddings, and
log-probs of response tokens computed in chunks.

Every forward pass in longrl (SFT, rollout prefill, old-policy/reference/update passes, eval)
goes through these functions, so the inputs are identical wherever they are computed:
- positions are always passed explicitly (without them Qwen2.5-VL silently falls back to
  different positions) and the model's cached `rope_deltas` are reset first;
- video embeddings are computed once (`encode_videos`) and scattered into the token embeddings
  at the video positions given by the token types (`embed_with_video`); a count mismatch is an
  error naming the row, never a substitution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.linear_logprobs import linear_logprobs
from training.models import family_of
from training.positions import frame_group_grids, mrope_positions
from training.prompts import EncodedExample
from training.video_inputs import VideoPatches

VIDEO_TOKEN_TYPE = 2


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] long, left padded
    attention_mask: torch.Tensor  # [B, L] long
    mm_token_type_ids: torch.Tensor  # [B, L] int
    loss_mask: torch.Tensor  # [B, L] float: 1 on response tokens
    video_grid_thw: torch.Tensor  # [B, 3] long
    second_per_grid_ts: torch.Tensor  # [B] float
    pixel_values_videos: torch.Tensor | None  # [sum tokens, D] or None when embeddings are cached
    # Videos per row, in row order, when a row may hold several videos (or none); None means one
    # video per row, so video_grid_thw[i] belongs to row i.
    video_counts: tuple[int, ...] | None = None
    # 3-D positions [3, B, L] computed once per row per step (training.grpo.logprobs) and reused
    # by every pass over the row; None: rope_positions computes them.
    position_ids: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)


def collate(examples: Sequence[EncodedExample], videos: Sequence[VideoPatches | Sequence[VideoPatches]],
            pad_id: int, with_pixels: bool = True) -> Batch:
    """Left-pad a list of (example, its video) into a Batch. Left padding keeps every response
    right-aligned so generation and training see identical positions. An entry of `videos` may
    also be a list of the row's videos in prompt order (several videos, or none)."""
    if len(examples) != len(videos):
        raise ValueError(f"{len(examples)} examples but {len(videos)} videos")
    # A "video" of zero tokens is a record without video (text-only): its row holds no video.
    videos = [[] if not isinstance(v, (list, tuple)) and v.num_tokens == 0 else v for v in videos]
    if any(isinstance(v, (list, tuple)) for v in videos):  # rows holding several videos, or none
        return _collate_multi(examples, [list(v) if isinstance(v, (list, tuple)) else [v] for v in videos],
                              pad_id, with_pixels)
    length = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    attn = torch.zeros((B, length), dtype=torch.long)
    types = torch.zeros((B, length), dtype=torch.int32)
    loss_mask = torch.zeros((B, length), dtype=torch.float32)
    for i, (ex, video) in enumerate(zip(examples, videos, strict=True)):
        n_video = sum(1 for t in ex.mm_token_type_ids if t == VIDEO_TOKEN_TYPE)
        if n_video != video.num_tokens:
            raise ValueError(f"row {i}: prompt has {n_video} video tokens but its video has {video.num_tokens}")
        off = length - len(ex.input_ids)
        input_ids[i, off:] = torch.tensor(ex.input_ids)
        attn[i, off:] = 1
        types[i, off:] = torch.tensor(ex.mm_token_type_ids, dtype=torch.int32)
        loss_mask[i, off + ex.prompt_len :] = 1.0
    return Batch(
        input_ids=input_ids,
        attention_mask=attn,
        mm_token_type_ids=types,
        loss_mask=loss_mask,
        video_grid_thw=torch.tensor([v.grid_thw for v in videos], dtype=torch.long),
        second_per_grid_ts=torch.tensor([v.second_per_grid_t for v in videos], dtype=torch.float32),
        pixel_values_videos=torch.cat([v.pixel_values for v in videos]) if with_pixels else None,
    )


def _collate_multi(examples: Sequence[EncodedExample], videos: Sequence[list[VideoPatches]], pad_id: int,
                   with_pixels: bool) -> Batch:
    length = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    attn = torch.zeros((B, length), dtype=torch.long)
    types = torch.zeros((B, length), dtype=torch.int32)
    loss_mask = torch.zeros((B, length), dtype=torch.float32)
    for i, (ex, row_videos) in enumerate(zip(examples, videos, strict=True)):
        n_video = sum(1 for t in ex.mm_token_type_ids if t == VIDEO_TOKEN_TYPE)
        want = sum(v.num_tokens for v in row_videos)
        if n_video != want:
            raise ValueError(f"row {i}: prompt has {n_video} video tokens but its {len(row_videos)} videos have {want}")
        off = length - len(ex.input_ids)
        input_ids[i, off:] = torch.tensor(ex.input_ids)
        attn[i, off:] = 1
        types[i, off:] = torch.tensor(ex.mm_token_type_ids, dtype=torch.int32)
        loss_mask[i, off + ex.prompt_len :] = 1.0
    flat = [v for row in videos for v in row]
    return Batch(
        input_ids=input_ids,
        attention_mask=attn,
        mm_token_type_ids=types,
        loss_mask=loss_mask,
        video_grid_thw=torch.tensor([v.grid_thw for v in flat], dtype=torch.long).view(-1, 3),
        second_per_grid_ts=torch.tensor([v.second_per_grid_t for v in flat], dtype=torch.float32),
        pixel_values_videos=(torch.cat([v.pixel_values for v in flat]) if flat else None) if with_pixels else None,
        video_counts=tuple(len(row) for row in videos),
    )


def row_video_grids(batch: Batch) -> tuple[list[list[tuple[int, int, int]]], list[list[float]]]:
    """Per row: the grids and seconds-per-grid of its videos, in prompt order."""
    counts = batch.video_counts if batch.video_counts is not None else (1,) * batch.size
    grids = [tuple(int(x) for x in g) for g in batch.video_grid_thw.tolist()]
    secs = [float(x) for x in batch.second_per_grid_ts.tolist()]
    if sum(counts) != len(grids):
        raise ValueError(f"batch lists {sum(counts)} videos but has {len(grids)} video grids")
    out_g, out_s, k = [], [], 0
    for c in counts:
        out_g.append(grids[k : k + c])
        out_s.append(secs[k : k + c])
        k += c
    return out_g, out_s


def right_align(attention_mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gather indices that rotate each left-padded row so its padding trails, and their inverse;
    (None, None) when no row is padded. Causal attention over right-aligned rows needs no
    padding mask: real tokens never see trailing pads. A mask that is not left padding is an
    error: rotating it would put pads between real tokens."""
    pad = (attention_mask == 0).sum(dim=1)
    if not bool(pad.any()):
        return None, None
    L = attention_mask.shape[1]
    ar = torch.arange(L, device=attention_mask.device)[None]
    idx = (ar + pad[:, None]) % L
    if bool((attention_mask.gather(1, idx) != (ar < (L - pad)[:, None]).to(attention_mask.dtype)).any()):
        raise ValueError("attention mask is not left padding; cannot right-align the rows")
    return idx, (ar - pad[:, None]) % L


def base_model(model):
    """The Qwen2_5_VLModel inside a *ForConditionalGeneration (or the model itself)."""
    return getattr(model, "model", model)


def language_model(model):
    """The decoder that turns input embeddings into hidden states, for every family: the VL
    models' `model.language_model`, or a text LM's `model.model` taking the 3-D positions too
    (training.models.text_lm.TextDecoder, attached by load_model)."""
    from training.models.text_lm import attach_decoder

    return base_model(attach_decoder(model)).language_model


def rope_positions(model, batch: Batch) -> torch.Tensor:
    """3-D M-RoPE position ids [3, B, L] for the batch (padding positions are 0), from the one
    position scheme longrl owns (training.positions), never from the installed transformers'
    `get_rope_index` (which continues text after a video at a different position). A text-only
    family gets the text positions (the same on the three axes); a video in its batch is an
    error naming the family."""
    inner = base_model(model)
    inner.rope_deltas = None  # stale deltas from an earlier generate must not leak in
    if batch.position_ids is not None:
        return batch.position_ids.to(batch.input_ids.device)
    family = family_of(model.config)
    if not family.has_vision:
        if batch.video_grid_thw.shape[0] or bool((batch.mm_token_type_ids == VIDEO_TOKEN_TYPE).any()):
            raise ValueError(f"{family.title} is a text-only model: its batches cannot hold videos")
        return mrope_positions(batch.mm_token_type_ids, batch.attention_mask, [[] for _ in range(batch.size)],
                               1, None, 1.0).to(batch.input_ids.device)
    vision = model.config.vision_config
    grids, secs = row_video_grids(batch)
    if family.frame_groups:  # Qwen3-VL: one (1, h, w) segment per temporal patch, time as text
        grids = [frame_group_grids(g) for g in grids]
    scaled = family.temporal_scaling  # Qwen2-VL: time position = patch index
    return mrope_positions(batch.mm_token_type_ids, batch.attention_mask, grids, int(vision.spatial_merge_size),
                           secs if scaled else None, getattr(vision, "tokens_per_second", 1.0)
                           ).to(batch.input_ids.device)


def encode_videos(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Vision tower + merger once: one [tokens, hidden] tensor per video (Qwen3-VL: [tokens,
    (1 + DeepStack levels) * hidden], training.models.qwen3_vl.pack_video_features)."""
    out = base_model(model).get_video_features(pixel_values, grid_thw, return_dict=True)
    if getattr(out, "deepstack_features", None):
        from training.models.qwen3_vl import attach_deepstack, pack_video_features

        attach_deepstack(model)  # the text model splits the wide embeddings again
        return pack_video_features(out)
    return list(out.pooler_output)


def batch_video_embeds(model, batch: Batch) -> list[torch.Tensor]:
    """Encode the batch's own pixels (once): one embedding per video, none for a batch without
    videos."""
    if batch.video_grid_thw.shape[0] == 0:
        return []
    if batch.pixel_values_videos is None:
        raise ValueError("batch has no pixels and no cached video embeddings were given")
    return encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)


def video_positions(batch: Batch) -> torch.Tensor:
    """[B, L] bool: where the video embeddings go. Taken from the token types (as the 3-D
    positions are), never from the <|video_pad|> id: a sampled response may contain that id as
    an ordinary text token, and it must keep its token embedding there."""
    return batch.mm_token_type_ids == VIDEO_TOKEN_TYPE


def _embed_multi(embeds: torch.Tensor, video_embeds: Sequence[torch.Tensor], mask: torch.Tensor,
                 video_counts: Sequence[int]) -> torch.Tensor:
    # Rows without video (text-only records) come with a zero-token embedding or none; their
    # row holds no video (collate), so only real videos are matched to the rows' counts.
    video_embeds = [ve for ve in video_embeds if ve.shape[0] > 0]
    if len(video_embeds) != sum(video_counts) or len(video_counts) != embeds.shape[0]:
        raise ValueError(f"{len(video_embeds)} video embeddings for rows holding {list(video_counts)} videos")
    k = 0
    for i, c in enumerate(video_counts):
        n = int(mask[i].sum())
        got = sum(int(ve.shape[0]) for ve in video_embeds[k : k + c])
        if got != n:
            raise ValueError(f"row {i}: {c} video embeddings with {got} tokens do not fit {n} video tokens")
        k += c
    if not video_embeds:
        return embeds
    flat = torch.cat([ve.to(embeds.dtype) for ve in video_embeds])
    return embeds.masked_scatter(mask.unsqueeze(-1), flat)


def _widen(model, embeds: torch.Tensor, video_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Token embeddings padded with zeros to the width of video embeddings that carry DeepStack
    features (Qwen3-VL: training.models.qwen3_vl); unchanged for every other family."""
    wide = next((ve.shape[-1] for ve in video_embeds if ve.shape[0] > 0), embeds.shape[-1])
    if wide == embeds.shape[-1]:
        return embeds
    if wide % embeds.shape[-1] or not family_of(model.config).deepstack:
        raise ValueError(f"video embeddings of width {wide} do not fit token embeddings of width {embeds.shape[-1]}")
    from training.models.qwen3_vl import attach_deepstack

    attach_deepstack(model)
    return torch.cat([embeds, embeds.new_zeros((*embeds.shape[:-1], wide - embeds.shape[-1]))], dim=-1)


def embed_with_video(model, input_ids: torch.Tensor, video_embeds: Sequence[torch.Tensor],
                     video_mask: torch.Tensor, video_counts: Sequence[int] | None = None) -> torch.Tensor:
    """Token embeddings with row i's video positions (`video_mask`, see `video_positions`)
    replaced by video_embeds[i] (or, with `video_counts`, by that row's videos in order). A
    count or width mismatch is an error naming the row."""
    embeds = _widen(model, base_model(model).get_input_embeddings()(input_ids), video_embeds)
    mask = video_mask.bool()
    if video_counts is not None:
        return _embed_multi(embeds, video_embeds, mask, video_counts)
    if len(video_embeds) != input_ids.shape[0]:
        raise ValueError(f"{input_ids.shape[0]} rows but {len(video_embeds)} video embeddings")
    for i, ve in enumerate(video_embeds):
        n = int(mask[i].sum())
        if ve.shape != (n, embeds.shape[-1]):
            raise ValueError(
                f"row {i}: video embedding of shape {tuple(ve.shape)} does not fit {n} video tokens "
                f"of width {embeds.shape[-1]}"
            )
    if not video_embeds:
        return embeds
    flat = torch.cat([ve.to(embeds.dtype) for ve in video_embeds])
    return embeds.masked_scatter(mask.unsqueeze(-1), flat)


def hidden_states(model, batch: Batch, video_embeds: Sequence[torch.Tensor] | None = None,
                  position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states [B, L, H]. Uses cached `video_embeds` when given, otherwise encodes the
    batch's pixels (once)."""
    if video_embeds is None:
        video_embeds = batch_video_embeds(model, batch)
    if position_ids is None:
        position_ids = rope_positions(model, batch)
    inputs_embeds = embed_with_video(model, batch.input_ids, video_embeds, video_positions(batch), batch.video_counts)
    out = language_model(model)(
        inputs_embeds=inputs_embeds, attention_mask=batch.attention_mask, position_ids=position_ids, use_cache=False
    )
    return out.last_hidden_state


def token_logprobs(model, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                   chunk_size: int = 1024, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[:, t] | < t) at positions where mask[:, t] > 0, as a [B, L] tensor (0
    elsewhere), and optionally the entropy there. Only the selected positions are projected to
    the vocabulary, in tiles (training.linear_logprobs), so the full [tokens x vocab] logits exist
    neither in the forward nor in the backward."""
    B, L, _ = hidden.shape
    # Position t is predicted from hidden state t-1.
    rows, cols = (mask[:, 1:] > 0).nonzero(as_tuple=True)
    weight = model.get_output_embeddings().weight
    lp, ent = linear_logprobs(hidden[:, :-1][rows, cols], weight, input_ids[:, 1:][rows, cols],
                              temperature=temperature, token_chunk=chunk_size, with_entropy=with_entropy)
    out = torch.zeros((B, L), dtype=torch.float32, device=hidden.device).index_put((rows, cols + 1), lp)
    ent_out = None
    if ent is not None:
        ent_out = torch.zeros((B, L), dtype=torch.float32, device=hidden.device).index_put((rows, cols + 1), ent)
    return out, ent_out
