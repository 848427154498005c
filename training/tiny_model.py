"""Tiny, randomly initialised models of every family longrl trains (training.models), saved as
ordinary Hugging Face folders: Qwen2.5-VL (the default), Qwen2-VL, and the text-only Qwen2 /
Qwen3 causal LMs (same tokenizer and chat template, no vision tower, no processor configs).

Nothing is downloaded: the architecture is transformers' own Qwen2_5_VLForConditionalGeneration
built from a small config, the tokenizer is a byte-level BPE trained here on a fixed corpus with
Qwen's special tokens, and the folder carries the same processor configs a real
Qwen2.5-VL-*-Instruct folder does. Every stage loads it exactly as it loads a downloaded model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from training.chat_template import QWEN_VL_CHAT_TEMPLATE

# Qwen2's special tokens, in Qwen's order (ids follow the trained vocabulary here).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
REASONING_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class TinyModelSpec:
    """Shape of a tiny Qwen2.5-VL. Defaults build in milliseconds (~0.2 M parameters)."""

    seed: int = 0
    arch: str = "qwen2_5_vl"  # model family (training.models): qwen2_5_vl, qwen2_vl, qwen3_vl, qwen2, qwen3
    vocab_size: int = 1024  # BPE vocabulary trained on the spot (special tokens included)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: list[int] = field(default_factory=list)  # empty: Qwen's 1/4, 3/8, 3/8 split
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    vision_fullatt_blocks: list[int] = field(default_factory=lambda: [1])
    tokens_per_second: int = 2  # as Qwen2.5-VL-7B
    max_position_embeddings: int = 32768
    # Pixel budget written to the folder's video processor config: tiny frames keep tests fast.
    video_min_pixels: int = 28 * 28 * 2
    video_max_pixels: int = 56 * 56


# Named sizes (`longrl model tiny --preset`, the pipeline's base_model=tiny-PRESET:SEED). "test":
# the defaults above, milliseconds to build, for tests. "learn": ~1 M parameters, the smallest
# model measured to learn the synthetic ladder's perception rung on 2 CPU cores (docs/grpo.md
# "Learning"; the same sizes as bench/bench_learning.py's MODEL): a wider LLM and vision tower and
# a video processor budget of a whole 168x112 synth frame.
TINY_PRESETS: dict[str, dict] = {
    "test": {},
    "learn": {"hidden_size": 128, "intermediate_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
              "vision_depth": 2, "vision_hidden_size": 64, "vision_intermediate_size": 128,
              "vision_num_heads": 2, "vision_fullatt_blocks": [1], "video_max_pixels": 168 * 112},
}


def preset_spec(preset: str, seed: int = 0, arch: str = "qwen2_5_vl") -> TinyModelSpec:
    """The TinyModelSpec of a named preset; an unknown name is a ValueError naming the known ones."""
    if preset not in TINY_PRESETS:
        raise ValueError(f"tiny model preset {preset!r} unknown; known: {', '.join(TINY_PRESETS)}")
    return TinyModelSpec(seed=seed, arch=arch, **TINY_PRESETS[preset])


def default_mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) in Qwen's proportions
    (Qwen2.5-VL-7B: [16, 24, 24] of 64)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _corpus() -> list[str]:
    """Fixed text the tokenizer is trained on: the words our prompts, questions and answers use."""
    words = (
        "system user assistant you are a helpful assistant watch the video and answer question think step by step "
        "first reasoning inside then give final answer options choose letter what happened "
        "before after when where why how many times did object shape colour color red green "
        "blue yellow purple orange white black cyan magenta circle square triangle star left "
        "right top bottom center middle region enter leave appear disappear move stop start "
        "change turn become stay which first last second third count number seconds minute "
        "because so the a an of in on at to from is was were it this that with for and or not "
        "yes no true false temporal goal purpose spatial plot narrative event frame clip "
    ).split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [f"<think>{' '.join(words[i:i+6])}</think> <answer>{chr(65 + i % 6)}</answer>" for i in range(0, len(words), 6)]
    lines += [f"{c}. {w}" for c, w in zip("ABCDEF", words, strict=False)]
    lines += [" ".join(str(n) for n in range(k, k + 20)) + " 3.5 0.25 12.75" for k in range(0, 200, 20)]
    lines += ["Question: Options: Answer: The answer is ( A ) ( B ) ( C ) ( D )"]
    return lines * 4


def train_tokenizer(vocab_size: int):
    """Byte-level BPE with Qwen's special tokens, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    # The reasoning-format tags are single (ordinary, decodable) tokens, as in Qwen3's vocabulary:
    # split into '<' 'answer' '>' a tiny model confuses the '>' closing </think> with the one
    # opening <answer> and never learns to put the answer after it.
    tok.add_tokens(REASONING_TAGS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
    )
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    return fast


