"""The `vllm` engine (GPU only; vllm is imported when the engine is built, never at import).

Frames are sampled and resized by eval.engines.frames (identical to the `hf` engine's frames)
and passed to vLLM as a uint8 array with the sampling rate, so Qwen2.5-VL's temporal position
ids (second_per_grid_ts = temporal_patch / fps) match the `hf` path. The pixel budget is handed
to vLLM's processor unchanged; frames already at a conforming size are not resized again.
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
        from training.model_io import load_tokenizer
        from training.video_inputs import VisionSpec

        self.model_dir = str(model_dir)
        self.sampling = sampling
        self.seed = seed
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
            limit_mm_per_prompt={"video": 1, "image": 0},
            mm_processor_kwargs=dict(self.pixels),
        )
        tok = self.tokenizer
        self.stop_ids = sorted(
            {int(tok.convert_tokens_to_ids("<|im_end|>")), int(tok.eos_token_id)}
        )

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "dtype": self.dtype, "vision": dict(self.pixels)}

    def prepare(self, item: EvalItem) -> Prepared:
        t0 = time.perf_counter()
        sampled = sample_frames(
            item.video_path, self.sampling, self.spec, item.clip_start_s, item.clip_end_s
        )
        t, h, w, _ = sampled.frames.shape
        tokens = (
            (t // self.spec.temporal_patch_size)
            * (h // self.spec.patch_size)
            * (w // self.spec.patch_size)
        )
        return Prepared(
            item,
            sampled.timestamps_s,
            tokens // self.spec.merge_size**2,
            time.perf_counter() - t0,
            sampled,
        )

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

        from training.prompts import render_prompt

        requests = []
        for p, q in zip(prepared, prompts, strict=True):
            messages = [{"role": "system", "content": q.system}] if q.system else []
            messages.append(
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q.user}]}
            )
            requests.append(
                {
                    "prompt": render_prompt(self.tokenizer, messages),
                    "multi_modal_data": {"video": p.payload.frames},
                    # fps sets second_per_grid_ts; the frames are already sampled and sized.
                    "mm_processor_kwargs": {
                        "fps": p.payload.sample_fps,
                        "do_sample_frames": False,
                        **self.pixels,
                    },
                }
            )
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
