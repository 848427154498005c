"""Hit rate of GRPO's decoded-video store under the sampler's real order (issue 18.4).

Simulates a split shaped like LongVideo-Reason's RL split (records spread over videos, several
questions per video) drawn by the trainer's own PromptSampler (seeded shuffle per epoch,
prompts_per_step per step, a video asked twice in one step decoded once), through an LRU store
of `--store-mb`, holding float32 patches (the former store) or uint8 frames (the current one).
Prints the measured hit rate of both beside `VideoEmbedder.store_hit_estimate`, the rule that
switches the store off below 1 %.

    .venv/bin/python bench/bench_video_store.py --records 68000 --videos 18000 --frames 64
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class _Rec:
    id: str
    video: int


def simulate(records: int, videos: int, capacity: int, steps: int, per_step: int, seed: int) -> float:
    from training.grpo.data import PromptSampler

    recs = [_Rec(f"q{i}", i % videos) for i in range(records)]
    sampler = PromptSampler(recs, seed)  # type: ignore[arg-type]
    store: OrderedDict[int, None] = OrderedDict()
    hits = looked = 0
    for _ in range(steps):
        for v in dict.fromkeys(r.video for r in sampler.next(per_step)):  # unique per step
            looked += 1
            if v in store:
                hits += 1
                store.move_to_end(v)
            else:
                store[v] = None
                while len(store) > max(capacity, 1):
                    store.popitem(last=False)
    return hits / looked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=68_000)
    ap.add_argument("--videos", type=int, default=18_000)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--pixels", type=int, default=448 * 448, help="pixels per frame after resizing")
    ap.add_argument("--store-mb", type=int, default=2048)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--steps", type=int, default=0, help="steps simulated (0: two epochs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from training.grpo.video_cache import MIN_STORE_HIT, VideoEmbedder

    steps = args.steps or 2 * args.records // args.prompts
    u8 = args.frames * args.pixels * 3
    print(f"{args.records} records over {args.videos} videos, {args.prompts} prompts/step, {steps} steps; "
          f"{args.frames} frames x {args.pixels} px: {u8 * 4 / 2**20:.0f} MB float32 patches, "
          f"{u8 / 2**20:.0f} MB uint8 frames; store {args.store_mb} MB")
    head = f"{'store holds':<18} {'videos':>7} {'measured hit rate':>18} {'estimate':>9} {'kept':>5}"
    print(head + "\n" + "-" * len(head))
    for name, per_video in (("float32 patches", u8 * 4), ("uint8 frames", u8)):
        cap = args.store_mb * 2**20 // per_video
        hit = simulate(args.records, args.videos, cap, steps, args.prompts, args.seed)
        est = VideoEmbedder.store_hit_estimate(args.records, args.videos, cap)
        print(f"{name:<18} {cap:>7} {hit:>17.3%} {est:>8.3%} {'yes' if est >= MIN_STORE_HIT else 'no':>5}")


if __name__ == "__main__":
    main()
