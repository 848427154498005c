"""MR-SP's kernels against the paths they replace, side by side in one run (CPU, one thread):

1. vision window attention at Qwen2.5-VL's tower width (1280, 16 heads, one window block, 112 px
   windows = 8 x 8 patches): transformers' SDPA path (a Python loop over windows) vs
   `use_varlen_vision_attention` (windows of equal length in one SDPA call) - time and the number
   of attention calls, and the largest output difference;
2. attention of a packed / padded batch at 3B heads (16 q / 2 kv, head dim 128): SDPA with the
   [B, 1, L, L] mask of padded rows vs `causal_varlen_attention` on the packed rows - time, the
   mask's bytes, the largest difference on the real tokens;
3. the tiled log-prob kernel at 3B width: fp32 GEMMs vs bf16 GEMMs with fp32 log-sum-exp (on CPU
   without bf16 units bf16 is slower; bench/gpu_scale_check.py times it on a GPU) and the difference;
4. Ulysses KV traffic: KV heads sent per layer with only-what-each-rank-reads vs one KV copy per
   query head (the padded layout it replaced), for 3B and 7B at SP 2/4/8 (exact counts).

    .venv/bin/python bench/bench_kernels.py [--frames 8] [--rows 4] [--row-tokens 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.linear_logprobs import linear_logprobs  # noqa: E402
from training.sequence_parallel.layout import plan_heads  # noqa: E402
from training.sequence_parallel.varlen import PackedRows, causal_varlen_attention  # noqa: E402


def _timed(fn, repeat: int = 2):
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - t) / repeat


def vision_windows(frames: int, side: int) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from training.sequence_parallel.attention import use_varlen_vision_attention

    cfg = Qwen2_5_VLConfig(text_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                                        "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 256,
                                        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
                           vision_config={"depth": 1, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420,
                                          "out_hidden_size": 64, "fullatt_block_indexes": [], "window_size": 112})
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    grid = torch.tensor([[frames // 2, side, side]])
    pixels = torch.randn(int(grid.prod()), 1176)
    calls = []
    real = F.scaled_dot_product_attention

    def run():
        calls.clear()
        with torch.no_grad(), mock.patch.object(F, "scaled_dot_product_attention",
                                                side_effect=lambda *a, **k: calls.append(1) or real(*a, **k)):
            return torch.cat(list(model.model.get_video_features(pixels, grid, return_dict=True).pooler_output))

    plain, t_plain = _timed(run)
    n_plain = len(calls)
    use_varlen_vision_attention(model)
    got, t_var = _timed(run)
    print(f"1. vision window attention, {frames} frames of {side * 14} px ({int(grid.prod())} patches, 1 block at "
          f"1280 wide): loop {t_plain:.2f} s / {n_plain} SDPA calls, batched {t_var:.2f} s / {len(calls)} calls "
          f"({t_plain / t_var:.2f}x); max |diff| {(got - plain).abs().max().item():.2e}")


def packed_attention(rows: int, row_tokens: int) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [row_tokens - 37 * i for i in range(rows)]  # rows of different length
    length = max(lengths)
    q = torch.randn(rows, 16, length, 128, generator=g)
    k = torch.randn(rows, 2, length, 128, generator=g)
    v = torch.randn(rows, 2, length, 128, generator=g)
    valid = torch.arange(length)[None, :] >= (length - torch.tensor(lengths))[:, None]  # left padding
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = (causal[None] & valid[:, None, :])[:, None]  # [B, 1, L, L], what SDPA gets for padded rows
    mask = mask | ~valid[:, None, :, None]  # padded query rows attend somewhere (no NaN)

    def padded():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)

    packed_rows = PackedRows(tuple(lengths))

    def packed():
        pq, pk, pv = (t.transpose(1, 2)[valid][None].transpose(1, 2) for t in (q, k, v))
        return causal_varlen_attention(pq, pk, pv, packed_rows, None, use_flash=False)

    want, t_pad = _timed(padded)
    got, t_pack = _timed(packed)
    diff = (got[0] - want[valid]).abs().max().item()
    print(f"2. attention, {rows} rows of <= {row_tokens} tokens, 16 q / 2 kv heads: padded + [B,1,L,L] mask "
          f"({mask.numel() / 2**20:.1f} MiB of mask) {t_pad:.2f} s, packed varlen (no mask) {t_pack:.2f} s "
          f"({t_pad / t_pack:.2f}x); max |diff| on real tokens {diff:.2e}")


def logprob_tiles(tokens: int) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, 2048, generator=g)
    w = torch.randn(151936, 2048, generator=g) * 0.02
    tgt = torch.randint(0, 151936, (tokens,), generator=g)
    res = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hh, ww = h.to(dtype), w.to(dtype)
        res[name] = _timed(lambda hh=hh, ww=ww: linear_logprobs(hh, ww, tgt)[0], repeat=1)
    d = (res["fp32"][0] - res["bf16"][0]).abs().max().item()
    print(f"3. log-prob tiles, {tokens} tokens x 151936 vocab at 2048 wide, forward: fp32 {res['fp32'][1]:.2f} s, "
          f"bf16 GEMMs {res['bf16'][1]:.2f} s ({res['fp32'][1] / res['bf16'][1]:.2f}x on this CPU); "
          f"max |log-prob diff| {d:.3g}")


def kv_traffic() -> None:
    parts = []
    for name, hq, hkv in (("3B", 16, 2), ("7B", 28, 4)):
        for sp in (2, 4, 8):
            plan = plan_heads(hq, hkv, sp)
            padded = -(-hq // sp) * sp  # query heads padded to a multiple of SP, one KV copy each
            parts.append(f"{name} SP{sp}: {plan.kv_heads_sent} vs {padded} ({padded / plan.kv_heads_sent:.1f}x)")
    print("4. KV heads sent per layer (each rank only what it reads vs one per (padded) query head): "
          + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--side", type=int, default=32, help="patches per side (32: 448 px frames)")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--row-tokens", type=int, default=1024)
    ap.add_argument("--logprob-tokens", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vision_windows(args.frames, args.side)
    packed_attention(args.rows, args.row_tokens)
    logprob_tiles(args.logprob_tokens)
    kv_traffic()


if __name__ == "__main__":
    main()
