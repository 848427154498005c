"""Model families: what differs between the vision-language families longrl trains, one small
module each, picked from a model folder's `config.json` (`model_type`).

Everything else (SFT, the GRPO loop, rewards, checkpoints, eval tasks, the pipeline) is
family-agnostic and asks the family only for what differs:
- `temporal_scaling`: whether video temporal positions scale with seconds per temporal patch
  (Qwen2.5-VL: long(i * second_per_grid * tokens_per_second); Qwen2-VL: i), used by
  training.positions through mm_batch.rope_positions;
- `hf_class` / `vllm_architecture`: the classes that load it;
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


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    FAMILIES[family.model_type] = family
    return family


def supported() -> str:
    return ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())


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


from training.models import qwen2_5_vl, qwen2_vl  # noqa: E402,F401 - register the families
