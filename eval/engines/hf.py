"""The `hf` engine: transformers' Qwen2.5-VL with longrl's model kit, batched, greedy by default.

Prompts are encoded with training.prompts (the chat template, `<|video_pad|>` expanded to the
video's real token count), batches are left padded (training.mm_batch.collate) and decoded with
training.generation.generate - the same functions the trainer and the GRPO rollout use, so a
checkpoint is evaluated on exactly the inputs it was trained on.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from eval.engines import (
    Generation,
    Prepared,
    Prompt,
    chat_messages,
    resolve_device,
    resolve_dtype,
)
from eval.task import EvalItem


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_dir: str,
        sampling: Any,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
    ) -> None:
        from training.model_io import load_model, load_tokenizer
        from training.video_inputs import VisionSpec

        self.model_dir = str(model_dir)
        self.sampling = sampling
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.seed = seed
        self.model = load_model(model_dir, dtype=self.dtype, device=self.device)
        self.tokenizer = load_tokenizer(model_dir)
        self.spec = VisionSpec.from_model_dir(model_dir)
        tok = self.tokenizer
        self.pad_id = int(tok.pad_token_id)
        stops = {
            tok.convert_tokens_to_ids("<|im_end|>"),
            tok.eos_token_id,
            tok.convert_tokens_to_ids("<|endoftext|>"),
        }
        self.stop_ids = sorted(int(s) for s in stops if isinstance(s, int) and s >= 0)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "device": self.device,
            "dtype": self.dtype,
            "vision": {
                "patch_size": self.spec.patch_size,
                "merge_size": self.spec.merge_size,
                "temporal_patch_size": self.spec.temporal_patch_size,
                "min_pixels": self.sampling.min_pixels or self.spec.min_pixels,
                "max_pixels": self.sampling.max_pixels or self.spec.max_pixels,
            },
        }

    def prepare(self, item: EvalItem) -> Prepared:
        from training.video_inputs import load_video_patches, no_video

        if item.modality == "text":  # no video: a row without video tokens (mm_batch.collate)
            return Prepared(item, [], 0, 0.0, no_video())
        t0 = time.perf_counter()
        patches = load_video_patches(
            item.video_path, self.sampling, self.spec, item.clip_start_s, item.clip_end_s
        )
        return Prepared(
            item, patches.timestamps_s, patches.num_tokens, time.perf_counter() - t0, patches
        )

    def encode(self, prepared: Prepared, prompt: Prompt):
        from training.models.qwen3_vl import encode_frame_groups, video_groups
        from training.prompts import encode_prompt_text, render_prompt

        text = render_prompt(self.tokenizer, chat_messages(prompt, prepared.item.modality != "text"))
        if groups := video_groups(prepared.payload):  # Qwen3-VL: timestamped frame groups
            return encode_frame_groups(self.tokenizer, text, groups)
        return encode_prompt_text(self.tokenizer, text, prepared.num_video_tokens)

    def generate(
        self,
        prepared: list[Prepared],
        prompts: list[Prompt],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_beams: int = 1,
    ) -> list[Generation]:
        from training.generation import generate
        from training.mm_batch import collate

        encoded = [self.encode(p, q) for p, q in zip(prepared, prompts, strict=True)]
        if num_beams > 1:  # one question at a time, its prefill shared by the beams
            from eval.engines.beam import beam_search

            results = []
            for enc, p in zip(encoded, prepared, strict=True):
                one = collate([enc], [p.payload], self.pad_id).to(self.device)
                ids, finished = beam_search(self.model, one, self.stop_ids, num_beams,
                                            max_new_tokens)
                results.append(self._generation(ids, finished))
            return results
        batch = collate(encoded, [p.payload for p in prepared], self.pad_id).to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        out = generate(
            self.model,
            batch,
            self.stop_ids,
            self.pad_id,
            max_new_tokens=max_new_tokens,
            temperature=max(temperature, 1e-6),
            top_p=top_p,
            greedy=temperature <= 0,
            generator=generator,
        )
        return [
            self._generation(ids, finished)
            for ids, finished in zip(out.token_ids, out.finished, strict=True)
        ]

    def _generation(self, ids: list[int], finished: bool) -> Generation:
        body = ids[:-1] if finished and ids and ids[-1] in self.stop_ids else ids
        return Generation(self.tokenizer.decode(body, skip_special_tokens=True), len(ids), finished)
