"""The `vllm` engine (GPU only; vllm is imported when the engine is built, never at import).

Frames are sampled and resized by eval.engines.frames (identical to the `hf` engine's frames).
What each family's request holds - a text question's token ids alone, Qwen2.5-VL's frames with
their sampling rate (second_per_grid_ts = temporal_patch / fps, as the `hf` path), Qwen3-VL's
frames with the metadata its timestamps come from - is built by eval.engines.vllm_requests,
pure functions tested on CPU against the `hf` engine's inputs.
"""

from __future__ import annotations

import time
from typing import Any

from eval.engines import Generation, Prepared, Prompt
from eval.engines.frames import sample_frames
from eval.task import EvalItem


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_dir: str,
        sampling: Any,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 32768,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - GPU environments only
            raise RuntimeError(
                "the vllm engine needs `pip install longrl[gpu]` on a CUDA machine"
            ) from exc
        from eval.engines.vllm_requests import engine_options
        from training.model_io import load_tokenizer
        from training.models import family_of
        from training.video_inputs import VisionSpec

        self.model_dir = str(model_dir)
        self.sampling = sampling
        self.seed = seed
        self.family = family_of(model_dir)
        self.spec = VisionSpec.from_model_dir(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.pixels = {
            "min_pixels": sampling.min_pixels or self.spec.min_pixels,
            "max_pixels": sampling.max_pixels or self.spec.max_pixels,
        }
        self.dtype = "bfloat16" if dtype == "auto" else dtype
        self.llm = LLM(
            model=self.model_dir,
            dtype=self.dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            **engine_options(self.family, self.pixels),
        )
        tok = self.tokenizer
        self.stop_ids = sorted(
            {int(tok.convert_tokens_to_ids("<|im_end|>")), int(tok.eos_token_id)}
        )

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "dtype": self.dtype, "vision": dict(self.pixels)}

    def prepare(self, item: EvalItem) -> Prepared:
        return prepare_item(item, self.sampling, self.spec)

    def generate(
        self,
        prepared: list[Prepared],
        prompts: list[Prompt],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_beams: int = 1,
    ) -> list[Generation]:
        from vllm import SamplingParams

        from eval.engines.vllm_requests import eval_request

        requests = [
            eval_request(self.family, self.tokenizer, p, q, self.pixels)
            for p, q in zip(prepared, prompts, strict=True)
        ]
        if num_beams > 1:
            return self._beam_search(requests, num_beams, max_new_tokens)
        params = SamplingParams(
            temperature=max(0.0, temperature),
            top_p=top_p,
            max_tokens=max_new_tokens,
            seed=self.seed,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [
            Generation(
                o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop"
            )
            for o in outputs
        ]

    def _beam_search(
        self, requests: list[dict[str, Any]], num_beams: int, max_new_tokens: int
    ) -> list[Generation]:  # pragma: no cover - GPU only
        """vLLM's beam search (LLM.beam_search), best beam of each request."""
        from vllm.sampling_params import BeamSearchParams

        params = BeamSearchParams(beam_width=num_beams, max_tokens=max_new_tokens)
        outputs = self.llm.beam_search(requests, params)
        results = []
        for o in outputs:
            best = o.sequences[0]
            prompt_len = len(best.tokens) - len(getattr(best, "logprobs", []) or [])
            new = best.tokens[prompt_len:]
            text = self.tokenizer.decode(
                [t for t in new if t not in self.stop_ids], skip_special_tokens=True
            )
            results.append(Generation(text, len(new), bool(new) and new[-1] in self.stop_ids))
        return results


def prepare_item(item: EvalItem, sampling: Any, spec: Any) -> Prepared:
    """A question ready for a vLLM request: its frames sampled and sized exactly as the `hf`
    engine's (eval.engines.frames), with their count of video tokens; a text question as it is."""
    if item.modality == "text":
        return Prepared(item, [], 0, 0.0, None)
    t0 = time.perf_counter()
    sampled = sample_frames(item.video_path, sampling, spec, item.clip_start_s, item.clip_end_s)
    t, h, w, _ = sampled.frames.shape
    tokens = (t // spec.temporal_patch_size) * (h // spec.patch_size) * (w // spec.patch_size)
    return Prepared(
        item, sampled.timestamps_s, tokens // spec.merge_size**2, time.perf_counter() - t0, sampled
    )
