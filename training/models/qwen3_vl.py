"""Qwen3-VL (dense): patch 16, temporal patch 2, merge 2; each temporal patch of a video (a
"frame group") is its own vision segment, preceded by its timestamp as text; DeepStack.

What the adapter owns:
- the prompt: the chat template's `<|vision_start|><|video_pad|><|vision_end|>` becomes, per frame
  group g, `<{t_g:.1f} seconds><|vision_start|>` + frame_seqlen x `<|video_pad|>` + `<|vision_end|>`
  (`encode_frame_groups`), t_g the mean timestamp of the group's first and last frame - the
  placeholder text of transformers' Qwen3VLProcessor.replace_video_token and its
  `_calculate_timestamps` (tested against them). Qwen's original processor and vLLM replace the
  whole `<|vision_start|><|video_pad|><|vision_end|>` with it (no outer start/end pair), which is
  what this does; transformers 5.19's generic replacement keeps the template's outer pair.
- positions: every frame group is a segment of grid (1, h, w), so time enters only through the
  timestamp text (training.positions.frame_group_grids; the same numbers as transformers'
  get_rope_index and vLLM's, which agree here because no segment has more than one time step).
  The rotary frequencies are interleaved over (t, h, w) by the model itself (`mrope_interleaved`).
- DeepStack: the vision tower also returns features of some of its blocks, added to the LLM's
  hidden states at the visual positions after the first decoder layers. A cached video embedding
  carries them: [tokens, (1 + levels) * hidden] = main embedding then each level's features
  (`pack_video_features`). `mm_batch.embed_with_video` scatters these wide rows into
  zero-widened token embeddings (text rows [embedding, 0, ..., 0]), and a pre-hook on the text
  model (`attach_deepstack`) splits a wide `inputs_embeds` back into the embedding and the
  DeepStack levels - so every forward pass (rollout prefill, old/reference/update scoring, SFT,
  sequence-parallel shards, whose rows are split with their tokens) injects them as the model
  does: hidden += level at visual positions (adding the zeros at text positions leaves them
  bitwise unchanged). Decoding steps pass plain-width embeddings and are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.models import ModelFamily, register

FAMILY = register(ModelFamily(
    name="qwen3_vl", model_type="qwen3_vl", title="Qwen3-VL",
    hf_class="Qwen3VLForConditionalGeneration", vllm_architecture="Qwen3VLForConditionalGeneration",
    temporal_scaling=False, frame_groups=True, deepstack=True,
))
# The MoE variant (Qwen3-VL-30B-A3B, 235B-A22B): the same vision tower, prompt, positions and
# DeepStack; only the text model's MLPs are experts.
MOE = register(ModelFamily(
    name="qwen3_vl_moe", model_type="qwen3_vl_moe", title="Qwen3-VL MoE",
    hf_class="Qwen3VLMoeForConditionalGeneration", vllm_architecture="Qwen3VLMoeForConditionalGeneration",
    temporal_scaling=False, frame_groups=True, deepstack=True,
))

VISION_START, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"


def group_timestamps(frame_timestamps_s: Sequence[float], temporal_patch: int) -> list[float]:
    """One timestamp per frame group: the mean of its first and last frame's (a short last group
    repeats its last frame, as the processor pads it)."""
    ts = list(frame_timestamps_s)
    if not ts:
        raise ValueError("a Qwen3-VL video prompt needs the sampled frames' timestamps")
    if pad := -len(ts) % temporal_patch:
        ts += [ts[-1]] * pad
    return [(ts[i] + ts[i + temporal_patch - 1]) / 2 for i in range(0, len(ts), temporal_patch)]


def frame_groups(grid_thw: Sequence[int], merge: int, frame_timestamps_s: Sequence[float],
                 temporal_patch: int) -> list[tuple[float, int]]:
    """(timestamp, video tokens) per frame group of one video."""
    t, h, w = (int(x) for x in grid_thw)
    stamps = group_timestamps(frame_timestamps_s, temporal_patch)
    if len(stamps) != t:
        raise ValueError(f"{len(frame_timestamps_s)} frame timestamps make {len(stamps)} groups but the grid has t={t}")
    return [(s, h * w // merge**2) for s in stamps]


def video_groups(video) -> list[tuple[float, int]] | None:
    """The frame groups of a video input (VideoPatches, StepVideo) whose model lays videos out
    as timestamped frame groups; None for the other families and for rows without video."""
    if not getattr(video, "frame_groups", False) or video.num_tokens == 0:
        return None
    t = int(video.grid_thw[0])
    return frame_groups(video.grid_thw, video.merge_size, video.timestamps_s, -(-len(video.timestamps_s) // t))


def placeholder_text(groups: Sequence[tuple[float, int]]) -> str:
    """The text one video becomes (what the processor writes, with pads spelled out)."""
    return "".join(f"<{s:.1f} seconds>{VISION_START}{VIDEO_PAD * n}{VISION_END}" for s, n in groups)


def encode_frame_groups(tokenizer, text: str, groups: Sequence[tuple[float, int]]):
    """EncodedExample of a rendered prompt holding one `<|vision_start|><|video_pad|><|vision_end|>`,
    with it replaced by the timestamped frame groups. Token types: 2 on the pads only."""
    from training.prompts import EncodedExample

    triple = VISION_START + VIDEO_PAD + VISION_END
    if text.count(triple) != 1:
        raise ValueError(f"prompt must hold exactly one {triple}, found {text.count(triple)}")
    before, after = text.split(triple)
    ids, types = [], []

    def add(piece: str, kind: int = 0) -> None:
        got = tokenizer(piece, add_special_tokens=False)["input_ids"] if kind == 0 else [
            tokenizer.convert_tokens_to_ids(VIDEO_PAD)] * int(piece)
        ids.extend(got)
        types.extend([kind] * len(got))

    add(before)
    start, end = tokenizer.convert_tokens_to_ids(VISION_START), tokenizer.convert_tokens_to_ids(VISION_END)
    for s, n in groups:
        add(f"<{s:.1f} seconds>")
        ids.append(start)
        types.append(0)
        add(str(n), 2)
        ids.append(end)
        types.append(0)
    add(after)
    return EncodedExample(ids, types, len(ids))


def pack_video_features(output) -> list[torch.Tensor]:
    """get_video_features' output -> one [tokens, (1 + levels) * hidden] tensor per video: the
    merged embedding, then each DeepStack level's features of the same tokens."""
    levels = list(output.deepstack_features or [])
    return [torch.cat([main, *(lvl[i] for lvl in levels)], dim=-1) for i, main in enumerate(output.pooler_output)]


