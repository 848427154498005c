"""Ulysses attention registered in transformers' attention interface.

`use_ulysses_attention(model)` sets the language model's `attn_implementation` to
"longrl_ulysses_<inner>" (inner: the kernel it wraps, "sdpa" by default, "flash_attention_2" on
GPU). The model object is not patched: the registered function receives the usual
[B, heads, L_local, D] projections (RoPE already applied with this rank's slice of the 3-D
positions) and
- without a `sequence_parallel` keyword (or with a group of one) calls the inner kernel as is, so
  the same model runs unsplit, generates, and gives bit-identical results to plain "sdpa";
- with `sequence_parallel=SPContext(...)` (passed through the model's **kwargs) and layout
  "ulysses": all-to-alls sequence -> heads (each rank its query-head range and only the KV heads
  those read, `layout.plan_heads`), runs the inner kernel on the full sequence for its heads, and
  all-to-alls back; layout "kv_gather" (SP above the head count): keeps this rank's positions and
  all heads, all-gathers K/V over the sequence and runs blockwise attention (varlen.py);
- with `packed_rows=PackedRows(...)` the batch is one packed sequence of rows without padding and
  the kernel is variable-length causal attention (flash-attn varlen on GPU, one causal SDPA call
  per row on CPU): no mask tensor exists on any rank.

Unpacked (padded) batches give the inner kernel a mask of the FULL sequence:
`full_sequence_masks` builds it with transformers' own mask function, and the text model accepts
it unchanged when passed as a {layer_type: mask} mapping. With SDPA that is a [B, 1, L, L] mask,
which is why LogProbModel packs by default.
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

from training.sequence_parallel.comm import SPContext, gather_sequence, heads_to_seq, seq_to_heads
from training.sequence_parallel.layout import plan_heads
from training.sequence_parallel.varlen import (
    PackedRows,
    causal_varlen_attention,
    gathered_kv_attention,
    windowed_attention,
)

PREFIX = "longrl_ulysses_"


class _LocalHeads:
    """The attention module as the inner kernel should see it on this rank: same attributes,
    but the query/KV group ratio of the local head group (which replication may change)."""

    def __init__(self, module: torch.nn.Module, num_key_value_groups: int):
        self._module = module
        self.num_key_value_groups = num_key_value_groups

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _kernel_call(module, inner: str, query, key, value, attention_mask, packed_rows, **kwargs):
    """One call of the inner kernel on [B, h, L, D] q and [B, hkv, L, D] k/v -> [B, L, h, D]."""
    if packed_rows is not None:
        return causal_varlen_attention(query, key, value, packed_rows, kwargs.get("scaling"),
                                       use_flash=inner.startswith("flash"))
    local = _LocalHeads(module, query.shape[1] // key.shape[1])
    return ALL_ATTENTION_FUNCTIONS[inner](local, query, key, value, attention_mask, **kwargs)[0]


def ulysses_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    inner: str,
    sequence_parallel: SPContext | None = None,
    packed_rows: PackedRows | None = None,
    **kwargs,
):
    sp = sequence_parallel
    if sp is None or sp.size == 1:
        if packed_rows is None:
            return ALL_ATTENTION_FUNCTIONS[inner](module, query, key, value, attention_mask, **kwargs)
        return _kernel_call(module, inner, query, key, value, None, packed_rows, **kwargs), None
    if query.shape[2] != sp.split.lengths[sp.rank]:
        raise ValueError(
            f"rank {sp.rank} got {query.shape[2]} positions but its slice holds "
            f"{sp.split.lengths[sp.rank]} (was a KV cache passed under sequence parallelism?)"
        )
    if sp.layout == "kv_gather":
        if packed_rows is None:
            raise ValueError("the kv_gather attention layout needs packed rows (LogProbModel pack=True)")
        key, value = gather_sequence(key, sp), gather_sequence(value, sp)
        start, _ = sp.split.bounds(sp.rank)
        return gathered_kv_attention(query, key, value, packed_rows, start, kwargs.get("scaling"),
                                     sp.kv_block), None
    plan = plan_heads(query.shape[1], key.shape[1], sp.size)
    query = seq_to_heads(query, sp, plan.q_ranges)
    key, value = (seq_to_heads(t, sp, plan.kv_ranges) for t in (key, value))
    if plan.uniform(sp.rank):  # whole GQA groups: one call
        out = _kernel_call(module, inner, query, key, value, attention_mask, packed_rows, **kwargs)
    else:  # the query heads span KV heads unevenly: one call per KV head
        out = torch.cat([_kernel_call(module, inner, query[:, lo:hi], key[:, j:j + 1], value[:, j:j + 1],
                                      attention_mask, packed_rows, **kwargs)
                         for lo, hi, j in plan.runs(sp.rank)], dim=2)
    return heads_to_seq(out, sp, plan.q_ranges), None


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
    vlm = hasattr(model.config, "text_config")  # a text-only LM's config is its text config
    text_config = model.config.text_config if vlm else model.config
    current = text_config._attn_implementation or "sdpa"
    name = register_ulysses_attention(inner or current.removeprefix(PREFIX))
    if current != name:
        model.set_attn_implementation({"text_config": name} if vlm else name)
    return name


def check_no_sliding_layers(text_model: torch.nn.Module) -> None:
    """Sliding-window layers cannot be split (or packed by our kernels): a config error."""
    if getattr(text_model, "has_sliding_layers", False):
        # Qwen2.5-VL ships with use_sliding_window=false; a split sequence would need each rank's
        # window to reach into its neighbour's slice, which the all-to-all layout does not give.
        raise ValueError(f"{text_model.config.model_type}: sliding-window attention layers cannot run under "
                         "sequence parallelism; set parallel.sp_size=1 or use_sliding_window=false")


VISION_VARLEN = "longrl_flash_varlen_vision"  # "flash" in the name: the tower then passes cu_seqlens


def varlen_vision_attention(module, query, key, value, attention_mask, *, scaling=None, cu_seq_lens_q=None,
                            **kwargs):
    """The vision tower's window / frame attention from its cu_seqlens in one batched call per
    window length (flash-attn varlen on CUDA when installed); never a Python loop over windows."""
    if query.is_cuda and _has_flash():
        return ALL_ATTENTION_FUNCTIONS["flash_attention_2"](module, query, key, value, attention_mask,
                                                            scaling=scaling, cu_seq_lens_q=cu_seq_lens_q, **kwargs)
    return windowed_attention(query, key, value, cu_seq_lens_q, scaling), None


def _has_flash() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def use_varlen_vision_attention(model: torch.nn.Module) -> str:
    """Switch the vision tower to `varlen_vision_attention` (same results as its SDPA path)."""
    if VISION_VARLEN not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(VISION_VARLEN, varlen_vision_attention)
        AttentionMaskInterface.register(VISION_VARLEN, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    if model.config.vision_config._attn_implementation != VISION_VARLEN:
        model.set_attn_implementation({"vision_config": VISION_VARLEN})
    return VISION_VARLEN


def full_sequence_masks(text_model: torch.nn.Module, inputs_embeds: torch.Tensor,
                        attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """{layer_type: mask} for the whole (unsplit) sequence in the inner kernel's format: None for
    a plain causal batch (the kernel uses is_causal), a 4-D mask (sdpa) or the 2-D padding mask
    (flash) when rows are padded."""
    check_no_sliding_layers(text_model)
    mask = create_causal_mask(config=text_model.config, inputs_embeds=inputs_embeds,
                              attention_mask=attention_mask, past_key_values=None)
    return {"full_attention": mask}
