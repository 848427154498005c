"""Qwen2-VL (2B/7B/72B): full-attention vision tower; video time positions are the temporal
patch index itself (no seconds scaling, no second_per_grid_ts), as in vLLM's Qwen2-VL."""

from training.models import ModelFamily, register

FAMILY = register(ModelFamily(
    name="qwen2_vl", model_type="qwen2_vl", title="Qwen2-VL",
    hf_class="Qwen2VLForConditionalGeneration", vllm_architecture="Qwen2VLForConditionalGeneration",
    temporal_scaling=False,
))
