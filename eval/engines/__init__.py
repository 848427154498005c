"""Inference engines: `hf` (transformers, batched, CPU or GPU), `vllm` (GPU, imported lazily) and
`openai` (any model behind an OpenAI-compatible endpoint, eval/engines/openai_engine.py).

An engine does two things. `prepare(item)` decodes and samples the item's video (raising
data_gen.video_io.VideoError for a video that cannot be used - the runner records that as an
error for the question, never a substitute) and reports the sampled frame times, so the runner
can choose the subtitle lines shown with those frames. `generate(prepared, prompts)` answers a
batch. Both engines sample frames with the same code (data_gen.video_io + training.video_inputs),
so a question sees the same frames whichever engine runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from eval.task import EvalItem

ENGINES = ("hf", "vllm", "openai")


@dataclass
class Prompt:
    user: str  # the question text (the video comes first in the user turn)
    system: str | None = None  # None: the chat template's default system turn


@dataclass
class Prepared:
    item: EvalItem
    timestamps_s: list[float]  # time of each sampled frame
    num_video_tokens: int
    decode_s: float  # seconds spent decoding/sampling/patching this video
    payload: Any = field(default=None, repr=False)  # engine-specific (patches, frames)


@dataclass
class Generation:
    text: str
    num_tokens: int
    finished: bool  # False when max_new_tokens ran out first
    # a request that failed for good (openai engine): recorded as that question's error;
    # retryable (a transient failure to the end) -> asked again by the next run
    error: str = ""
    retryable: bool = False


class Engine(Protocol):
    name: str

    def prepare(self, item: EvalItem) -> Prepared: ...

    def generate(
        self,
        prepared: list[Prepared],
        prompts: list[Prompt],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_beams: int = 1,
    ) -> list[Generation]: ...

    def describe(self) -> dict[str, Any]: ...


def chat_messages(prompt: Prompt, with_video: bool) -> list[dict[str, Any]]:
    """The chat turns of one question: the system turn if any, then the user turn - the video
    first, then the text; a text question's user turn has no video item (training.prompts
    builds text records' turns the same way)."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": prompt.system}] if prompt.system else []
    )
    content: list[dict[str, Any]] = [{"type": "video"}] if with_video else []
    content.append({"type": "text", "text": prompt.user})
    messages.append({"role": "user", "content": content})
    return messages


def make_engine(
    name: str,
    model_dir: str,
    sampling: Any,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    **kwargs: Any,
) -> Engine:
    """Build the engine named `name` (heavy imports happen here, not at module import)."""
    if name == "hf":
        from eval.engines.hf import HFEngine

        return HFEngine(model_dir, sampling, device=device, dtype=dtype, seed=seed)
    if name == "vllm":
        from eval.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, sampling, dtype=dtype, seed=seed, **kwargs)
    if name == "openai":
        from eval.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model_dir, sampling, seed=seed, **kwargs)
    raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if str(device).startswith("cuda") else "float32"
