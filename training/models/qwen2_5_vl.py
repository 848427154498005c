"""Qwen2.5-VL (3B/7B/32B/72B): window-attention vision tower, video time positions scaled by
seconds per temporal patch (`vision_config.tokens_per_second`), second_per_grid_ts inputs."""

from training.models import ModelFamily, register

FAMILY = register(ModelFamily(
    name="qwen2_5_vl", model_type="qwen2_5_vl", title="Qwen2.5-VL",
    hf_class="Qwen2_5_VLForConditionalGeneration", vllm_architecture="Qwen2_5_VLForConditionalGeneration",
    temporal_scaling=True,
))
