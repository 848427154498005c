"""Model families: what differs between the model families longrl trains (vision-language and
text-only), one small module each, picked from a model folder's `config.json` (`model_type`).

Everything else (SFT, the GRPO loop, rewards, checkpoints, eval tasks, the pipeline) is
family-agnostic and asks the family only for what differs:
- `temporal_scaling`: whether video temporal positions scale with seconds per temporal patch
  (Qwen2.5-VL: long(i * second_per_grid * tokens_per_second); Qwen2-VL: i), used by
  training.positions through mm_batch.rope_positions;
- `hf_class` / `vllm_architecture` / `auto_class`: the classes that load it;
- `has_vision`: False for text-only LLMs (Qwen2.5, Qwen3): no vision tower, no video cache,
  records without video only, positions the plain 1-D text positions (training.mm_batch);
- `frame_groups` / `deepstack` (Qwen3-VL, training/models/qwen3_vl.py): timestamped frame
  groups in the prompt and positions, DeepStack features carried in the cached embeddings;
- `tiny_config`: how `longrl model tiny --arch NAME` builds a random model of the family.
A folder of any other family is refused with one line naming its model_type and the families
that are supported (`UnsupportedModelError`). How to add a family: docs/models.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UnsupportedModelError(ValueError):
    """A model folder of a family longrl has no adapter for."""


@dataclass(frozen=True)
class ModelFamily:
    name: str  # `longrl model tiny --arch` value
    model_type: str  # config.json's model_type
    title: str
    hf_class: str  # transformers class (loaded through AutoModelForImageTextToText)
    vllm_architecture: str
    temporal_scaling: bool  # video time positions scale with seconds per temporal patch
    has_vision: bool = True  # False: a text-only causal LM (no vision tower, no video inputs)
    auto_class: str = "AutoModelForImageTextToText"  # the transformers Auto class that loads it
    frame_groups: bool = False  # each temporal patch is its own segment after a timestamp (Qwen3-VL)
    deepstack: bool = False  # cached video embeddings carry DeepStack features (Qwen3-VL)


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    FAMILIES[family.model_type] = family
    return family


def supported() -> str:
    return ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())


def model_type_of(path: str | Path) -> str | None:
    """config.json's model_type of a folder (None without one)."""
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None


def auto_class_of(path: str | Path) -> str:
    """The Auto class that loads the folder: its family's, else the vision-language default
    (an unknown family is refused with `family_of`'s message where its inputs are built)."""
    fam = FAMILIES.get(model_type_of(path) or "")
    return fam.auto_class if fam else "AutoModelForImageTextToText"


def family_of(config: Any) -> ModelFamily:
    """The family of a transformers config, a config dict, or a model folder."""
    if isinstance(config, (str, Path)):
        path = Path(config) / "config.json"
        if not path.is_file():
            raise UnsupportedModelError(f"{config}: no config.json, so not a Hugging Face model folder")
        config = json.loads(path.read_text())
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported; supported families: {supported()}")
    return FAMILIES[model_type]


from training.models import qwen2_5_vl, qwen2_vl, qwen3_vl, text_lm  # noqa: E402,F401 - register the families
