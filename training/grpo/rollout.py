"""Rollout engines behind one small interface.

An engine turns prompts (token ids with expanded `<|video_pad|>`s plus the step's video
embeddings) into G sampled responses each, with the log-prob of every sampled token under the
temperature-scaled policy, and takes new weights after each update.

- `hf`: transformers, everywhere (the CPU default). Prefills from `inputs_embeds` built by the
  same functions as training (training.generation): same token order, same 3-D positions - so
  its log-probs match the trainer's (tested to 1e-5 in fp32). Each prompt is prefilled once
  and its G samples decode from the shared KV cache.
- `vllm`: GPU only, imported lazily. Prompts go in as token ids with the cached embeddings as
  multi-modal embedding input, laid out per family by training.grpo.rollout_vllm (text rows:
  ids alone; Qwen2/2.5-VL: one `<|video_pad|>` per video, expanded by vLLM with the same grid;
  Qwen3-VL: one image per timestamped frame group), sampled with `n=G`; weights are loaded
  into the engine after every update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from training.generation import generate
from training.grpo.rollout_vllm import VisionTokens, rollout_engine_options, rollout_request
from training.grpo.rollout_vllm import collapse_video_pads as collapse_video_pads  # its old home
from training.mm_batch import collate
from training.prompts import EncodedExample


@dataclass
class RolloutPrompt:
    prompt: EncodedExample
    video: object  # video_cache.StepVideo (grid, timing, embeddings)
    video_embeds: torch.Tensor  # [num_tokens, hidden] for this prompt's video


@dataclass
class Response:
    token_ids: list[int]
    logprobs: list[float]
    finished: bool  # ended with a stop token (False: hit max_new_tokens)


@dataclass
class SamplingSettings:
    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


class RolloutEngine(Protocol):
    name: str

    def generate(self, prompts: Sequence[RolloutPrompt], sampling: SamplingSettings
                 ) -> list[list[Response]]: ...

    def sync_weights(self, model) -> None: ...


class HFRolloutEngine:
    """Sampling with the trainer's own module (weights are shared, so sync is free).

    `share_prefix` (default): each prompt is prefilled once and its G samples decode from the
    KV cache expanded G-fold (training.generation), calls of `rows_per_call // G` prompts. Off:
    the plain path, every one of the G rows of a prompt prefilled on its own (kept for the
    equivalence tests and the bench). With `rows_per_call` a multiple of G both paths cut the
    rows into the same calls, so a seed draws the same samples on either."""

    name = "hf"

    def __init__(self, model, tokenizer, stop_ids: Sequence[int], rows_per_call: int = 64,
                 share_prefix: bool = True, sync_every: int | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = list(stop_ids)
        self.rows_per_call = max(1, rows_per_call)
        self.share_prefix = share_prefix
        self.sync_every = sync_every

    @torch.no_grad()
    def generate(self, prompts: Sequence[RolloutPrompt], sampling: SamplingSettings
                 ) -> list[list[Response]]:
        n = sampling.n
        if self.share_prefix:  # one batch row per prompt, n samples from its one prefill
            rows, per_row = list(prompts), n
            step = max(1, self.rows_per_call // n)
        else:
            rows, per_row = [p for p in prompts for _ in range(n)], 1
            step = self.rows_per_call
        device = next(self.model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(sampling.seed)  # CUDA sampling needs a CUDA generator
        was_training = self.model.training
        self.model.eval()
        flat: list[Response] = []
        try:
            for s in range(0, len(rows), step):
                chunk = rows[s:s + step]
                batch = collate([r.prompt for r in chunk], [r.video for r in chunk],
                                self.tokenizer.pad_token_id, with_pixels=False).to(device)
                out = generate(self.model, batch, self.stop_ids, self.tokenizer.pad_token_id,
                               max_new_tokens=sampling.max_new_tokens,
                               temperature=sampling.temperature, top_p=sampling.top_p,
                               video_embeds=[r.video_embeds for r in chunk], generator=gen,
                               num_samples=per_row, sync_every=self.sync_every)
                flat += [Response(t, lp, f) for t, lp, f in
                         zip(out.token_ids, out.logprobs, out.finished, strict=True)]
        finally:
            self.model.train(was_training)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def sync_weights(self, model) -> None:
        if model is not self.model:
            raise ValueError("the hf engine samples with the trainer's own model object")


class VLLMRolloutEngine:
    """vLLM on the same GPU (colocated). Needs the `gpu` extra; never imported on CPU.
    `max_frame_groups`: Qwen3-VL's images per prompt (one per temporal patch: frames / 2)."""

    name = "vllm"

    def __init__(self, model_dir: str, tokenizer, stop_ids: Sequence[int], video_token_id: int,
                 gpu_memory_utilization: float = 0.5, dtype: str = "bfloat16", seed: int = 0,
                 max_model_len: int = 0, max_frame_groups: int = 128) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf")
        import os

        # In-process engine, so the trainer can reach the model to load new weights: set, not
        # setdefault - an inherited "1" would put the model in another process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from training.models import family_of

        self.family = family_of(model_dir)
        free, total = torch.cuda.mem_get_info()
        util = colocated_memory_share(gpu_memory_utilization, free, total)
        extra = {"max_model_len": max_model_len} if max_model_len > 0 else {}
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed, gpu_memory_utilization=util, **extra,
                       logprobs_mode="processed_logprobs",  # after temperature, as ours
                       **rollout_engine_options(self.family, max_frame_groups))
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.video_token_id = video_token_id

    def generate(self, prompts: Sequence[RolloutPrompt], sampling: SamplingSettings
                 ) -> list[list[Response]]:
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature,
                                top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                                stop_token_ids=self.stop_ids, logprobs=0, seed=sampling.seed,
                                skip_special_tokens=False)
        tokens = VisionTokens.of(self.tokenizer)
        # a subclass may build its own LLM without setting the family: Qwen2.5-VL's time scaling
        family = getattr(self, "family", None)
        scaling = family.temporal_scaling if family is not None else True
        requests = [rollout_request(p.prompt.input_ids, p.video, p.video_embeds, tokens, scaling) for p in prompts]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for o in outs:
            group = []
            for c in o.outputs:
                ids = list(c.token_ids)
                lps = [next(iter(d.values())).logprob if len(d) == 1 else d[t].logprob
                       for t, d in zip(ids, c.logprobs or [], strict=True)]
                group.append(Response(ids, lps, c.finish_reason == "stop"))
            result.append(group)
        return result

    def sync_weights(self, model) -> None:
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.model.load_weights(((k, v) for k, v in model.state_dict().items()))
        self.llm.reset_prefix_cache()


