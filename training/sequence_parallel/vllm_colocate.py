"""vLLM rollout colocated with FSDP training on the same GPUs (GPU only, imported lazily).

UNVERIFIED ON GPU: written against vLLM 0.32's documented Python API (LLM with
`distributed_executor_backend="external_launcher"`, `enable_sleep_mode`, `sleep`/`wake_up` with
tags, `collective_rpc` with a callable, `reset_prefix_cache`) by a session without a GPU; the
CPU test suite skips it. Check it on a GPU before relying on it (see docs/sequence_parallel.md).

Every training rank owns one in-process vLLM engine (tensor parallel 1) on its own GPU, inside
the same torch.distributed job the trainer runs in (Ray Train / torchrun). Per step:
1. `sync_weights(lpm)`: wake the weight memory, stream the policy's full tensors out of the FSDP
   shards one at a time (`mesh.iter_full_tensors`: every rank all-gathers in step) into the
   engine's `load_weights` in buckets - the whole unsharded model never sits in trainer memory;
2. `generate(...)`: wake the KV cache, sample (the trainer splits prompts over ranks,
   rollout_split.py), then sleep level 2: weights and KV cache are released, so the next
   update has the GPU to itself. Weights are re-sent every step anyway, so nothing is offloaded.
Generating with weights that were released and not re-synced is an error, never silent garbage.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch

from training.grpo.rollout import Response, RolloutPrompt, SamplingSettings, VLLMRolloutEngine
from training.grpo.rollout_vllm import rollout_engine_options
from training.sequence_parallel.mesh import iter_full_tensors


def _load_into_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside the vLLM worker (collective_rpc passes the worker first)."""
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    loaded = model.load_weights(weights=weights)
    return len(loaded) if loaded is not None else len(weights)


class ColocatedVLLMEngine(VLLMRolloutEngine):
    """The `vllm` rollout engine of a multi-GPU run: one engine per rank, sleeping while the
    trainer runs, weights synced from the FSDP shards."""

    name = "vllm"

    def __init__(self, model_dir: str, tokenizer, stop_ids: Sequence[int], video_token_id: int, *,
                 gpu_memory_utilization: float = 0.4, dtype: str = "bfloat16", seed: int = 0,
                 max_model_len: int | None = None, bucket_bytes: int = 512 << 20,
                 max_frame_groups: int = 128) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("the colocated vLLM engine needs CUDA GPUs; use rollout.engine=hf")
        # In-process engine core: collective_rpc runs our callable in this process, on this GPU.
        # Set, not setdefault: an inherited "1" would move the model to another process, where
        # the weight sync cannot reach it.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from training.models import family_of

        # The family decides the multimodal options (none for a text LM, one embedded video for
        # Qwen2/2.5-VL, one embedded image per frame group for Qwen3-VL) and, in the inherited
        # generate(), how requests are built - as the single-process engine does.
        self.family = family_of(model_dir)
        extra = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization,
                       logprobs_mode="processed_logprobs",
                       distributed_executor_backend="external_launcher", tensor_parallel_size=1,
                       enable_sleep_mode=True, **extra,
                       **rollout_engine_options(self.family, max_frame_groups))
        self.tokenizer, self.stop_ids, self.video_token_id = tokenizer, list(stop_ids), video_token_id
        self.bucket_bytes = bucket_bytes
        self.llm.sleep(level=1)  # keep the loaded weights (offloaded) for a first rollout
        self.weights_valid, self.asleep_level = True, 1

    def generate(self, prompts: Sequence[RolloutPrompt], sampling: SamplingSettings
                 ) -> list[list[Response]]:
        if not self.weights_valid:
            raise RuntimeError("vLLM weights were released after the last rollout and not synced since")
        if self.asleep_level == 1:
            self.llm.wake_up()  # weights back from CPU + KV cache
        else:
            self.llm.wake_up(tags=["kv_cache"])  # weights were just synced
        try:
            return super().generate(prompts, sampling)
        finally:
            self.llm.sleep(level=2)
            self.weights_valid, self.asleep_level = False, 2

    def sync_weights(self, lpm) -> None:
        """Collective over the FSDP mesh: every rank must call it in the same step."""
        self.llm.wake_up(tags=["weights"])
        device = torch.device("cuda", torch.cuda.current_device())
        sent = 0
        for bucket in _buckets(iter_full_tensors(lpm, device), self.bucket_bytes):
            self.llm.collective_rpc(_load_into_worker, args=(bucket,))
            sent += len(bucket)
        if sent == 0:
            raise RuntimeError("no weights were sent to vLLM")
        self.llm.reset_prefix_cache()
        self.weights_valid, self.asleep_level = True, 0


def _buckets(tensors: Iterable[tuple[str, torch.Tensor]], limit: int):
    """Group (name, tensor) pairs into lists of at most `limit` bytes (one tensor may exceed it)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket
