"""GRPO step time with cached video embeddings vs re-encoding pixels on every pass (MR-SP stage 1).

For several frame counts, runs the real trainer (tiny model, real video files) three ways,
interleaved (rounds of a few steps per mode, order rotated, fixed threads, one warm-up step
each; bench_grpo_step.interleave) and prints min/median step times and ratios side by side:
- pixels:  the vision tower runs for the rollout and again for every row of every training pass
           (old policy, reference, update) - what the reference does;
- online:  once per unique video per step, embeddings reused everywhere (our default);
- offline: zero calls, embeddings read from `longrl embed-cache build` output (build time shown).

The bench model's vision/LLM cost ratio is set to Qwen2.5-VL-7B's: forward FLOPs of the vision
tower per merged video token over the LLM's forward FLOPs per token (weights only, attention
score terms left out) - printed for both, with the measured time ratio of the tiny model.

    .venv/bin/python bench/bench_grpo_cache.py [--frames 16,64] [--repeats 3] [--fail-below 1.1]
    .venv/bin/python bench/bench_grpo_cache.py --preset qwen7b --frames 64,128,256,512  # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from training.tiny_model import TinyModelSpec  # noqa: E402

# Vision 3 blocks of 64 / LLM 4 layers of 256: ratio 0.39, as Qwen2.5-VL-7B (see flops_ratio).
BENCH_SPEC = dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2,
                  vision_depth=3, vision_hidden_size=64, vision_intermediate_size=256,
                  vision_num_heads=2, vision_fullatt_blocks=[2],
                  video_min_pixels=112 * 112, video_max_pixels=112 * 112)
# Qwen2.5-VL-7B-Instruct's shapes (random weights; for a GPU run).
QWEN7B_SPEC = dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                   vision_depth=32, vision_hidden_size=1280, vision_intermediate_size=3420,
                   vision_num_heads=16, vision_fullatt_blocks=[7, 15, 23, 31],
                   video_min_pixels=128 * 28 * 28, video_max_pixels=448 * 448)


def flops_ratio(spec: dict, patch_dim: int = 3 * 2 * 14 * 14, merge: int = 2) -> float:
    """Vision forward FLOPs per merged video token / LLM forward FLOPs per token."""
    h, hv = spec["hidden_size"], spec["vision_hidden_size"]
    kv = h * spec["num_kv_heads"] // spec["num_heads"]
    llm = spec["num_layers"] * (2 * h * h + 2 * h * kv + 3 * h * spec["intermediate_size"])
    block = 4 * hv * hv + 3 * hv * spec["vision_intermediate_size"]
    per_patch = spec["vision_depth"] * block + patch_dim * hv
    merger = (hv * merge**2) ** 2 + hv * merge**2 * h
    return (merge**2 * per_patch + merger) / llm


def write_videos(root: Path, n: int, frames: int, size: tuple[int, int]) -> list[dict]:
    import cv2

    rows = []
    for i in range(n):
        path = root / f"v{frames}_{i}.mp4"
        w, h = size
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (w, h))
        rng = np.random.default_rng(i)
        for t in range(frames):
            f = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
            f[(t * 3) % (h - 8):(t * 3) % (h - 8) + 8, :] = 255
            writer.write(f)
        writer.release()
        rows.append({"id": f"q{frames}_{i}", "video_id": path.stem, "video_path": path.name,
                     "question": "What colour is the video?", "options": ["red", "blue", "green"],
                     "answer": "A", "answer_type": "multiple_choice", "category": "Spatial"})
    return rows


def measured_ratio(model_dir: Path, data: Path, frames: int) -> float:
    """Time of the vision tower on one video / time of the LLM forward on its tokens."""
    import torch

    from training.grpo.video_cache import load_patches
    from training.mm_batch import base_model, encode_videos
    from training.model_io import load_model
    from training.records import load_records
    from training.video_inputs import VideoSampling, VisionSpec

    model = load_model(model_dir)
    rec = load_records(data).records[0]
    p = load_patches(rec, VideoSampling(num_frames=frames), VisionSpec.from_model_dir(model_dir))
    grid = torch.tensor([p.grid_thw])
    with torch.no_grad():
        emb = encode_videos(model, p.pixel_values, grid)[0]
        lm = base_model(model).language_model
        pos = torch.arange(emb.shape[0])[None].expand(3, 1, -1)

        def best(fn, n=5):
            fn()
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return min(ts)

        t_vis = best(lambda: encode_videos(model, p.pixel_values, grid))
        t_llm = best(lambda: lm(inputs_embeds=emb[None], position_ids=pos, use_cache=False))
    return t_vis / t_llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="16,64")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each runs --block steps of every mode")
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--preset", choices=["bench", "qwen7b"], default="bench")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--size", default="112x112", help="video frame size WIDTHxHEIGHT")
    ap.add_argument("--fail-below", type=float, default=0.0,
                    help="exit 1 when pixels/online (median) is below this at any frame count")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from bench_grpo_step import (
        drop_prefetch,
        interleave,
        longrl_step,
        make_trainer,
        set_threads,
        summary,
        trainer_overrides,
        write_task,
    )

    set_threads(args.threads)
    from training.grpo.embed_cache import build_cache
    from training.model_io import load_model
    from training.records import load_records
    from training.tiny_model import write_tiny_model_folder
    from training.video_inputs import VideoSampling, VisionSpec

    spec = BENCH_SPEC if args.preset == "bench" else QWEN7B_SPEC
    frames_list = [int(f) for f in args.frames.split(",")]
    size = tuple(int(v) for v in args.size.split("x"))
    print(f"vision/LLM forward FLOPs per video token: bench model {flops_ratio(spec):.2f}, "
          f"Qwen2.5-VL-7B {flops_ratio(QWEN7B_SPEC):.2f}")
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / ".tmp") as tmp:
        root = Path(tmp)
        model_dir = write_tiny_model_folder(root / "model", TinyModelSpec(seed=0, **spec))
        for frames in frames_list:
            data = write_task(root / f"data{frames}", args.prompts, frames, size)
            cache = root / f"cache{frames}"
            t0 = time.perf_counter()
            build_cache(load_model(model_dir, args.dtype), load_records(data).records, cache,
                        VideoSampling(num_frames=frames), VisionSpec.from_model_dir(model_dir), progress=False)
            build_s = time.perf_counter() - t0
            modes, after = {}, {}
            for m in ("pixels", "online", "offline"):
                over = trainer_overrides(args.prompts, args.group, args.new_tokens, frames)
                tr = make_trainer(model_dir, data, root / f"out{frames}_{m}",
                                  [*over, f"video.embeddings={m}", f"video.embed_cache={cache}", f"dtype={args.dtype}"])
                modes[m], after[m] = longrl_step(tr), (lambda t=tr: drop_prefetch(t))
            print(f"{frames} frames:", flush=True)
            runs = interleave(modes, args.repeats, args.block, after)
            res = {m: {**summary(v), "calls": statistics.median(x["calls"] for x in v)} for m, v in runs.items()}
            rows.append((frames, res, build_s, measured_ratio(model_dir, data, frames)))

    g = args.group
    print(f"\nGRPO step, {args.prompts} prompts x G={g}, {args.new_tokens} new tokens ({args.preset} model, "
          f"{args.dtype}, {args.threads} thread(s)), {args.repeats} rounds x {args.block} steps per mode interleaved; "
          f"median (min) wall s/step; vision = vision-tower calls per video per step")
    head = (f"{'frames':>6} {'vis/LLM time':>12} | {'pixels s':>13} {'online s':>13} {'offline s':>13} | "
            f"{'pixels/online':>13} {'pixels/offline':>14} {'cpu px/on':>9} | {'vision px':>9} {'on':>4} {'off':>4} | "
            f"{'cache build s':>13}")
    print(head)
    print("-" * len(head))
    failed = []
    out = []
    for frames, res, build_s, ratio in rows:
        p, o, f = res["pixels"], res["online"], res["offline"]
        po = p["median"] / o["median"]
        cells = " ".join(f"{r['median']:>6.2f} ({r['min']:>4.2f})" for r in (p, o, f))
        print(f"{frames:>6} {ratio:>12.2f} | {cells} | {po:>12.2f}x {p['median'] / f['median']:>13.2f}x "
              f"{p['cpu_median'] / o['cpu_median']:>8.2f}x | {p['calls']:>9.0f} {o['calls']:>4.0f} {f['calls']:>4.0f} | "
              f"{build_s:>13.2f}")
        out.append({"frames": frames, "modes": res, "pixels/online": po, "vision_llm_time": ratio})
        if args.fail_below and po < args.fail_below:
            failed.append(f"{frames} frames: pixels/online {po:.2f}x < {args.fail_below:.2f}x")
    print("\nphase median seconds (pixels -> online): " + "; ".join(
        f"{frames}f " + ", ".join(f"{k} {res['pixels'][k]:.2f}->{res['online'][k]:.2f}"
                                  for k in ("encode", "rollout", "logprob", "update"))
        for frames, res, _, _ in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if failed:
        print("FAIL: " + "; ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
