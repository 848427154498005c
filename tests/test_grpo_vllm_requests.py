"""The `vllm` rollout engine's requests (issue 13.2), built on CPU without vLLM: after vLLM's
placeholder expansion (transcribed in tests/fixtures) the prompt is the trainer's tokens and
vLLM's M-RoPE (transcribed) gives the trainer's positions - Qwen3-VL frame groups as images
(long videos: 18.75 and 40 s per temporal patch), Qwen2.5-VL / Qwen2-VL with one pad per video,
text rows with their ids alone; the cached embeddings (DeepStack levels included) go in whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.grpo.rollout_vllm import VisionTokens, rollout_engine_options, rollout_request
from training.mm_batch import collate, encode_videos, rope_positions
from training.model_io import load_model, load_tokenizer
from training.models import family_of
from training.models import qwen3_vl as q3
from training.prompts import encode_example
from training.tiny_model import TinyModelSpec, write_tiny_model_folder
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches, no_video

from .fixtures.vllm_mrope import vllm_qwen2_5_vl_positions
from .fixtures.vllm_qwen3_vl import vllm_expand_images, vllm_qwen3_vl_positions
from .test_model_kit import MCQ, NUM


def _video(spec: VisionSpec, frames: int, seconds: float, seed: int):
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 56, 56, 3), dtype=np.uint8)
    stamps = [i * seconds / frames for i in range(frames)]
    return frames_to_patches(pixels, frames / seconds, spec, VideoSampling(), stamps)


def _runs(ids: list[int], token: int) -> list[int]:
    return [i for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token)]


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory):
    path = write_tiny_model_folder(tmp_path_factory.mktemp("q3vl"), TinyModelSpec(arch="qwen3_vl"))
    return path, load_model(path), load_tokenizer(path)


@pytest.mark.parametrize("frames,seconds", [(64, 600.0), (32, 640.0)])
def test_qwen3_vl_frame_groups_as_images_give_the_trainers_tokens_and_positions(
    qwen3_vl, frames, seconds
):
    path, model, tok = qwen3_vl
    v = _video(VisionSpec.from_model_dir(path), frames, seconds, 0)
    groups = q3.frame_groups(v.grid_thw, v.merge_size, v.timestamps_s, 2)
    prompt = encode_example(tok, MCQ, v.num_tokens, video_groups=groups)
    with torch.no_grad():
        embeds = encode_videos(model, v.pixel_values, torch.tensor([v.grid_thw]))[0]
    tokens = VisionTokens.of(tok)
    req = rollout_request(prompt.input_ids, v, embeds, tokens, family_of(path).temporal_scaling)
    ids, images = req["prompt_token_ids"], req["multi_modal_data"]["image"]
    t, h, w = v.grid_thw
    assert ids.count(tokens.image_pad) == t and tokens.video_pad not in ids
    assert images["image_grid_thw"].tolist() == [[1, h, w]] * t
    # vLLM expands each image pad to its grid: the trainer's ids, image pads for video pads
    expanded = vllm_expand_images(ids, tokens.image_pad, images["image_grid_thw"].tolist(), 2)
    assert expanded == [tokens.image_pad if x == tokens.video_pad else x for x in prompt.input_ids]
    # vLLM's positions of the image segments == the trainer's == vLLM's for the video form
    trainer = rope_positions(model, collate([prompt], [v], tok.pad_token_id))[:, 0]
    feats = [("image", off, [1, h, w]) for off in _runs(expanded, tokens.image_pad)]
    assert torch.equal(vllm_qwen3_vl_positions(expanded, feats, tokens.video_pad, 2), trainer)
    first = prompt.input_ids.index(tokens.video_pad)
    as_video = vllm_qwen3_vl_positions(
        prompt.input_ids, [("video", first, list(v.grid_thw))], tokens.video_pad, 2
    )
    assert torch.equal(as_video, trainer) and int(trainer.max()) + 1 < len(prompt.input_ids)
    # the embeddings whole: rows in group order, main embedding then the DeepStack levels
    hidden = model.config.vision_config.out_hidden_size
    levels = len(model.config.vision_config.deepstack_visual_indexes)
    assert torch.equal(images["image_embeds"], embeds) and embeds.shape == (
        v.num_tokens,
        hidden * (1 + levels),
    )
    with pytest.raises(ValueError, match="needs"):
        rollout_request(prompt.input_ids, v, embeds[:-1], tokens)


def test_qwen2_5_vl_and_qwen2_vl_keep_one_pad_per_video(tiny_model_dir, tmp_path):
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    v = _video(VisionSpec.from_model_dir(tiny_model_dir), 64, 600.0, 1)
    prompt = encode_example(tok, NUM, v.num_tokens)
    embeds = torch.zeros((v.num_tokens, 8))
    tokens = VisionTokens.of(tok)
    req = rollout_request(
        prompt.input_ids, v, embeds, tokens, family_of(tiny_model_dir).temporal_scaling
    )
    ids, data = req["prompt_token_ids"], req["multi_modal_data"]["video"]
    assert ids.count(tokens.video_pad) == 1 and set(data) == {
        "video_embeds",
        "video_grid_thw",
        "second_per_grid_ts",
    }
    assert float(data["second_per_grid_ts"][0]) == pytest.approx(18.75)
    i = ids.index(tokens.video_pad)
    expanded = ids[:i] + [tokens.video_pad] * v.num_tokens + ids[i + 1 :]
    assert expanded == prompt.input_ids
    c = model.config
    ref, _ = vllm_qwen2_5_vl_positions(
        expanded,
        c.image_token_id,
        c.video_token_id,
        c.vision_start_token_id,
        2,
        c.vision_config.tokens_per_second,
        [list(v.grid_thw)],
        [float(data["second_per_grid_ts"][0])],
    )
    assert torch.equal(ref, rope_positions(model, collate([prompt], [v], tok.pad_token_id))[:, 0])
    q2 = write_tiny_model_folder(tmp_path / "q2vl", TinyModelSpec(arch="qwen2_vl"))
    req = rollout_request(prompt.input_ids, v, embeds, tokens, family_of(q2).temporal_scaling)
    assert set(req["multi_modal_data"]["video"]) == {"video_embeds", "video_grid_thw"}  # no seconds


def test_text_rows_are_their_ids_alone_and_engine_options_per_family(
    qwen3_vl, tiny_model_dir, tmp_path
):
    from training.grpo.rollout import collapse_video_pads  # still importable from its old home

    path, _, tok = qwen3_vl
    tokens = VisionTokens.of(tok)
    text = MCQ.__class__(**{**MCQ.to_dict(), "video_id": "", "video_path": "", "modality": "text"})
    prompt = encode_example(tok, text, 0)
    assert rollout_request(prompt.input_ids, no_video(), torch.zeros((0, 8)), tokens) == {
        "prompt_token_ids": prompt.input_ids
    }
    with pytest.raises(ValueError, match="without video holds"):
        rollout_request([1, tokens.video_pad, 2], no_video(), torch.zeros((0, 8)), tokens)
    text_lm = write_tiny_model_folder(tmp_path / "q3", TinyModelSpec(arch="qwen3"))
    assert rollout_engine_options(family_of(text_lm), 128) == {}
    assert rollout_engine_options(family_of(path), 64) == {
        "enable_mm_embeds": True,
        "limit_mm_per_prompt": {"image": 64, "video": 0},
    }
    assert rollout_engine_options(family_of(tiny_model_dir), 64)["limit_mm_per_prompt"] == {
        "video": 1,
        "image": 0,
    }
    assert collapse_video_pads([1, 9, 9, 2], 9) == [1, 9, 2]


def test_gpu_vllm_check_dry_run_builds_the_text_and_qwen3_vl_cases():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [
            sys.executable,
            str(root / "bench/gpu_vllm_check.py"),
            "--dry-run",
            "--archs",
            "qwen3,qwen3_vl",
            "--frames",
            "64",
            "--seconds",
            "600",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[qwen3 float32] vLLM request: 109 prompt ids, multi-modal none" in out.stdout
    m = re.search(
        r"\[qwen3_vl\] prompt: (\d+) tokens, grid \((\d+), (\d+), (\d+)\), 18.75 s", out.stdout
    )
    assert m, out.stdout
    n, t, h, w = (int(x) for x in m.groups())
    # the request: one image pad per frame group instead of its h*w/4 video pads
    assert (
        f"[qwen3_vl float32] vLLM request: {n - t * h * w // 4 + t} prompt ids, multi-modal {{'image'"
        in out.stdout
    )