def deepstack_levels(model) -> int:
    return len(model.config.vision_config.deepstack_visual_indexes)


def embedding_width(model) -> int:
    """Width of one cached video-embedding row: the text hidden size, times (1 + DeepStack
    levels) for Qwen3-VL."""
    cfg = model.config
    hidden = int(cfg.text_config.hidden_size)
    return hidden * (1 + deepstack_levels(model)) if cfg.model_type in (FAMILY.model_type, MOE.model_type) else hidden


def _split_wide_embeds(module, args, kwargs):
    """Pre-hook of the text model: a wide inputs_embeds [B, L, (1 + levels) * H] becomes the
    embedding [B, L, H] plus DeepStack levels added at every position (zeros off the visual ones)."""
    x = kwargs.get("inputs_embeds")
    hidden = module.config.hidden_size
    if x is None or x.shape[-1] == hidden:
        return args, kwargs
    if x.shape[-1] % hidden or kwargs.get("deepstack_visual_embeds") is not None:
        raise ValueError(f"inputs_embeds width {x.shape[-1]} is not (1 + DeepStack levels) x hidden {hidden}")
    B, L, _ = x.shape
    parts = x.split(hidden, dim=-1)
    kwargs = {**kwargs, "inputs_embeds": parts[0],
              "visual_pos_masks": torch.ones((B, L), dtype=torch.bool, device=x.device),
              "deepstack_visual_embeds": [p.reshape(B * L, hidden) for p in parts[1:]]}
    return args, kwargs


def attach_deepstack(model):
    """Install the wide-embedding pre-hook on a Qwen3-VL's text model (once)."""
    lm = model.model.language_model
    if not getattr(lm, "_longrl_deepstack", False):
        lm.register_forward_pre_hook(_split_wide_embeds, with_kwargs=True)
        lm._longrl_deepstack = True
    return model
