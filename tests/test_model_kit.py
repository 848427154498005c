"""The tiny-model kit and video -> model inputs: layout, positions, cached embeddings, rollout."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from data_gen.schema import QARecord
from training.generation import generate
from training.mm_batch import (
    collate,
    embed_with_video,
    encode_videos,
    hidden_states,
    rope_positions,
    token_logprobs,
    video_positions,
)
from training.prompts import VIDEO_PAD, append_response_ids, encode_example
from training.video_inputs import (
    VideoSampling,
    VisionSpec,
    frame_size,
    frames_to_patches,
    load_video_patches,
)

MCQ = QARecord(id="q1", video_id="v", video_path="v.mp4", question="What colour is the circle?", answer="B",
               answer_type="multiple_choice", category="Temporal", options=["red", "blue"])
NUM = QARecord(id="q2", video_id="v", video_path="v.mp4", question="How many times did the square appear?",
               answer="3", answer_type="numeric", category="Temporal")


def _videos(spec, counts=(4, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [frames_to_patches(rng.integers(0, 256, (n, 60, 80, 3), dtype=np.uint8), 2.0, spec, VideoSampling())
            for n in counts]


def test_tiny_folder_is_deterministic_and_reloads(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from training.model_io import load_model, load_tokenizer
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    again = write_tiny_model_folder(tmp_path / "again", TinyModelSpec(seed=0))
    other = write_tiny_model_folder(tmp_path / "other", TinyModelSpec(seed=1))
    a, b, c = (load_file(p / "model.safetensors") for p in (tiny_model_dir, again, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.config.video_token_id == tok.convert_tokens_to_ids(VIDEO_PAD)
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok("<think>red</think> <answer>B</answer> 3.5")["input_ids"]
    assert tok.decode(ids) == "<think>red</think> <answer>B</answer> 3.5"


def test_patch_layout_equals_transformers_image_processor():
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 84)
    # An image is a video of one temporal patch whose frames are the same picture.
    ours = frames_to_patches(np.stack([img, img]), 2.0, spec, VideoSampling())
    ref = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 84)(images=[Image.fromarray(img)], return_tensors="np")
    assert list(ours.grid_thw) == ref["image_grid_thw"][0].tolist()
    np.testing.assert_array_equal(ours.pixel_values.numpy(), ref["pixel_values"])


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="transformers' video processor needs torchvision")
def test_patch_layout_equals_transformers_video_processor():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 84)
    ours = frames_to_patches(frames, 2.0, spec, VideoSampling())
    proc = Qwen2VLVideoProcessor(size={"shortest_edge": 28 * 28, "longest_edge": 56 * 84})
    ref = proc(videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)], return_tensors="pt", cap_pixels_per_frame=False)
    assert list(ours.grid_thw) == ref["video_grid_thw"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"], atol=1e-5, rtol=0)


def test_pixel_budget_and_total_pixels_cap():
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=28 * 28 * 64)
    h, w = frame_size(360, 640, 8, VideoSampling(), spec)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 28 * 28 * 64 and w > h
    h2, w2 = frame_size(360, 640, 64, VideoSampling(total_pixels=28 * 28 * 128), spec)
    assert h2 * w2 < h * w  # many frames share the clip budget
    assert h2 * w2 >= 28 * 28


def test_load_video_patches_by_frames_and_fps(make_video, tiny_model_dir):
    path = make_video("clip.mp4", num_frames=40, fps=10.0, size=(80, 60))
    spec = VisionSpec.from_model_dir(tiny_model_dir)
    by_frames = load_video_patches(path, VideoSampling(num_frames=6), spec)
    assert by_frames.grid_thw[0] == 3 and by_frames.second_per_grid_t == pytest.approx(2 / (6 / 4.0))
    by_fps = load_video_patches(path, VideoSampling(fps=1.0, min_frames=2, max_frames=100), spec, start_s=1.0, end_s=3.0)
    assert by_fps.grid_thw[0] == 1 and by_fps.second_per_grid_t == pytest.approx(2.0)
    assert all(1.0 <= t < 3.0 for t in by_fps.timestamps_s)


def test_forward_backward_and_generate(tiny_model):
    model, tok = tiny_model
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56)
    vids = _videos(spec)
    exs = [encode_example(tok, r, v.num_tokens, response="<think>x</think>\n<answer>B</answer>") for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    model.train()
    labels = torch.where(batch.loss_mask > 0, batch.input_ids, torch.full_like(batch.input_ids, -100))
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels,
                pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                second_per_grid_ts=batch.second_per_grid_ts, mm_token_type_ids=batch.mm_token_type_ids,
                position_ids=rope_positions(model, batch))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.lm_head.weight.grad.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    model.eval()
    prompt = collate([encode_example(tok, MCQ, vids[0].num_tokens)], vids[:1], tok.pad_token_id)
    model.model.rope_deltas = None
    # model.generate computes positions with the installed transformers' get_rope_index, which
    # continues text after a video elsewhere than the scheme longrl owns (training.positions);
    # give it longrl's positions so the comparison is of decoding alone.
    def own_rope_index(input_ids, mm_token_type_ids=None, attention_mask=None, **_):
        assert input_ids.shape == prompt.input_ids.shape
        pos = rope_positions(model, prompt)
        return pos, (pos.amax(dim=(0, 2)) + 1 - input_ids.shape[1]).view(-1, 1)

    model.model.get_rope_index = own_rope_index
    try:
        hf = model.generate(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                            pixel_values_videos=prompt.pixel_values_videos, video_grid_thw=prompt.video_grid_thw,
                            second_per_grid_ts=prompt.second_per_grid_ts, mm_token_type_ids=prompt.mm_token_type_ids,
                            max_new_tokens=8, do_sample=False)
    finally:
        del model.model.get_rope_index
    ours = generate(model, prompt, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=8, greedy=True)
    assert hf[0, prompt.input_ids.shape[1]:].tolist()[: len(ours.token_ids[0])] == ours.token_ids[0]


def test_cached_embeddings_equal_pixel_path_bitwise(tiny_model):
    model, tok = tiny_model
    vids = _videos(VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56), counts=(4, 6))
    exs = [encode_example(tok, r, v.num_tokens, response="<answer>A</answer>") for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    with torch.no_grad():
        cached = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        h_cached = hidden_states(model, batch, cached)
        model.model.rope_deltas = None
        native = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                       second_per_grid_ts=batch.second_per_grid_ts, mm_token_type_ids=batch.mm_token_type_ids,
                       position_ids=rope_positions(model, batch))
    real = batch.attention_mask.bool()
    assert torch.equal(model.lm_head(h_cached)[real], native.logits[real])
    with pytest.raises(ValueError, match="row 1"):
        embed_with_video(model, batch.input_ids, [cached[0], cached[0]], video_positions(batch))  # another video's embedding


def test_rollout_logprobs_equal_trainer_logprobs_with_padding(tiny_model):
    model, tok = tiny_model
    vids = _videos(VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56), counts=(4, 8), seed=3)
    exs = [encode_example(tok, r, v.num_tokens) for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    assert (batch.attention_mask[:, 0] == 0).any()  # one row is left padded
    gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=10,
                   temperature=1.0, generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, ids) for e, ids in zip(exs, gen.token_ids, strict=True)], vids, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, hidden_states(model, full), full.input_ids, full.loss_mask, chunk_size=4)
    for i in range(2):
        trainer = lp[i][full.loss_mask[i].bool()]
        assert trainer.shape[0] == len(gen.logprobs[i])
        assert (trainer - torch.tensor(gen.logprobs[i])).abs().max() <= 1e-5


def test_sampled_video_pad_token_in_a_response_stays_text(tiny_model):
    model, tok = tiny_model
    vids = _videos(VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56), counts=(4,))
    pad = tok.convert_tokens_to_ids(VIDEO_PAD)
    prompt = encode_example(tok, MCQ, vids[0].num_tokens)
    seq = append_response_ids(prompt, [pad, pad, tok.convert_tokens_to_ids("<|im_end|>")])
    batch = collate([seq], vids, tok.pad_token_id)
    with torch.no_grad():
        video = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        embeds = embed_with_video(model, batch.input_ids, video, video_positions(batch))
        table = model.get_input_embeddings().weight
        assert torch.equal(embeds[0, -2], table[pad]) and torch.equal(embeds[0, -3], table[pad])
        lp, _ = token_logprobs(model, hidden_states(model, batch, video), batch.input_ids, batch.loss_mask)
    assert torch.isfinite(lp).all() and (lp[0, -3:] < 0).all()
