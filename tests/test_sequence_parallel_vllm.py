"""The colocated vLLM rollout engine of multi-GPU GRPO. Its GPU test is skipped without CUDA and
vLLM (it was written without a GPU and has not been run: see docs/sequence_parallel.md); the
weight-bucketing it relies on is checked on CPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from training.sequence_parallel.vllm_colocate import _buckets

needs_gpu_vllm = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
    reason="needs a CUDA GPU and vllm (the gpu extra)")


def test_weight_buckets_keep_order_and_respect_the_byte_limit():
    tensors = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 5, 5, 100])]
    buckets = list(_buckets(iter(tensors), limit=25 * 4))
    assert [name for b in buckets for name, _ in b] == [name for name, _ in tensors]
    for b in buckets:  # a bucket only exceeds the limit when it holds one oversized tensor
        assert sum(t.numel() * 4 for _, t in b) <= 100 or len(b) == 1
    assert [len(b) for b in buckets] == [2, 1, 3, 1]


def _vllm_rank(rank: int, world: int, model_dir) -> dict:
    from training.grpo.rollout import RolloutPrompt, SamplingSettings
    from training.mm_batch import collate, rope_positions
    from training.model_io import load_model, load_tokenizer
    from training.prompts import EncodedExample, append_response_ids
    from training.sequence_parallel.mesh import ParallelConfig, build_log_prob_model, init_parallel
    from training.sequence_parallel.vllm_colocate import ColocatedVLLMEngine
    from training.video_inputs import VideoPatches

    state = init_parallel(1)
    tok = load_tokenizer(model_dir)
    lpm = build_log_prob_model(load_model(model_dir, device=state.device), state, ParallelConfig())
    stop = [tok.convert_tokens_to_ids("<|im_end|>")]
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    engine = ColocatedVLLMEngine(str(model_dir), tok, stop, video_id, gpu_memory_utilization=0.3,
                                 dtype="float32")
    with torch.no_grad():  # a stale engine would now sample from different weights
        for p in lpm.parameters():
            p.add_(0.02 * torch.randn_like(p))
    engine.sync_weights(lpm)
    g = torch.Generator().manual_seed(0)
    video = VideoPatches(torch.randn(2 * 4 * 4, 1176, generator=g), (2, 4, 4), 1.0, [0.0, 0.5, 1.0, 1.5])
    with torch.no_grad():
        embeds = lpm.encode_videos(video.pixel_values.to(state.device), torch.tensor([video.grid_thw]).to(state.device))[0]
    text = tok("watch the video and answer", add_special_tokens=False)["input_ids"]
    prompt = EncodedExample(text[:3] + [video_id] * video.num_tokens + text[3:],
                            [0] * 3 + [2] * video.num_tokens + [0] * (len(text) - 3), 0)
    prompt.prompt_len = len(prompt.input_ids)
    responses = engine.generate([RolloutPrompt(prompt, video, embeds)],
                                SamplingSettings(n=2, max_new_tokens=8, temperature=1.0, seed=0))[0]
    seqs = [append_response_ids(prompt, r.token_ids) for r in responses]
    batch = collate(seqs, [video] * len(seqs), tok.pad_token_id, with_pixels=False).to(state.device)
    with torch.no_grad():
        lp, _ = lpm(batch.input_ids, batch.attention_mask, rope_positions(lpm.model, batch), batch.loss_mask,
                    video_embeds=[embeds] * len(seqs), video_mask=batch.mm_token_type_ids == 2)
    diffs = [(lp[i][batch.loss_mask[i] > 0].cpu() - torch.tensor(r.logprobs)).abs().max().item()
             for i, r in enumerate(responses)]
    try:
        engine.generate([RolloutPrompt(prompt, video, embeds)], SamplingSettings(1, 4))
        stale = "generated without a sync"
    except RuntimeError as exc:
        stale = str(exc)
    return {"diffs": diffs, "stale": stale}


@pytest.mark.gpu
@needs_gpu_vllm
def test_colocated_vllm_samples_with_the_synced_fsdp_weights(tiny_model_dir):
    from training.sequence_parallel.local_group import run_local_group

    res = run_local_group(_vllm_rank, 1, tiny_model_dir, backend="nccl", start_method="spawn")[0]
    assert max(res["diffs"]) <= 1e-3, res["diffs"]  # vLLM's sampled log-probs == the trainer's (fp32)
    assert "not synced" in res["stale"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed: the GPU test covers it")
def test_colocated_engine_forces_the_in_process_engine(monkeypatch):
    """An inherited VLLM_ENABLE_V1_MULTIPROCESSING=1 would put the model in another process,
    out of reach of the weight sync: the engine sets 0 before importing vLLM (here the import
    then fails, vLLM not being installed, after the setting)."""
    import os

    from training.sequence_parallel.vllm_colocate import ColocatedVLLMEngine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ImportError):
        ColocatedVLLMEngine("model", None, [0], 1)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed: the GPU test covers it")
@pytest.mark.parametrize("arch, video, image", [("qwen3_vl", 0, 128), ("qwen2_5_vl", 1, 0), ("qwen3", None, None)])
def test_colocated_engine_takes_the_familys_multimodal_options(tmp_path, monkeypatch, arch, video, image):
    """The colocated engine asks vLLM for what the model family takes, as the single-process
    engine does: one embedded image per frame group for Qwen3-VL (its video path needs frame
    metadata an embedding lacks), one embedded video for Qwen2.5-VL, no multimodal input for a
    text LM. vLLM is absent here, so a stand-in module records the LLM(...) keyword arguments;
    everything else (the family read from the folder's config) is the real code."""
    import sys
    import types

    from training.sequence_parallel.vllm_colocate import ColocatedVLLMEngine
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    seen: dict = {}

    class RecordingLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def sleep(self, level):
            seen["slept"] = level

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=RecordingLLM))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    folder = write_tiny_model_folder(tmp_path / arch, TinyModelSpec(arch=arch))
    engine = ColocatedVLLMEngine(str(folder), None, [0], 1)
    assert engine.family.name == arch
    assert seen["distributed_executor_backend"] == "external_launcher" and seen["enable_sleep_mode"]
    if video is None:
        assert "limit_mm_per_prompt" not in seen and "enable_mm_embeds" not in seen
    else:
        assert seen["enable_mm_embeds"] is True
        assert seen["limit_mm_per_prompt"] == {"video": video, "image": image}
