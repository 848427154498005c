"""Model families (training.models): a Qwen2-VL folder goes through the same batches, positions,
generation and scoring as Qwen2.5-VL, with its own (unscaled) temporal positions; a folder of any
other family is refused in one line naming the supported ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.fixtures.vllm_mrope import vllm_qwen2_5_vl_positions
from training.generation import generate
from training.mm_batch import collate, encode_videos, hidden_states, rope_positions, token_logprobs
from training.model_io import load_model, load_tokenizer
from training.models import UnsupportedModelError, family_of
from training.prompts import append_response_ids, encode_example
from training.tiny_model import TinyModelSpec, build_tiny_model, write_tiny_model_folder
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches

from .test_model_kit import MCQ, NUM


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    path = write_tiny_model_folder(tmp_path_factory.mktemp("qwen2_vl"), TinyModelSpec(arch="qwen2_vl"))
    return path, load_model(path), load_tokenizer(path)


def _video(frames: int, seconds: float, seed: int):
    rng = np.random.default_rng(seed)
    return frames_to_patches(rng.integers(0, 256, (frames, 56, 56, 3), dtype=np.uint8), frames / seconds,
                             VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56), VideoSampling())


def test_family_is_read_from_config_json(qwen2_vl, tiny_model_dir):
    path, model, _ = qwen2_vl
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert family_of(path).name == "qwen2_vl" and not family_of(model.config).temporal_scaling
    assert family_of(tiny_model_dir).name == "qwen2_5_vl" and family_of(tiny_model_dir).temporal_scaling


def test_unknown_family_is_one_line_naming_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next_video"}))
    with pytest.raises(UnsupportedModelError) as err:
        family_of(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "'llava_next_video'" in msg and "qwen2_5_vl" in msg and "qwen2_vl" in msg
    with pytest.raises(UnsupportedModelError, match="no config.json"):
        family_of(tmp_path / "missing")
    with pytest.raises(ValueError, match="arch 'gemma' has no tiny model"):
        write_tiny_model_folder(tmp_path / "g", TinyModelSpec(arch="gemma"))


def test_qwen2_vl_positions_are_unscaled_as_vllm_gives_them(qwen2_vl):
    _, model, tok = qwen2_vl
    v = _video(64, 600.0, 0)  # 18.75 s per patch: Qwen2.5-VL would place time at 37.5 * i
    batch = collate([encode_example(tok, MCQ, v.num_tokens)], [v], tok.pad_token_id)
    ours = rope_positions(model, batch)[:, 0]
    c = model.config
    # vLLM's Qwen2-VL: temporal index = patch index (the transcription with 1 s per patch, 1 token/s)
    ref, _ = vllm_qwen2_5_vl_positions(batch.input_ids[0].tolist(), c.image_token_id, c.video_token_id,
                                       c.vision_start_token_id, 2, 1, [list(v.grid_thw)], None)
    assert torch.equal(ours, ref)
    assert int(ours.max()) + 1 == len(batch.input_ids[0]) - v.num_tokens + v.grid_thw[0]


def test_qwen2_vl_cached_equals_pixels_and_rollout_equals_trainer(qwen2_vl):
    _, model, tok = qwen2_vl
    vids = [_video(64, 600.0, 1), _video(32, 200.0, 2)]
    exs = [encode_example(tok, r, v.num_tokens) for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    with torch.no_grad():
        cached = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        ours = model.lm_head(hidden_states(model, batch, cached))
        native = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                       mm_token_type_ids=batch.mm_token_type_ids, position_ids=rope_positions(model, batch)).logits
    real = batch.attention_mask.bool()
    assert torch.equal(ours[real], native[real])
    gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=8,
                   video_embeds=cached, generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)], vids, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, hidden_states(model, full, cached), full.input_ids, full.loss_mask)
    for i in range(2):
        trainer = lp[i][full.loss_mask[i].bool()]
        assert (trainer - torch.tensor(gen.logprobs[i])).abs().max() <= 1e-5


def _sp_inputs(tok):
    """A tiny Qwen2-VL (3 query / 1 KV heads: neither SP size divides them) in train mode and a
    left-padded batch of two long-video rows (600 s / 64 frames, 300 s / 31 frames) of odd length."""
    model, _ = build_tiny_model(TinyModelSpec(arch="qwen2_vl", seed=1, hidden_size=48, num_heads=3, num_kv_heads=1),
                                tok)
    model.train()
    vids = [_video(64, 600.0, 7), _video(31, 300.0, 8)]
    exs = [encode_example(tok, r, v.num_tokens, response="<think>ok so</think><answer>B</answer>")
           for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    with torch.no_grad():
        embeds = [e.clone() for e in encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)]
    return model, batch, embeds


def _sp_loss(lp, mask):
    return -(lp * mask * torch.linspace(0.5, 1.5, lp.shape[1])).sum() / mask.sum()


def _sp_rank(rank, world, tok):
    import torch.distributed as dist

    from training.mm_batch import video_positions
    from training.sequence_parallel.mesh import ParallelConfig, build_log_prob_model, init_parallel

    model, batch, embeds = _sp_inputs(tok)
    lpm = build_log_prob_model(model, init_parallel(sp_size=world), ParallelConfig(sp_size=world, fsdp=False))
    lp, _ = lpm(batch.input_ids, batch.attention_mask, rope_positions(model, batch), batch.loss_mask,
                video_embeds=embeds, video_mask=video_positions(batch))
    loss = _sp_loss(lp, batch.loss_mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for g in grads.values():  # each SP rank holds a share of the gradient
        dist.all_reduce(g)
        g /= world
    return lp.detach(), loss.detach(), grads


@pytest.mark.parametrize("world", [2, 4])
def test_qwen2_vl_sequence_parallel_equals_one_process(world):
    from training.grpo.logprobs import sequence_logprobs
    from training.sequence_parallel.local_group import run_local_group
    from training.tiny_model import train_tokenizer

    tok = train_tokenizer(1024)
    model, batch, embeds = _sp_inputs(tok)
    ref = sequence_logprobs(model, batch, embeds)[0]
    ref_loss = _sp_loss(ref, batch.loss_mask)
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert batch.input_ids.shape[1] % world and ref_grads
    sel = batch.loss_mask.bool()
    for lp, loss, grads in run_local_group(_sp_rank, world, tok):
        assert (lp[sel] - ref[sel]).abs().max() <= 1e-5
        assert abs(float(loss - ref_loss.detach())) <= 1e-5
        assert max(float((grads[n] - g).abs().max()) for n, g in ref_grads.items()) <= 1e-5
