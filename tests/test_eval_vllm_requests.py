"""The `vllm` eval engine's requests (issue 13.2), built on CPU without vLLM and checked against
what the `hf` engine feeds the model: a text question is the hf engine's token ids alone; a
Qwen3-VL question is token ids whose `<|vision_start|><|video_pad|><|vision_end|>`, expanded the
way vLLM's Qwen3-VL prompt update does (a transcription, tests/fixtures/vllm_qwen3_vl.py) with
the timestamps it reads from the request's metadata, gives the hf engine's ids exactly; its
frames patch to the hf engine's pixels bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.engines import Prompt
from eval.engines.vllm_engine import prepare_item
from eval.engines.vllm_requests import engine_options, eval_request, qwen3_vl_video_metadata
from eval.task import EvalItem
from training.models import family_of
from training.models.qwen3_vl import group_timestamps
from training.prompts import SYSTEM_PROMPT
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches

from .fixtures.model_kit import write_video
from .fixtures.vllm_qwen3_vl import vllm_expand_video, vllm_video_timestamps

SAMPLING = VideoSampling(num_frames=8, min_pixels=784, max_pixels=3136)
PIXELS = {"min_pixels": 784, "max_pixels": 3136}


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory):
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    return write_tiny_model_folder(tmp_path_factory.mktemp("q3vl"), TinyModelSpec(arch="qwen3_vl"))


@pytest.fixture(scope="module")
def qwen3_text(tmp_path_factory):
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    return write_tiny_model_folder(tmp_path_factory.mktemp("q3"), TinyModelSpec(arch="qwen3"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real 30 s video file (300 frames at 10 fps), 8 frames sampled: 4 temporal patches of
    ~7.5 s each."""
    frames = np.random.default_rng(0).integers(0, 256, (300, 48, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("clip") / "v.mp4", frames, fps=10.0)


def test_qwen3_vl_request_expands_to_the_hf_engines_ids_frames_and_timestamps(qwen3_vl, clip):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    from eval.engines.hf import HFEngine

    hf = HFEngine(str(qwen3_vl), SAMPLING, device="cpu", dtype="float32")
    item = EvalItem(
        qid="q",
        video_path=str(clip),
        question="What moves?",
        answer="A",
        options=["a ball", "a dog"],
    )
    prompt = Prompt("What moves?\nA. a ball\nB. a dog", SYSTEM_PROMPT)
    want = hf.prepare(item)
    enc = hf.encode(want, prompt)
    family, spec = family_of(qwen3_vl), VisionSpec.from_model_dir(qwen3_vl)
    got = prepare_item(item, SAMPLING, spec)
    req = eval_request(family, hf.tokenizer, got, prompt, PIXELS)
    frames, meta = req["multi_modal_data"]["video"]
    assert set(req) == {"prompt_token_ids", "multi_modal_data", "mm_processor_kwargs"}
    assert req["mm_processor_kwargs"] == {"do_sample_frames": False, "do_resize": False}
    # the frames: the hf engine's pixels and grid, bit for bit
    patches = frames_to_patches(frames, got.payload.sample_fps, spec, SAMPLING, got.timestamps_s)
    assert patches.grid_thw == want.payload.grid_thw and torch.equal(
        patches.pixel_values, want.payload.pixel_values
    )
    assert got.num_video_tokens == want.num_video_tokens
    # the timestamps: from the metadata, by transformers' own code and by vLLM's (transcribed)
    ours = group_timestamps(want.timestamps_s, 2)
    assert (
        meta["fps"] == 10.0
        and meta["frames_indices"] == got.payload.indices
        and not meta["do_sample_frames"]
    )
    proc = type("P", (), {"_calculate_timestamps": Qwen3VLProcessor._calculate_timestamps})()
    assert proc._calculate_timestamps(meta["frames_indices"], meta["fps"], 2) == ours
    assert vllm_video_timestamps(meta, 2) == ours and len(ours) == 4 and ours[-1] > 25
    # the tokens: one triple in the request, vLLM's expansion gives the hf engine's ids exactly
    ids = req["prompt_token_ids"]
    pad = hf.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert ids.count(pad) == 1 and len(ids) < len(enc.input_ids)
    assert (
        vllm_expand_video(ids, hf.tokenizer, list(want.payload.grid_thw), meta, 2) == enc.input_ids
    )


def test_variable_rate_timestamps_pass_through_at_fps_one():
    sampled = type(
        "S",
        (),
        dict(
            vfr=True,
            source_fps=29.97,
            timestamps_s=[0.0, 0.9, 2.1, 3.05],
            indices=[0, 27, 63, 91],
            total_frames=120,
        ),
    )()
    meta = qwen3_vl_video_metadata(sampled)
    assert meta["fps"] == 1.0 and vllm_video_timestamps(meta, 2) == group_timestamps(
        sampled.timestamps_s, 2
    )
    sampled.vfr = False  # a constant-rate file: its own fps and indices (i / fps, as frame_times)
    meta = qwen3_vl_video_metadata(sampled)
    assert (meta["fps"], meta["frames_indices"], meta["total_num_frames"]) == (
        29.97,
        [0, 27, 63, 91],
        120,
    )


def test_text_requests_are_the_hf_engines_ids_without_multimodal_data(qwen3_text, qwen3_vl):
    from eval.engines.hf import HFEngine

    item = EvalItem(
        qid="t",
        video_path="",
        question="What is 2 + 3?",
        answer="5",
        answer_type="numeric",
        modality="text",
    )
    prompt = Prompt("What is 2 + 3?\nAnswer with a number.", "You solve problems.")
    for model in (
        qwen3_text,
        qwen3_vl,
    ):  # a text LM, and a text question to a vision-language model
        hf = HFEngine(str(model), SAMPLING, device="cpu", dtype="float32")
        family = family_of(model)
        req = eval_request(
            family, hf.tokenizer, prepare_item(item, SAMPLING, VisionSpec()), prompt, PIXELS
        )
        assert req == {"prompt_token_ids": hf.encode(hf.prepare(item), prompt).input_ids}
    assert (
        engine_options(family_of(qwen3_text), PIXELS) == {}
    )  # no multi-modal options for a text LM
    assert engine_options(family_of(qwen3_vl), PIXELS) == {
        "limit_mm_per_prompt": {"video": 1, "image": 0}
    }
    video = EvalItem(qid="v", video_path="x.mp4", question="?", answer="A")
    prepared = type("P", (), {"item": video, "payload": None})()
    with pytest.raises(ValueError, match="a video question for the text-only Qwen3"):
        eval_request(family_of(qwen3_text), hf.tokenizer, prepared, prompt, PIXELS)


def test_qwen2_5_vl_request_keeps_its_text_prompt_and_sampling_rate(tiny_model_dir, synth_bench):
    from training.model_io import load_tokenizer

    family, spec = family_of(tiny_model_dir), VisionSpec.from_model_dir(tiny_model_dir)
    item = EvalItem(
        qid="v", video_path=str(synth_bench / "synth_0000.mp4"), question="?", answer="A"
    )
    got = prepare_item(item, SAMPLING, spec)
    req = eval_request(family, load_tokenizer(tiny_model_dir), got, Prompt("Which?", None), PIXELS)
    assert (
        req["prompt"].count("<|video_pad|>") == 1
        and req["multi_modal_data"]["video"] is got.payload.frames
    )
    assert req["mm_processor_kwargs"] == {
        "fps": got.payload.sample_fps,
        "do_sample_frames": False,
        **PIXELS,
    }
    assert engine_options(family, PIXELS)["mm_processor_kwargs"] == PIXELS
