"""Load and save model folders: the tiny test models and downloaded Qwen2.5-VL folders alike.

Checkpoints are ordinary Hugging Face folders (safetensors, config, tokenizer, chat template,
processor configs) that `from_pretrained` and vLLM load directly - there is no merge step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from training.model_folder import (  # noqa: F401 - ModelFolderError/check_model_dir live there, re-exported
    ModelFolderError,
    check_model_dir,
    check_tokenizer,
    tokenizer_load_error,
)

# Files a model folder carries besides weights/config/tokenizer that every stage must keep.
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "longrl_tiny_spec.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str | Path):
    """The folder's tokenizer, checked against its model (training.model_folder.check_tokenizer:
    a folder without tokenizer files would load a 1-entry tokenizer that encodes every text to [])."""
    from transformers import AutoTokenizer

    from training.chat_template import QWEN_VL_CHAT_TEMPLATE

    p = check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as exc:  # a foreign or damaged tokenizer: transformers raises many kinds
        raise tokenizer_load_error(p, exc) from None
    if not getattr(tok, "chat_template", None):
        tok.chat_template = QWEN_VL_CHAT_TEMPLATE
    check_tokenizer(tok, p)
    # Rollouts and batches are left padded; a pad token is required.
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = "<|endoftext|>"
    return tok


def load_model(path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu",
               attn_implementation: str | None = None):
    """A model of the folder's family (training.models: AutoModelForImageTextToText for the
    vision-language families, AutoModelForCausalLM for text-only LMs) in eval mode on `device`."""
    import transformers

    from training.models import auto_class_of
    from training.models.text_lm import attach_decoder

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not in {list(DTYPES)}")
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    auto = getattr(transformers, auto_class_of(check_model_dir(path)))
    model = attach_decoder(auto.from_pretrained(path, **kwargs))  # text LMs: the decoder view
    return model.to(device).eval()


def save_model_folder(model, tokenizer, out_dir: str | Path, source_dir: str | Path | None = None,
                      state_dict: dict | None = None) -> Path:
    """Write a loadable model folder: weights (safetensors), config, generation config, tokenizer,
    and the processor/chat-template files copied from `source_dir`. `state_dict` (full tensors)
    replaces the model's own parameters - an FSDP-sharded model passes its gathered weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    if source_dir is not None:
        for name in PROCESSOR_FILES:
            src = Path(source_dir) / name
            if src.is_file() and not (out / name).exists():
                shutil.copy2(src, out / name)
    return out