TEXT_ARCHS = ("qwen2", "qwen3")


def _text_config(spec: TinyModelSpec, tokenizer):
    """A Qwen2 / Qwen3 causal-LM config of the tiny text size (same special tokens)."""
    from transformers import Qwen2Config, Qwen3Config

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    kw = dict(vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
              num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
              num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
              rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
              bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
              tie_word_embeddings=False)
    if spec.arch == "qwen3":
        return Qwen3Config(head_dim=spec.hidden_size // spec.num_heads, **kw)
    return Qwen2Config(**kw)


def build_tiny_model(spec: TinyModelSpec, tokenizer=None):
    """(model, tokenizer): a random model of `spec.arch` matched to the tokenizer."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = tokenizer or train_tokenizer(spec.vocab_size)
    if spec.arch in TEXT_ARCHS:
        from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM

        config = _text_config(spec, tokenizer)
        torch.manual_seed(spec.seed)
        from training.models.text_lm import attach_decoder

        model = (Qwen3ForCausalLM if spec.arch == "qwen3" else Qwen2ForCausalLM)(config)
        return attach_decoder(model).eval(), tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = spec.hidden_size // spec.num_heads
    section = spec.mrope_section or default_mrope_section(head_dim)
    if sum(section) * 2 != head_dim:
        raise ValueError(f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_num_heads,
            "out_hidden_size": spec.hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": spec.tokens_per_second,
            "window_size": 112,
            "fullatt_block_indexes": spec.vision_fullatt_blocks,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if spec.arch == "qwen2_vl":
        config = _qwen2_vl_config(config)
    elif spec.arch in ("qwen3_vl", "qwen3_vl_moe"):
        config = _qwen3_vl_config(config, spec)
    elif spec.arch != "qwen2_5_vl":
        from training.models import supported

        raise ValueError(f"arch {spec.arch!r} has no tiny model; supported: {supported()}")
    torch.manual_seed(spec.seed)
    if spec.arch in ("qwen3_vl", "qwen3_vl_moe"):
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

        from training.models.qwen3_vl import attach_deepstack

        cls = Qwen3VLMoeForConditionalGeneration if spec.arch == "qwen3_vl_moe" else Qwen3VLForConditionalGeneration
        return attach_deepstack(cls(config)).eval(), tokenizer
    model = (Qwen2_5_VLForConditionalGeneration(config) if spec.arch == "qwen2_5_vl" else
             _qwen2_vl_model(config))
    model.eval()
    return model, tokenizer


def _qwen3_vl_config(q25, spec: TinyModelSpec):
    """A Qwen3-VL config with the tiny text model (explicit head_dim, interleaved M-RoPE), the
    same special tokens, and a vision tower of patch 16 whose every block feeds DeepStack."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    t, v = q25.text_config, q25.vision_config
    rope = dict(t.rope_parameters)
    rope["mrope_interleaved"] = True
    text = {k: getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                       "bos_token_id", "eos_token_id", "pad_token_id")}
    text = {**text, "head_dim": t.hidden_size // t.num_attention_heads, "rope_parameters": rope}
    if spec.arch == "qwen3_vl_moe":  # 4 experts, 2 per token, in every layer
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=t.intermediate_size // 2,
                    decoder_sparse_step=1)
    return (Qwen3VLMoeConfig if spec.arch == "qwen3_vl_moe" else Qwen3VLConfig)(
        text_config=text,
        vision_config={"depth": v.depth, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                       "num_heads": v.num_heads, "out_hidden_size": t.hidden_size, "patch_size": 16,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
                       "deepstack_visual_indexes": list(range(spec.vision_depth))},
        image_token_id=q25.image_token_id, video_token_id=q25.video_token_id,
        vision_start_token_id=q25.vision_start_token_id, vision_end_token_id=q25.vision_end_token_id,
        tie_word_embeddings=False,
    )


