"""Text-only causal LMs (Qwen2 / Qwen2.5 and Qwen3): reasoning RL on records without video.

They go through the same batches, SFT and GRPO as the vision-language families: a record
without video has no video tokens, so its row has no video (training.mm_batch.collate), no
vision tower is called and no video cache is touched. Their positions are 1-D: the
consecutive text positions of each row (the same numbers the 3-D scheme gives text, on one
axis), which `mm_batch.language_model` hands to the model as [B, L].
"""

from training.models import ModelFamily, register

QWEN2 = register(ModelFamily(
    name="qwen2", model_type="qwen2", title="Qwen2 / Qwen2.5 (text)",
    hf_class="Qwen2ForCausalLM", vllm_architecture="Qwen2ForCausalLM",
    temporal_scaling=False, has_vision=False, auto_class="AutoModelForCausalLM",
))
QWEN3 = register(ModelFamily(
    name="qwen3", model_type="qwen3", title="Qwen3 (text)",
    hf_class="Qwen3ForCausalLM", vllm_architecture="Qwen3ForCausalLM",
    temporal_scaling=False, has_vision=False, auto_class="AutoModelForCausalLM",
))


class TextDecoder:
    """A text LM's decoder (`model.model`) called like the vision-language families'
    `model.model.language_model`: it takes the [3, B, L] positions every caller passes (for text
    tokens the three axes hold the same text position) and hands the model its own [B, L].
    Not an nn.Module (so it adds no parameters or state-dict keys); attribute reads pass
    through to the decoder (`.layers`, `.config`, ...)."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder

    def __call__(self, *args, position_ids=None, **kwargs):
        if position_ids is not None and position_ids.dim() == 3:
            position_ids = position_ids[0]
        return self.decoder(*args, position_ids=position_ids, **kwargs)

    def __getattr__(self, name: str):
        if name == "decoder":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.decoder, name)


def attach_decoder(model):
    """Give a text LM the `model.model.language_model` every forward pass in longrl calls (SFT,
    rollout, scoring, sequence parallelism); vision-language models are returned unchanged."""
    inner = getattr(model, "model", None)
    if inner is not None and not hasattr(inner, "language_model") and hasattr(inner, "embed_tokens"):
        inner.language_model = TextDecoder(inner)  # a plain attribute: no module registered
    return model