def colocated_memory_share(requested: float, free_bytes: int, total_bytes: int, margin: float = 0.05) -> float:
    """vLLM's gpu_memory_utilization (a share of the whole GPU) sized after what the trainer
    already holds: at most the free share less a margin. Too little left is a clear error."""
    share = min(requested, free_bytes / total_bytes - margin)
    if share < 0.05:
        raise RuntimeError(f"rollout.engine=vllm: the trainer leaves {free_bytes / 2**30:.1f} of "
                           f"{total_bytes / 2**30:.1f} GiB free, too little for the vLLM engine "
                           "(lower the trainer's footprint, e.g. ref_offload=true, or use rollout.engine=hf)")
    return share


def make_engine(name: str, model, tokenizer, model_dir: str, stop_ids: Sequence[int], rollout_cfg,
                seed: int) -> RolloutEngine:
    if name == "hf":
        return HFRolloutEngine(model, tokenizer, stop_ids, rollout_cfg.generate_rows,
                               share_prefix=rollout_cfg.share_prefix)
    if name == "vllm":
        return VLLMRolloutEngine(model_dir, tokenizer, stop_ids, getattr(model.config, "video_token_id", -1),
                                 rollout_cfg.vllm_gpu_memory_utilization, rollout_cfg.vllm_dtype, seed,
                                 rollout_cfg.vllm_max_model_len)
    raise ValueError(f"unknown rollout engine {name!r} (hf, vllm)")
