"""Qwen3-VL adapter (issue 13.2): tiny model, video layout without torchvision (patch 16, clip
pixel budget, timestamped frame groups) against transformers' own Qwen3-VL processing code,
project-owned positions, DeepStack features in the cached embeddings (cached == pixel path
bitwise), rollout == trainer log-probs on long videos (10-20 s per temporal patch)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from training.generation import generate
from training.grpo.logprobs import sequence_logprobs
from training.mm_batch import collate, encode_videos, hidden_states, rope_positions, token_logprobs
from training.model_io import load_model, load_tokenizer
from training.models import family_of
from training.models import qwen3_vl as q3
from training.prompts import append_response_ids, encode_example
from training.tiny_model import TinyModelSpec, write_tiny_model_folder
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches, patchify

from .test_model_kit import MCQ, NUM


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory):
    path = write_tiny_model_folder(tmp_path_factory.mktemp("qwen3_vl"), TinyModelSpec(arch="qwen3_vl"))
    return path, load_model(path), load_tokenizer(path)


def _video(spec: VisionSpec, frames: int, seconds: float, seed: int, size: int = 56):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    stamps = [i * seconds / frames for i in range(frames)]
    return frames_to_patches(pixels, frames / seconds, spec, VideoSampling(), stamps)


def _encode(tok, rec, v):
    return encode_example(tok, rec, v.num_tokens, video_groups=q3.frame_groups(v.grid_thw, v.merge_size,
                                                                               v.timestamps_s, 2))


def test_tiny_folder_is_a_qwen3_vl_with_deepstack(qwen3_vl):
    from transformers import AutoModelForImageTextToText

    path, model, _ = qwen3_vl
    fam = family_of(path)
    assert fam.name == "qwen3_vl" and fam.frame_groups and fam.deepstack and not fam.temporal_scaling
    assert type(AutoModelForImageTextToText.from_pretrained(path)).__name__ == "Qwen3VLForConditionalGeneration"
    assert model.config.vision_config.patch_size == 16 and model.config.vision_config.deepstack_visual_indexes
    spec = VisionSpec.from_model_dir(path)
    assert spec.clip_budget and spec.patch_size == 16 and spec.image_mean == [0.5] * 3


def test_video_layout_matches_transformers_qwen3_vl_processing(qwen3_vl):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import (
        Qwen3VLVideoProcessor,
        smart_resize,
    )

    path, _, tok = qwen3_vl
    spec = VisionSpec.from_model_dir(path)
    # the clip budget: frames x height x width, as the processor's smart_resize applies it
    for frames, size in ((64, 56), (16, 56), (8, 120)):
        v = _video(spec, frames, 600.0, 0, size)
        h, w = smart_resize(frames, size, size, 2, 32, spec.min_pixels, spec.max_pixels)
        assert v.grid_thw == (frames // 2, h // 16, w // 16)
    # patches: the processor's own patchify of the same normalised frames
    x = np.random.default_rng(1).standard_normal((6, 64, 96, 3)).astype(np.float32)
    ours, grid = patchify(x, spec)
    theirs, *tgrid = Qwen3VLVideoProcessor.patchify(None, torch.from_numpy(x).permute(0, 3, 1, 2)[None], 16, 2, 2)
    assert grid == tuple(tgrid) and torch.equal(torch.from_numpy(ours), theirs[0])
    # the prompt text: the processor's placeholder for the same frames, grid and timestamps
    v = _video(spec, 64, 600.0, 2)
    idx = list(range(0, 640, 10))  # frame indices of the 64 frames of a 600 s clip at 1.0667 fps
    proc = types.SimpleNamespace(video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
                                 vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                                 video_token="<|video_pad|>")
    proc._calculate_timestamps = types.MethodType(Qwen3VLProcessor._calculate_timestamps, proc)
    meta = types.SimpleNamespace(fps=640 / 600.0, frames_indices=idx)
    want = Qwen3VLProcessor.replace_video_token(proc, {"video_grid_thw": torch.tensor([v.grid_thw]),
                                                       "video_metadata": [meta]}, 0)
    groups = q3.frame_groups(v.grid_thw, 2, [i / meta.fps for i in idx], 2)
    assert q3.placeholder_text(groups) == want
    enc = _encode(tok, MCQ, v)
    text = tok.decode(enc.input_ids)
    assert want in text and "<|vision_start|><|vision_start|>" not in text and text.count("seconds>") == 32
    assert sum(t == 2 for t in enc.mm_token_type_ids) == v.num_tokens
    with pytest.raises(ValueError, match="make 2 groups but the grid has t=32"):
        q3.frame_groups(v.grid_thw, 2, [0.0, 1.0, 2.0], 2)


def test_positions_equal_transformers_get_rope_index_on_long_videos(qwen3_vl):
    path, model, tok = qwen3_vl
    spec = VisionSpec.from_model_dir(path)
    vids = [_video(spec, 64, 600.0, 3), _video(spec, 32, 640.0, 4)]  # 18.75 s and 40 s per temporal patch
    batch = collate([_encode(tok, r, v) for r, v in zip((MCQ, NUM), vids, strict=True)], vids, tok.pad_token_id)
    ours = rope_positions(model, batch)
    ref, _ = model.model.get_rope_index(batch.input_ids, batch.mm_token_type_ids, video_grid_thw=batch.video_grid_thw,
                                        attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    assert torch.equal(ours[:, real], ref[:, real])
    # time enters only through the timestamp text: every frame group's tokens share one T value
    row = ours[:, 1, real[1]]
    vid = batch.mm_token_type_ids[1, real[1]] == 2
    t_vals = row[0, vid].unique()
    assert len(t_vals) == 16 and bool((row[1, vid] >= row[0, vid]).all())


def test_cached_deepstack_embeddings_equal_the_pixel_path_and_rollout_equals_trainer(qwen3_vl):
    path, model, tok = qwen3_vl
    spec = VisionSpec.from_model_dir(path)
    vids = [_video(spec, 32, 300.0, 5), _video(spec, 24, 240.0, 6)]  # 18.75 s and 20 s per temporal patch
    exs = [_encode(tok, r, v) for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    H = model.config.text_config.hidden_size
    levels = len(model.config.vision_config.deepstack_visual_indexes)
    with torch.no_grad():
        cached = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        assert [c.shape for c in cached] == [(v.num_tokens, (1 + levels) * H) for v in vids]
        ours = model.lm_head(hidden_states(model, batch, cached))
        native = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                       mm_token_type_ids=batch.mm_token_type_ids, position_ids=rope_positions(model, batch)).logits
        without = model.lm_head(hidden_states(model, batch, [c[:, :H] for c in cached]))
    real = batch.attention_mask.bool()
    assert torch.equal(ours[real], native[real])  # bitwise
    assert (without[real] - native[real]).abs().max() > 1e-3  # the DeepStack features matter
    gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=8,
                   video_embeds=cached, generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)], vids,
                   tok.pad_token_id, with_pixels=False)
    with torch.no_grad():
        lp, _ = token_logprobs(model, hidden_states(model, full, cached), full.input_ids, full.loss_mask)
        lp2, _ = sequence_logprobs(model, full, cached)  # the GRPO scorer (right-aligned rows)
    for i in range(2):
        sel = full.loss_mask[i].bool()
        want = torch.tensor(gen.logprobs[i])
        assert len(want) > 0
        assert (lp[i][sel] - want).abs().max() <= 1e-5
        assert (lp2[i][sel] - want).abs().max() <= 1e-5


def test_wide_embeddings_are_refused_by_families_without_deepstack(tiny_model_dir):
    from training.mm_batch import embed_with_video

    model = load_model(tiny_model_dir)
    ids = torch.zeros((1, 3), dtype=torch.long)
    mask = torch.tensor([[False, True, False]])
    with pytest.raises(ValueError, match="width 128 do not fit token embeddings of width 64"):
        embed_with_video(model, ids, [torch.zeros((1, 128))], mask)


def test_sft_and_grpo_steps_through_the_cli(qwen3_vl, sft_records, colour_task, tmp_path):
    """The unchanged CLI on a Qwen3-VL folder: SFT (frame groups in the scan and the batches),
    then GRPO (vision tower once per video, rollout == trainer log-probs)."""
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    from .fixtures.grpo import grpo_overrides
    from .fixtures.sft import TINY_SFT_OVERRIDES, write_split

    path, _, _ = qwen3_vl
    runner = CliRunner()
    data = write_split(sorted(sft_records, key=lambda r: len(r.reasoning))[:4], tmp_path / "data")
    r = runner.invoke(app, ["train", "sft", "--model", str(path), "--data", str(data), "--out", str(tmp_path / "sft"),
                            *TINY_SFT_OVERRIDES, "micro_batch_size=4", "epochs=1"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "sft/summary.json").read_text())
    assert s["examples_used"] == 4 and s["examples_skipped"] == 0
    r = runner.invoke(app, ["train", "grpo", "--model", str(tmp_path / "sft/model"), "--data", str(colour_task),
                            "--out", str(tmp_path / "grpo"), *grpo_overrides(max_steps=1)])
    assert r.exit_code == 0, r.output
    (m,) = [json.loads(line) for line in (tmp_path / "grpo/metrics.jsonl").read_text().splitlines()]
    assert m["rows"] == 6 and m["vision_calls_per_video"] == 1.0 and m["rollout/logprob_diff_max"] <= 1e-5
    samples = (tmp_path / "grpo/samples.jsonl").read_text()
    assert samples


def test_offline_cache_carries_deepstack_and_timestamps(qwen3_vl, colour_task, tmp_path):
    """`embed-cache build` on a Qwen3-VL, then GRPO from the cache: no vision call, and the same
    rollouts, rewards and log-probs as the online run (one vision call per video)."""
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    from .fixtures.grpo import grpo_overrides

    path, _, _ = qwen3_vl
    runner = CliRunner()
    r = runner.invoke(app, ["embed-cache", "build", "--model", str(path), "--data", str(colour_task),
                            "--out", str(tmp_path / "cache"), "video.num_frames=4", "progress=false"])
    assert r.exit_code == 0 and "8 videos: 8 encoded" in r.output, r.output
    runs = {}
    for mode, extra in (("online", {}), ("offline", {"video.embeddings": "offline",
                                                     "video.embed_cache": str(tmp_path / "cache")})):
        r = runner.invoke(app, ["train", "grpo", "--model", str(path), "--data", str(colour_task),
                                "--out", str(tmp_path / mode), *grpo_overrides(max_steps=1, **extra)])
        assert r.exit_code == 0, r.output
        (runs[mode],) = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        runs[mode]["samples"] = (tmp_path / mode / "samples.jsonl").read_text()
    on, off = runs["online"], runs["offline"]
    assert on["vision_calls_per_video"] == 1.0 and off["vision_calls_per_video"] == 0.0
    assert off["samples"] == on["samples"] and off["reward/total"] == on["reward/total"]
    assert off["rollout/logprob_diff_max"] <= 1e-5 and off["actor/kl"] == on["actor/kl"]


def _sp_inputs(tok):
    """A tiny Qwen3-VL (3 query / 1 KV heads) in train mode, two left-padded rows of long videos
    (18.75 and 20 s per temporal patch) and their cached DeepStack-wide embeddings."""
    from training.tiny_model import build_tiny_model

    model, _ = build_tiny_model(TinyModelSpec(arch="qwen3_vl", seed=2, hidden_size=48, num_heads=3, num_kv_heads=1),
                                tok)
    model.train()
    spec = VisionSpec(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, min_pixels=4096,
                      max_pixels=64 * 64 * 64, clip_budget=True)
    vids = [_video(spec, 16, 150.0, 7), _video(spec, 8, 80.0, 8)]
    exs = [encode_example(tok, r, v.num_tokens, response="<think>ok so</think><answer>B</answer>",
                          video_groups=q3.video_groups(v)) for r, v in zip((MCQ, NUM), vids, strict=True)]
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
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    return lp.detach(), loss.detach(), grads


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_with_deepstack_equals_one_process(world):
    """Ulysses SP from cached embeddings: the DeepStack levels travel with their tokens' shard."""
    from training.sequence_parallel.local_group import run_local_group
    from training.tiny_model import train_tokenizer

    tok = train_tokenizer(1024)
    model, batch, embeds = _sp_inputs(tok)
    ref = sequence_logprobs(model, batch, embeds)[0]
    H = model.config.text_config.hidden_size
    plain = sequence_logprobs(model, batch, [e[:, :H] for e in embeds])[0].detach()
    ref_loss = _sp_loss(ref, batch.loss_mask)
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    sel = batch.loss_mask.bool()
    assert batch.input_ids.shape[1] % world and (plain[sel] - ref[sel]).abs().max() > 1e-4
    for lp, loss, grads in run_local_group(_sp_rank, world, tok):
        assert (lp[sel] - ref[sel]).abs().max() <= 1e-5
        assert abs(float(loss - ref_loss.detach())) <= 1e-5
        assert max(float((grads[n] - g).abs().max()) for n, g in ref_grads.items()) <= 1e-5


def test_moe_variant_cached_equals_pixels_and_rollout_equals_trainer(tmp_path):
    """Qwen3-VL MoE: the same adapter (frame groups, positions, DeepStack) on expert MLPs."""
    path = write_tiny_model_folder(tmp_path / "moe", TinyModelSpec(arch="qwen3_vl_moe"))
    model, tok = load_model(path), load_tokenizer(path)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration" and family_of(path).deepstack
    assert model.config.text_config.num_experts == 4
    spec = VisionSpec.from_model_dir(path)
    vids = [_video(spec, 32, 300.0, 9), _video(spec, 16, 160.0, 10)]
    exs = [_encode(tok, r, v) for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    with torch.no_grad():
        cached = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        pos = rope_positions(model, batch)
        ref, _ = model.model.get_rope_index(batch.input_ids, batch.mm_token_type_ids,
                                            video_grid_thw=batch.video_grid_thw, attention_mask=batch.attention_mask)
        ours = model.lm_head(hidden_states(model, batch, cached))
        native = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                       mm_token_type_ids=batch.mm_token_type_ids, position_ids=pos).logits
    real = batch.attention_mask.bool()
    assert torch.equal(pos[:, real], ref[:, real]) and torch.equal(ours[real], native[real])
    gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=6,
                   video_embeds=cached, generator=torch.Generator().manual_seed(0))
    full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)], vids,
                   tok.pad_token_id, with_pixels=False)
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, full, cached)
    for i in range(2):
        assert (lp[i][full.loss_mask[i].bool()] - torch.tensor(gen.logprobs[i])).abs().max() <= 1e-5


def test_eval_on_the_synthetic_benchmark(qwen3_vl, synth_bench, tmp_path):
    """`longrl eval` (hf engine) on a Qwen3-VL folder: every question scored, none an error."""
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app

    path, _, _ = qwen3_vl
    r = CliRunner().invoke(app, ["eval", "--model", str(path), "--benchmark", "synth", "--data", str(synth_bench),
                                 "--out", str(tmp_path / "ev"), "--frames", "4", "--batch-size", "4",
                                 "--set", "max_new_tokens=4", "--set", "bootstrap=50"])
    assert r.exit_code == 0, r.output
    preds = [json.loads(line) for line in (tmp_path / "ev/synth/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and {p["status"] for p in preds} <= {"answered", "unanswered"}
    assert all(p["num_frames"] == 4 and p["num_video_tokens"] > 0 for p in preds)