def _qwen2_vl_config(q25):
    """The Qwen2-VL config with the same text model, special tokens and patching as a tiny
    Qwen2.5-VL config (Qwen2-VL's vision tower: full attention, `embed_dim` wide, `hidden_size`
    out to the LLM, no tokens_per_second)."""
    from transformers import Qwen2VLConfig

    v = q25.vision_config
    return Qwen2VLConfig(
        text_config=q25.text_config.to_dict(),
        vision_config={"depth": v.depth, "embed_dim": v.hidden_size, "hidden_size": q25.text_config.hidden_size,
                       "num_heads": v.num_heads, "mlp_ratio": max(1, v.intermediate_size // v.hidden_size),
                       "patch_size": v.patch_size, "spatial_merge_size": v.spatial_merge_size,
                       "temporal_patch_size": v.temporal_patch_size},
        image_token_id=q25.image_token_id, video_token_id=q25.video_token_id,
        vision_start_token_id=q25.vision_start_token_id, vision_end_token_id=q25.vision_end_token_id,
        tie_word_embeddings=False,
    )


def _qwen2_vl_model(config):
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration(config)


# Qwen3-VL's video budget is per clip (all frames together), as its processor applies it:
# 64 frames of 32x32, or up to 64 of 64x64 for shorter clips.
QWEN3_VL_VIDEO_SIZE = {"shortest_edge": 32 * 32 * 4, "longest_edge": 64 * 64 * 64}


def processor_configs(spec: TinyModelSpec) -> dict[str, dict]:
    """The processor JSON files a Qwen2.5-VL folder carries, with the tiny pixel budget
    (Qwen3-VL: patch 16, mean/std 0.5, clip budget in `size`, as its released folders)."""
    if spec.arch in ("qwen3_vl", "qwen3_vl_moe"):
        common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
                  "image_std": [0.5] * 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                  "do_convert_rgb": True, "processor_class": "Qwen3VLProcessor"}
        image = {**common, "image_processor_type": "Qwen2VLImageProcessor",
                 "size": {"shortest_edge": 32 * 32 * 4, "longest_edge": 128 * 128}}
        video = {**common, "video_processor_type": "Qwen3VLVideoProcessor", "size": dict(QWEN3_VL_VIDEO_SIZE),
                 "fps": 2, "min_frames": 4, "max_frames": 768}
        return {"preprocessor_config.json": image, "video_preprocessor_config.json": video}
    common = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "processor_class": "Qwen2VLProcessor" if spec.arch == "qwen2_vl" else "Qwen2_5_VLProcessor",
    }
    image = {**common, "image_processor_type": "Qwen2VLImageProcessor",
             "min_pixels": 28 * 28 * 4, "max_pixels": 112 * 112}
    video = {**common, "video_processor_type": "Qwen2VLVideoProcessor",
             "size": {"shortest_edge": spec.video_min_pixels, "longest_edge": spec.video_max_pixels},
             "min_pixels": spec.video_min_pixels, "max_pixels": spec.video_max_pixels}
    return {"preprocessor_config.json": image, "video_preprocessor_config.json": video}


def write_tiny_model_folder(out_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Build and save a tiny model folder; deterministic given `spec.seed`."""
    from dataclasses import asdict

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_model(spec)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                             tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if spec.arch not in TEXT_ARCHS:  # a text LM folder carries no image/video processor
        for name, content in processor_configs(spec).items():
            (out / name).write_text(json.dumps(content, indent=2))
    (out / "longrl_tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out
