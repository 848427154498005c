"""What the `vllm` eval engine hands vLLM, per model family, as pure functions (no vLLM import):
tested on CPU against what the `hf` engine feeds the model (tests/test_eval_vllm_requests.py).

- text (qwen2 / qwen3 families, or a text question to any model): `prompt_token_ids` only - the
  hf engine's own token ids, no multi-modal data, no multi-modal engine options.
- Qwen2.5-VL / Qwen2-VL: the rendered prompt with one `<|video_pad|>`, the frames as a uint8
  array, and `fps` (the sampling rate, so second_per_grid_ts = temporal_patch / fps) with the
  pixel budget; vLLM's processor expands the pad to the grid's count, as the hf path does.
- Qwen3-VL: `prompt_token_ids` holding the chat template's `<|vision_start|><|video_pad|>
  <|vision_end|>` and the frames with the metadata its processor reads timestamps from
  (`(frames, {"fps", "frames_indices", ...})`, `do_sample_frames: False`): vLLM's Qwen3-VL prompt
  update replaces that triple with, per temporal patch, `<t seconds>` + start + pads + end, t
  the mean of indices / fps of the patch's first and last frame - the hf engine's layout
  (training.models.qwen3_vl.encode_frame_groups). The timestamps are the hf engine's exactly: a
  constant-rate file passes its own fps and the sampled indices (frame_times is i / fps there);
  a variable-rate one passes fps 1 with the stream timestamps as the "indices" (t / 1 = t).
  `do_resize: False`: the frames are already at the clip budget's size (multiples of 32).
  A token prompt, not text: transformers' processor keeps the template's outer start/end pair
  around its placeholder (docs/models.md), vLLM's own update on token ids does not.
"""

from __future__ import annotations

from typing import Any

from eval.engines import Prepared, Prompt, chat_messages

VISION_TRIPLE = ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")


def engine_options(family: Any, pixels: dict[str, int]) -> dict[str, Any]:
    """vLLM `LLM(...)` options a family needs: none for a text LM (vLLM refuses multi-modal
    options for a text-only model), one video per prompt for the vision-language ones."""
    if not family.has_vision:
        return {}
    opts: dict[str, Any] = {"limit_mm_per_prompt": {"video": 1, "image": 0}}
    if not family.frame_groups:  # Qwen3-VL's budget is per clip and its frames come sized
        opts["mm_processor_kwargs"] = dict(pixels)
    return opts


def qwen3_vl_video_metadata(sampled: Any) -> dict[str, Any]:
    """Qwen3-VL processor metadata of pre-sampled frames (eval.engines.frames.SampledFrames)
    from which vLLM computes exactly `sampled.timestamps_s` (see the module docstring)."""
    if sampled.vfr or sampled.source_fps <= 0:
        fps, indices = 1.0, [float(t) for t in sampled.timestamps_s]
    else:
        fps, indices = float(sampled.source_fps), [int(i) for i in sampled.indices]
    total = int(sampled.total_frames) or (max(sampled.indices) + 1 if sampled.indices else 0)
    return {
        "fps": fps,
        "frames_indices": indices,
        "total_num_frames": total,
        "duration": total / sampled.source_fps if sampled.source_fps > 0 else 0.0,
        "video_backend": "pyav",
        "do_sample_frames": False,
    }


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eval_request(
    family: Any, tokenizer, prepared: Prepared, prompt: Prompt, pixels: dict[str, int]
) -> dict[str, Any]:
    """The vLLM prompt dict of one question (module docstring)."""
    from training.prompts import render_prompt

    text_only = prepared.item.modality == "text" or not family.has_vision
    if text_only and prepared.item.modality != "text":
        raise ValueError(
            f"{prepared.item.qid}: a video question for the text-only {family.title} model"
        )
    text = render_prompt(tokenizer, chat_messages(prompt, not text_only))
    if text_only:
        return {"prompt_token_ids": _ids(tokenizer, text)}
    sampled = prepared.payload
    if family.frame_groups:
        triple = "".join(VISION_TRIPLE)
        if text.count(triple) != 1:
            raise ValueError(f"prompt must hold exactly one {triple}, found {text.count(triple)}")
        before, after = text.split(triple)
        ids = (
            _ids(tokenizer, before)
            + [tokenizer.convert_tokens_to_ids(t) for t in VISION_TRIPLE]
            + _ids(tokenizer, after)
        )
        return {
            "prompt_token_ids": ids,
            "multi_modal_data": {"video": (sampled.frames, qwen3_vl_video_metadata(sampled))},
            "mm_processor_kwargs": {"do_sample_frames": False, "do_resize": False},
        }
    return {
        "prompt": text,
        "multi_modal_data": {"video": sampled.frames},
        # fps sets second_per_grid_ts; the frames are already sampled and sized.
        "mm_processor_kwargs": {"fps": sampled.sample_fps, "do_sample_frames": False, **pixels},
    }
