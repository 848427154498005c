"""Engines: batched generation equals one-question-at-a-time generation; the frames handed to
vLLM are exactly the frames the hf engine patches; the vllm engine itself on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval.engines import Prompt
from eval.engines.frames import sample_frames
from eval.task import get_task
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches, load_video_patches

SAMPLING = VideoSampling(num_frames=4, min_pixels=784, max_pixels=3136)


@pytest.mark.parametrize(
    "sampling",
    [
        SAMPLING,
        VideoSampling(num_frames=0, fps=0.4, min_frames=2, max_pixels=6272),
        VideoSampling(num_frames=3, max_pixels=3136),
    ],
)
def test_vllm_frames_are_the_hf_frames(synth_bench, tiny_model_dir, sampling) -> None:
    spec = VisionSpec.from_model_dir(tiny_model_dir)
    path = synth_bench / "synth_0000.mp4"
    for start, end in [(0.0, None), (2.0, 9.5)]:
        ref = load_video_patches(path, sampling, spec, start, end)
        got = sample_frames(path, sampling, spec, start, end)
        assert got.timestamps_s == ref.timestamps_s
        patches = frames_to_patches(got.frames, got.sample_fps, spec, sampling, got.timestamps_s)
        assert (
            patches.grid_thw == ref.grid_thw and patches.second_per_grid_t == ref.second_per_grid_t
        )
        assert torch.equal(patches.pixel_values, ref.pixel_values)


def _items(synth_bench: Path, n: int):
    items = get_task("synth").load(synth_bench)
    return items[:n]


def test_batched_generation_equals_single(tiny_model_dir, synth_bench) -> None:
    from eval.engines.hf import HFEngine

    engine = HFEngine(str(tiny_model_dir), SAMPLING, device="cpu", dtype="float32")
    task = get_task("synth")
    items = (
        _items(synth_bench, 3) + _items(synth_bench, 12)[-1:]
    )  # two videos, different prompt lengths
    prepared = [engine.prepare(it) for it in items]
    prompts = [Prompt(task.render_prompt(it), None) for it in items]
    batched = engine.generate(prepared, prompts, max_new_tokens=12)
    single = [
        engine.generate([p], [q], max_new_tokens=12)[0]
        for p, q in zip(prepared, prompts, strict=True)
    ]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.num_tokens for g in batched] == [g.num_tokens for g in single]
    assert len({len(q.user) for q in prompts}) > 1  # left padding was really exercised


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")
def test_vllm_engine_matches_hf_greedy(
    tiny_model_dir, synth_bench
) -> None:  # pragma: no cover - GPU only
    pytest.importorskip("vllm")
    from eval.engines.hf import HFEngine
    from eval.engines.vllm_engine import VLLMEngine

    task = get_task("synth")
    items = _items(synth_bench, 4)
    prompts = [Prompt(task.render_prompt(it), None) for it in items]
    hf = HFEngine(str(tiny_model_dir), SAMPLING, device="cuda", dtype="float32")
    vl = VLLMEngine(
        str(tiny_model_dir),
        SAMPLING,
        dtype="float32",
        max_model_len=2048,
        gpu_memory_utilization=0.3,
    )
    hp = [hf.prepare(it) for it in items]
    vp = [vl.prepare(it) for it in items]
    assert [p.num_video_tokens for p in hp] == [p.num_video_tokens for p in vp]
    a = hf.generate(hp, prompts, max_new_tokens=8)
    b = vl.generate(vp, prompts, max_new_tokens=8)
    assert [g.text for g in a] == [g.text for g in b]
