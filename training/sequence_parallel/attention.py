"""Ulysses attention registered in transformers' attention interface.

`use_ulysses_attention(model)` sets the language model's `attn_implementation` to
"longrl_ulysses_<inner>" (inner: the kernel it wraps, "sdpa" by default, "flash_attention_2" on
GPU). The model object is not patched: the registered function receives the usual
[B, heads, L_local, D] projections (RoPE already applied with this rank's slice of the 3-D
positions) and
- without a `sequence_parallel` keyword (or with a group of one) calls the inner kernel as is, so
  the same model runs unsplit, generates, and gives bit-identical results to plain "sdpa";
- with `sequence_parallel=SPContext(...)` (passed through the model's **kwargs) replicates/pads
  heads per `layout.plan_heads`, all-to-alls sequence -> heads, runs the inner kernel on the full
  sequence for its head group, and all-to-alls back.

The mask given to the inner kernel must describe the FULL sequence: `full_sequence_masks` builds
it with transformers' own mask function for the inner kernel, and the text model accepts it
unchanged when passed as a {layer_type: mask} mapping.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
    create_causal_mask,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from training.sequence_parallel.comm import SPContext, heads_to_seq, seq_to_heads
from training.sequence_parallel.layout import plan_heads

PREFIX = "longrl_ulysses_"


class _LocalHeads:
    """The attention module as the inner kernel should see it on this rank: same attributes,
    but the query/KV group ratio of the local head group (which replication may change)."""

    def __init__(self, module: torch.nn.Module, num_key_value_groups: int):
        self._module = module
        self.num_key_value_groups = num_key_value_groups

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def ulysses_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    inner: str,
    sequence_parallel: SPContext | None = None,
    **kwargs,
):
    kernel = ALL_ATTENTION_FUNCTIONS[inner]
    sp = sequence_parallel
    if sp is None or sp.size == 1:
        return kernel(module, query, key, value, attention_mask, **kwargs)
    if query.shape[2] != sp.split.lengths[sp.rank]:
        raise ValueError(
            f"rank {sp.rank} got {query.shape[2]} positions but its slice holds "
            f"{sp.split.lengths[sp.rank]} (was a KV cache passed under sequence parallelism?)"
        )
    plan = plan_heads(query.shape[1], key.shape[1], sp.size)
    query, key, value = plan.prepare(query, key, value)
    query, key, value = (seq_to_heads(t, sp) for t in (query, key, value))
    local = _LocalHeads(module, plan.local_heads // plan.local_kv_heads)
    out, _ = kernel(local, query, key, value, attention_mask, **kwargs)  # [B, L, heads/sp, D]
    out = heads_to_seq(out, sp)  # [B, L_local, padded heads, D]
    return out[:, :, : plan.num_heads], None


def register_ulysses_attention(inner: str = "sdpa") -> str:
    """Register (once) the Ulysses wrapper of `inner` and its mask function; returns its name."""
    if inner.startswith(PREFIX):
        return inner
    if inner not in ALL_ATTENTION_FUNCTIONS or inner not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(f"unknown attention implementation {inner!r} to wrap")
    name = PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, partial(ulysses_attention, inner=inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def use_ulysses_attention(model: torch.nn.Module, inner: str | None = None) -> str:
    """Switch the language model of a Qwen2.5-VL model to Ulysses attention around `inner`
    (default: its current implementation). The vision tower keeps its own kernel."""
    text_config = model.config.text_config
    current = text_config._attn_implementation or "sdpa"
    name = register_ulysses_attention(inner or current.removeprefix(PREFIX))
    if current != name:
        model.set_attn_implementation({"text_config": name})
    return name


def full_sequence_masks(text_model: torch.nn.Module, inputs_embeds: torch.Tensor,
                        attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """{layer_type: mask} for the whole (unsplit) sequence in the inner kernel's format: None for
    a plain causal batch (the kernel uses is_causal), a 4-D mask (sdpa) or the 2-D padding mask
    (flash) when rows are padded."""
    config = text_model.config
    if getattr(text_model, "has_sliding_layers", False):
        # Qwen2.5-VL ships with use_sliding_window=false; a split sequence would need each rank's
        # window to reach into its neighbour's slice, which the all-to-all layout does not give.
        raise ValueError(f"{config.model_type}: sliding-window attention layers cannot run under "
                         "sequence parallelism; set parallel.sp_size=1 or use_sliding_window=false")
    mask = create_causal_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              past_key_values=None)
    return {"full_attention": mask}
