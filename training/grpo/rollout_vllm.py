"""What the `vllm` rollout engine hands vLLM, per model family, as pure functions (no vLLM
import): the prompt's token ids and the step's cached video embeddings as vLLM's embedding
input, laid out so that vLLM's placeholder expansion gives back the trainer's tokens and its
M-RoPE the trainer's positions (tests/test_grpo_vllm_requests.py checks both on CPU against
transcriptions of vLLM's code).

- a row without video (text LMs, text rows of a vision-language batch): `prompt_token_ids`
  only.
- Qwen2.5-VL / Qwen2-VL: each run of `<|video_pad|>` collapsed to one (vLLM expands it to the
  grid's count again) and `{"video": {"video_embeds", "video_grid_thw"[, "second_per_grid_ts"]}}`
  (seconds per temporal patch only for Qwen2.5-VL, whose time positions scale with them).
- Qwen3-VL: every frame group (`<t seconds><|vision_start|>` + pads + `<|vision_end|>`) is handed
  as one image of grid (1, h, w): its pads become one `<|image_pad|>`, its rows of the cached
  embedding (main + DeepStack levels, `[tokens, (1 + levels) * hidden]`, the layout vLLM's
  Qwen3-VL vision tower returns) that image's `image_embeds`. Why not the video embedding input:
  vLLM's Qwen3-VL video prompt update reads the frames' metadata (fps, frame indices) from the
  video item to write the timestamps, and an embedding item has none; an image of grid (1, h, w)
  takes exactly the positions of a frame group (both are one segment after text, vLLM's
  `iter_mm_grid_hw`), its DeepStack rows are merged at image and video tokens alike, and the
  timestamps stay in the prompt as the trainer's own text tokens. The only difference is the
  placeholder's id (image pad for video pad), whose embedding is replaced either way.
UNVERIFIED ON GPU (no vLLM here): bench/gpu_vllm_check.py compares these rollouts' log-probs with
the trainer's on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class VisionTokens:
    video_pad: int
    image_pad: int
    vision_start: int
    vision_end: int

    @classmethod
    def of(cls, tokenizer) -> VisionTokens:
        ids = [
            tokenizer.convert_tokens_to_ids(t)
            for t in ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
        ]
        # a text LM's tokenizer may lack them (None): -1 never matches a token
        return cls(*(int(i) if isinstance(i, int) and i >= 0 else -1 for i in ids))


def collapse_video_pads(ids: Sequence[int], video_token_id: int) -> list[int]:
    """Prompt ids with each run of <|video_pad|> reduced to one (vLLM expands it again)."""
    out: list[int] = []
    for t in ids:
        if t == video_token_id and out and out[-1] == video_token_id:
            continue
        out.append(t)
    return out


def frame_group_images(
    ids: Sequence[int], video, embeds: torch.Tensor, tokens: VisionTokens
) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Qwen3-VL: (prompt ids with each frame group's pads as one `<|image_pad|>`, the image
    embedding input {"image_embeds", "image_grid_thw"}) - see the module docstring."""
    t, h, w = (int(x) for x in video.grid_thw)
    per_group = h * w // video.merge_size**2
    if embeds.shape[0] != t * per_group:
        raise ValueError(
            f"video embeddings have {embeds.shape[0]} rows, the grid {video.grid_thw} needs "
            f"{t * per_group}"
        )
    out: list[int] = []
    runs: list[int] = []
    prev = None
    for tok in ids:
        if tok != tokens.video_pad:
            out.append(tok)
        elif prev == tokens.video_pad:
            runs[-1] += 1
        else:
            out.append(tokens.image_pad)
            runs.append(1)
        prev = tok
    if runs != [per_group] * t:
        raise ValueError(
            f"the prompt's video pads form runs {runs}, not {t} frame groups of {per_group}"
        )
    grid = torch.tensor([[1, h, w]] * t, dtype=torch.long)
    return out, {"image_embeds": embeds, "image_grid_thw": grid}


def rollout_request(
    ids: Sequence[int],
    video,
    embeds: torch.Tensor,
    tokens: VisionTokens,
    temporal_scaling: bool = True,
) -> dict[str, Any]:
    """The vLLM prompt dict of one rollout prompt (module docstring). `video` is the row's
    StepVideo (or VideoPatches); `temporal_scaling` is the family's (Qwen2.5-VL: True)."""
    if video is None or video.num_tokens == 0:
        if tokens.video_pad in ids:
            raise ValueError("a prompt without video holds <|video_pad|> tokens")
        return {"prompt_token_ids": list(ids)}
    embeds = embeds.detach().to("cpu")
    if getattr(video, "frame_groups", False):
        prompt, images = frame_group_images(ids, video, embeds, tokens)
        return {"prompt_token_ids": prompt, "multi_modal_data": {"image": images}}
    data: dict[str, torch.Tensor] = {
        "video_embeds": embeds,
        "video_grid_thw": torch.tensor([video.grid_thw]),
    }
    if temporal_scaling:
        data["second_per_grid_ts"] = torch.tensor([video.second_per_grid_t])
    return {
        "prompt_token_ids": collapse_video_pads(ids, tokens.video_pad),
        "multi_modal_data": {"video": data},
    }


def rollout_engine_options(family: Any, max_frame_groups: int) -> dict[str, Any]:
    """vLLM `LLM(...)` options of a family's rollout engine: none for a text LM; embedding input
    and one video per prompt for Qwen2/2.5-VL; up to `max_frame_groups` images (frame groups)
    per prompt for Qwen3-VL."""
    if not family.has_vision:
        return {}
    if family.frame_groups:
        return {
            "enable_mm_embeds": True,
            "limit_mm_per_prompt": {"image": max_frame_groups, "video": 0},
        }
    return {"enable_mm_embeds": True, "limit_mm_per_prompt": {"video": 1, "image": 0}}
