"""GPU figures for issue 12 (part `scale` of bench/gpu_check.sh, one GPU, about 4 minutes):

1. Qwen2.5-VL-3B-shaped policy update (36 layers at the real widths, random weights, fp32 master
   weights with bf16 autocast, activation checkpointing, cached video embeddings, 64 tokens per
   frame): MR-SP's path (packed rows, varlen attention, tiled log-probs of the response) vs the
   naive one (transformers' forward on a padded row: [1, 1, L, L] mask, full logits, fp32
   log_softmax) - step time and peak memory at 64/256/512 frames, then the largest frame count
   each fits on this GPU (doubling, then bisecting, until a step runs out of memory or the time
   budget is spent).
2. The tiled log-prob kernel at 7B width (hidden 3584, vocabulary 152064, 2048 response tokens):
   fp32 GEMMs vs bf16 GEMMs with fp32 log-sum-exp, time of forward + backward and the largest
   log-prob difference.

    python bench/gpu_scale_check.py [--frames 64,256,512] [--budget-s 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import AFTER, PROMPT, RESPONSE, _loss, build_model, make_batch, naive_step  # noqa: E402
from memory_model import SHAPES  # noqa: E402

from training.linear_logprobs import linear_logprobs  # noqa: E402
from training.mm_batch import rope_positions  # noqa: E402
from training.sequence_parallel.policy import LogProbModel  # noqa: E402
from training.tiny_model import train_tokenizer  # noqa: E402

TPF = 64  # tokens per frame (64: e.g. 448 x 224 px frames; Long-RL's 3,600 frames ~ 256K tokens is ~71)
TEXT = PROMPT + AFTER + RESPONSE
DEV = "cuda"


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")


def step(path: str, model, lpm, tok, frames: int) -> tuple[float, float]:
    """(seconds, peak GiB) of one update step; raises torch.cuda.OutOfMemoryError."""
    batch, embeds = make_batch(tok, frames, TPF, model.config.text_config.hidden_size, pad=int(path == "naive"))
    batch, embeds = batch.to(DEV), [e.to(DEV) for e in embeds]
    pos = rope_positions(model, batch)
    _sync()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with torch.autocast(DEV, dtype=torch.bfloat16):
        if path == "naive":
            naive_step(model, batch, embeds, pos)
        else:
            lp, _ = lpm(batch.input_ids, batch.attention_mask, pos, batch.loss_mask, video_embeds=embeds)
            _loss(lp, batch.loss_mask).backward()
    _sync()
    return time.perf_counter() - t, _peak_gib()


def try_step(path, model, lpm, tok, frames):
    try:
        return step(path, model, lpm, tok, frames)
    except torch.cuda.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return None


def largest(path, model, lpm, tok, start: int, deadline: float) -> tuple[int, str]:
    lo, hi, f = 0, None, start
    while time.perf_counter() < deadline and f <= 1 << 15:
        if try_step(path, model, lpm, tok, f) is None:
            hi = f
            break
        lo, f = f, f * 2
    while hi is not None and hi - lo > max(16, lo // 8) and time.perf_counter() < deadline:
        mid = (lo + hi) // 2 // 2 * 2
        lo, hi = (mid, hi) if try_step(path, model, lpm, tok, mid) is not None else (lo, mid)
    note = "" if hi is not None else " (time budget or cap reached before running out of memory)"
    return lo, note


def logprob_kernel(tokens: int, hidden: int, vocab: int) -> None:
    g = torch.Generator(device=DEV).manual_seed(0)
    h = torch.randn(tokens, hidden, device=DEV, generator=g)
    w = torch.randn(vocab, hidden, device=DEV, generator=g) * 0.02
    tgt = torch.randint(0, vocab, (tokens,), device=DEV, generator=g)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hh, ww = h.to(dtype).requires_grad_(True), w.to(dtype).requires_grad_(True)
        for _ in range(2):  # second run timed
            _sync()
            t = time.perf_counter()
            lp, _ = linear_logprobs(hh, ww, tgt)
            lp.sum().backward()
            _sync()
            dt = time.perf_counter() - t
        out[name] = (dt, lp.detach())
    diff = (out["fp32"][1] - out["bf16"][1]).abs().max().item()
    print(f"log-prob tiles, hidden {hidden}, {tokens} tokens x {vocab} vocab, fwd+bwd: fp32 {out['fp32'][0] * 1e3:.0f} ms, "
          f"bf16 GEMMs {out['bf16'][0] * 1e3:.0f} ms ({out['fp32'][0] / out['bf16'][0]:.2f}x); "
          f"max |log-prob difference| {diff:.3g}")


def main() -> None:
    global DEV
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", default="64,256,512")
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--shape", default="3b", help="3b (the check) or smoke (a CPU try-out of the script)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    DEV = args.device
    t0 = time.perf_counter()
    if DEV == "cuda" and not torch.cuda.is_available():
        print("gpu_scale_check: no CUDA device")
        sys.exit(1)
    shape = SHAPES[args.shape]
    if args.shape == "3b":
        logprob_kernel(2048, 3584, 152064)  # 7B width
    else:
        logprob_kernel(64, shape["hidden"], shape["vocab"])
    tok = train_tokenizer(1024)
    model = build_model(shape, shape["layers"], tok, device=DEV)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lpm = LogProbModel(model)
    frames = [int(x) for x in args.frames.split(",")]
    print(f"{args.shape}-shaped update step, {shape['layers']} layers, bf16 autocast, checkpointing, {TPF} "
          f"tokens/frame (model built in {time.perf_counter() - t0:.0f} s)")
    for path in ("naive", "mrsp"):  # warm-up (kernels, allocator)
        try_step(path, model, lpm, tok, frames[0])
    print(f"{'frames':>7} {'tokens':>7} | {'naive s':>8} {'GiB':>6} | {'MR-SP s':>8} {'GiB':>6} | speed-up  memory")
    for f in frames:
        n = try_step("naive", model, lpm, tok, f)
        m = try_step("mrsp", model, lpm, tok, f)
        cell = lambda r: f"{r[0]:>8.2f} {r[1]:>6.1f}" if r else f"{'OOM':>8} {'':>6}"  # noqa: E731
        ratio = f"{n[0] / m[0]:>7.2f}x {n[1] / m[1]:>6.2f}x" if n and m else ""
        print(f"{f:>7} {f * TPF + TEXT:>7} | {cell(n)} | {cell(m)} | {ratio}", flush=True)
    for i, path in enumerate(("naive", "mrsp")):
        left = args.budget_s - (time.perf_counter() - t0)
        fr, note = largest(path, model, lpm, tok, frames[-1], time.perf_counter() + left / (2 - i))
        print(f"largest frame count that fits one GPU, {path}: {fr} frames ({fr * TPF + TEXT} tokens){note}", flush=True)


if __name__ == "__main__":
    main()
