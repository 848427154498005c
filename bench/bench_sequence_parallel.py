"""Sequence parallelism on CPU: peak memory per rank and step time vs frame count for SP=1/2/4,
the longest video that fits per rank under a memory cap, and the frame-split vision encoder.

The step is one GRPO policy update on one long sequence (prompt + video + response), from cached
video embeddings as in MR-SP stage 1: Ulysses forward, chunked log-probs of the response,
PPO-clip + k3 KL loss, backward. Each SP size runs in its own local gloo group (SP=1 is the plain
unsplit model through the same code).

Memory: per rank, the peak resident memory of the step above the resident memory before it
(/proc/self VmHWM after a reset via clear_refs, with glibc's mmap threshold lowered so freed
tensors go back to the OS): activations, gradients, all-to-all buffers, log-prob tiles.
Time: wall time of the step (max over ranks) and the busiest rank's CPU time. With fewer cores
than ranks (SP=4 on a 2-core machine) the wall time is inflated by time-sharing; the CPU time is
the per-rank work a dedicated device would do.

    .venv/bin/python bench/bench_sequence_parallel.py [--frames 32,64,128,256] [--sp 1,2,4]
        [--cap-mib 256] [--frame-px 224] [--max-frames 2048]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.grpo.algorithms import kl_loss, ppo_clip_loss  # noqa: E402
from training.mm_batch import collate, rope_positions  # noqa: E402
from training.prompts import EncodedExample  # noqa: E402
from training.sequence_parallel.local_group import run_local_group  # noqa: E402
from training.sequence_parallel.mesh import ParallelConfig, build_log_prob_model, init_parallel  # noqa: E402
from training.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402
from training.video_inputs import VideoPatches  # noqa: E402

BENCH_SPEC = TinyModelSpec(seed=0, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                           num_kv_heads=2)
PROMPT, AFTER, RESPONSE = 40, 20, 128
M_MMAP_THRESHOLD = -3


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _batch(tokenizer, frames: int, side: int):
    """One sequence with a video of `frames` frames of side x side patches (cached embeddings)."""
    video = VideoPatches(pixel_values=torch.empty(0, 1176), grid_thw=(frames // 2, side, side),
                         second_per_grid_t=1.0, timestamps_s=[float(i) for i in range(frames)])
    g = torch.Generator().manual_seed(frames)
    text = torch.randint(20, tokenizer.convert_tokens_to_ids("<|video_pad|>") - 20, (PROMPT + AFTER + RESPONSE,),
                         generator=g).tolist()
    n = video.num_tokens
    ids = text[:PROMPT] + [tokenizer.convert_tokens_to_ids("<|video_pad|>")] * n + text[PROMPT:]
    types = [0] * PROMPT + [2] * n + [0] * (AFTER + RESPONSE)
    batch = collate([EncodedExample(ids, types, PROMPT + n + AFTER)], [video], tokenizer.pad_token_id,
                    with_pixels=False)
    embeds = [torch.randn(n, BENCH_SPEC.hidden_size, generator=g)]
    return batch, embeds


def _step(lpm, model, batch, embeds, pos) -> None:
    lp, _ = lpm(batch.input_ids, batch.attention_mask, pos, batch.loss_mask, video_embeds=embeds)
    mask = batch.loss_mask
    old = lp.detach() + 0.1 * mask
    adv = torch.ones(1)
    loss = ppo_clip_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28).loss
    (loss + 0.01 * kl_loss(lp, old, mask)).backward()


def _measure(lpm, model, tokenizer, frames: int, side: int) -> dict:
    batch, embeds = _batch(tokenizer, frames, side)
    pos = rope_positions(model, batch)
    model.zero_grad(set_to_none=True)
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_mib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    _step(lpm, model, batch, embeds, pos)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    peak = _status_mib("VmHWM") - base
    stats = torch.tensor([peak, wall, cpu])
    if dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    return {"frames": frames, "tokens": batch.input_ids.shape[1], "peak_mib": stats[0].item(),
            "wall_s": stats[1].item(), "cpu_s": stats[2].item()}


def _rank(rank: int, world: int, frames: list[int], side: int, cap_mib: float, max_frames: int) -> dict:
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)
    state = init_parallel(sp_size=world)
    model, tokenizer = build_tiny_model(BENCH_SPEC)
    model.train()
    lpm = build_log_prob_model(model, state, ParallelConfig(sp_size=world, fsdp=False))
    _measure(lpm, model, tokenizer, 8, side)  # warm-up
    table = [_measure(lpm, model, tokenizer, f, side) for f in frames]
    # longest video under the cap: double until it does not fit, then bisect (to 1/8 of the step)
    fits, lo, hi = {}, 0, None
    f = frames[0]
    while f <= max_frames:
        r = _measure(lpm, model, tokenizer, f, side)
        fits[f] = r
        if r["peak_mib"] > cap_mib:
            hi = f
            break
        lo, f = f, f * 2
    if hi is not None and lo:
        step = (hi - lo) // 2
        while step >= max(2, lo // 8):
            mid = lo + step - (lo + step) % 2
            r = _measure(lpm, model, tokenizer, mid, side)
            fits[mid] = r
            lo, hi = (mid, hi) if r["peak_mib"] <= cap_mib else (lo, mid)
            step = (hi - lo) // 2
    return {"table": table, "longest": lo, "capped": hi is not None, "search": fits}


def _vision_rank(rank: int, world: int, frames: int, side: int) -> float:
    from training.sequence_parallel.vision import encode_videos_split

    model, _ = build_tiny_model(BENCH_SPEC)
    pixels = torch.randn(frames // 2 * side * side, 1176, generator=torch.Generator().manual_seed(0))
    group = dist.group.WORLD
    with torch.no_grad():
        warm = 4 * side * side
        encode_videos_split(model, pixels[:warm], torch.tensor([(4, side, side)]), group, rank, world)
        dist.barrier()
        t = time.perf_counter()
        encode_videos_split(model, pixels, torch.tensor([(frames // 2, side, side)]), group, rank, world)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", default="32,64,128,256", help="frame counts for the table")
    ap.add_argument("--sp", default="1,2,4", help="sequence-parallel sizes")
    ap.add_argument("--cap-mib", type=float, default=256.0, help="per-rank step memory cap (MiB)")
    ap.add_argument("--frame-px", type=int, default=224, help="frame side in pixels (224: 32 tokens per frame)")
    ap.add_argument("--max-frames", type=int, default=2048, help="stop the longest-video search here")
    ap.add_argument("--vision-frames", type=int, default=64, help="frames for the vision split timing")
    args = ap.parse_args()
    frames = [int(x) for x in args.frames.split(",")]
    sizes = [int(x) for x in args.sp.split(",")]
    side = args.frame_px // 14  # patches per side; 2x2 patches x 2 frames merge into one token
    per_frame = side * side // 8
    print(f"model: hidden {BENCH_SPEC.hidden_size}, {BENCH_SPEC.num_layers} layers, {BENCH_SPEC.num_heads} heads / "
          f"{BENCH_SPEC.num_kv_heads} KV; {per_frame} tokens per frame ({args.frame_px} px); "
          f"prompt {PROMPT + AFTER} + response {RESPONSE} tokens; {os.cpu_count()} CPU cores, 1 thread per rank")
    results = {}
    for sp in sizes:
        t = time.perf_counter()
        results[sp] = run_local_group(_rank, sp, frames, side, args.cap_mib, args.max_frames)[0]
        print(f"  SP={sp} done in {time.perf_counter() - t:.0f} s", flush=True)

    base = sizes[0]
    head = f"{'frames':>7} {'tokens':>7} | " + " ".join(f"{'SP=' + str(s) + ' MiB':>11}" for s in sizes)
    head += " | " + " ".join(f"{'mem /SP' + str(s):>9}" for s in sizes[1:])
    head += " | " + " ".join(f"{'SP=' + str(s) + ' wall':>10}" for s in sizes) + " | "
    head += " ".join(f"{'SP=' + str(s) + ' cpu':>9}" for s in sizes)
    print("\nPeak step memory per rank and step time (one GRPO update step, cached video embeddings)")
    print(head)
    for i, f in enumerate(frames):
        rows = [results[s]["table"][i] for s in sizes]
        line = f"{f:>7} {rows[0]['tokens']:>7} | " + " ".join(f"{r['peak_mib']:>11.1f}" for r in rows)
        line += " | " + " ".join(f"{rows[0]['peak_mib'] / r['peak_mib']:>8.2f}x" for r in rows[1:])
        line += " | " + " ".join(f"{r['wall_s']:>9.2f}s" for r in rows) + " | "
        line += " ".join(f"{r['cpu_s']:>8.2f}s" for r in rows)
        print(line)
    print(f"\nLongest video per rank under a {args.cap_mib:.0f} MiB step-memory cap (frames, {per_frame} tokens/frame)")
    for s in sizes:
        r = results[s]
        note = "" if r["capped"] else f" (search stopped at --max-frames {args.max_frames})"
        ratio = r["longest"] / max(results[base]["longest"], 1)
        tried = " ".join(f"{f}:{'ok' if m['peak_mib'] <= args.cap_mib else 'over'}" for f, m in sorted(r["search"].items()))
        print(f"  SP={s}: {r['longest']:>5} frames{note}  ({ratio:.2f}x SP={base})   tried {tried}")

    print(f"\nVision tower split by frames ({args.vision_frames} frames, {args.frame_px} px, no grad): wall time")
    vt = {s: max(run_local_group(_vision_rank, s, args.vision_frames, side)) for s in sizes}
    print("  " + "  ".join(f"SP={s}: {vt[s]:.2f} s ({vt[base] / vt[s]:.2f}x)" for s in sizes))


if __name__ == "__main__":
    main()
