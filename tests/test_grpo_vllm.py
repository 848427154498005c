"""vLLM rollout engine (GPU only): prefill from cached video embeddings, log-probs close to the
trainer's, weights synced after an update. Skipped without CUDA and the `gpu` extra."""

from __future__ import annotations

import pytest
import torch

from training.grpo.logprobs import Rollout, rows_logprobs
from training.grpo.rollout import (
    RolloutPrompt,
    SamplingSettings,
    VLLMRolloutEngine,
    collapse_video_pads,
    colocated_memory_share,
)
from training.grpo.video_cache import VideoEmbedder
from training.prompts import encode_example
from training.records import load_records
from training.video_inputs import VideoSampling, VisionSpec

from .fixtures.grpo import SYSTEM

pytestmark = pytest.mark.gpu


def test_collapse_video_pads_keeps_one_per_run():
    assert collapse_video_pads([1, 9, 9, 9, 2, 9, 3], 9) == [1, 9, 2, 9, 3]


def test_vllm_memory_share_is_sized_after_the_trainer():
    gib = 2**30
    assert colocated_memory_share(0.5, 70 * gib, 80 * gib) == 0.5  # room for what was asked
    assert abs(colocated_memory_share(0.5, 30 * gib, 80 * gib) - (30 / 80 - 0.05)) < 1e-12  # trainer holds 50
    with pytest.raises(RuntimeError, match="4.0 of 80.0 GiB free"):
        colocated_memory_share(0.5, 4 * gib, 80 * gib)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")
def test_vllm_rollout_logprobs_match_trainer(colour_task, tmp_path):
    pytest.importorskip("vllm")
    from training.model_io import load_model, load_tokenizer
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    # head_dim 64: a size every vLLM attention backend supports
    model_dir = write_tiny_model_folder(tmp_path / "m", TinyModelSpec(hidden_size=256, intermediate_size=512,
                                                                       num_heads=4, num_kv_heads=2))
    model, tok = load_model(model_dir, "bfloat16", "cuda"), load_tokenizer(model_dir)
    recs = load_records(colour_task).records[:2]
    emb = VideoEmbedder(model, "online", VideoSampling(num_frames=4), VisionSpec.from_model_dir(model_dir), False)
    videos, _ = emb.prepare(recs)
    prompts = [encode_example(tok, r, videos[r.id].num_tokens, system_prompt=SYSTEM) for r in recs]
    stop = [tok.convert_tokens_to_ids("<|im_end|>")]
    engine = VLLMRolloutEngine(str(model_dir), tok, stop, model.config.video_token_id, 0.3, "bfloat16")
    out = engine.generate([RolloutPrompt(p, videos[r.id], videos[r.id].embeds) for p, r in zip(prompts, recs, strict=True)],
                          SamplingSettings(n=4, max_new_tokens=8, seed=0))
    rows = [Rollout(r, videos[r.id], p, resp, i) for i, (r, p, g) in enumerate(zip(recs, prompts, out, strict=True))
            for resp in g]
    trainer, _ = rows_logprobs(model, emb.row_embeds, rows, tok.pad_token_id, 8, with_pixels=False,
                               temperature=1.0, chunk_size=1024)
    diffs = torch.cat([(torch.tensor(r.response.logprobs) - t.float()).abs() for r, t in zip(rows, trainer, strict=True)])
    assert diffs.mean() < 0.05  # bf16 engines differ a little; a layout error is off by whole nats
    engine.sync_weights(model)
