"""Eval throughput of the `hf` engine by batch size, side by side, with the outputs checked
equal to batch size 1 (greedy decoding must not depend on batching).

A tiny random Qwen2.5-VL and a `longrl synth` benchmark are built in a temporary folder; every
question is answered at each batch size. Video decoding is done once up front and timed apart,
so the figures are generation only.

    .venv/bin/python bench/bench_eval_batching.py [--questions 16] [--batch-sizes 1,4,8]
        [--max-new-tokens 32] [--frames 8] [--model DIR] [--synth DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=12544)
    ap.add_argument("--model", default="", help="model folder (default: a tiny random one)")
    ap.add_argument("--synth", default="", help="`longrl synth` folder (default: generated)")
    args = ap.parse_args()

    import torch

    from data_gen.synth import SynthConfig, generate
    from eval.engines import Prompt
    from eval.engines.hf import HFEngine
    from eval.task import get_task
    from training.prompts import SYSTEM_PROMPT
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder
    from training.video_inputs import VideoSampling

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    model = args.model or str(write_tiny_model_folder(tmp / "tiny", TinyModelSpec(seed=0)))
    synth = Path(args.synth) if args.synth else tmp / "synth"
    if not args.synth:
        generate(
            SynthConfig(
                videos=2, minutes=0.5, fps=4.0, width=160, height=90, questions_per_video=8
            ),
            synth,
            progress=False,
        )
    sampling = VideoSampling(num_frames=args.frames, min_pixels=784, max_pixels=args.max_pixels)
    engine = HFEngine(model, sampling)
    task = get_task("synth")
    items = task.load(synth)[: args.questions]
    t0 = time.perf_counter()
    prepared = [engine.prepare(it) for it in items]
    decode_s = time.perf_counter() - t0
    prompts = [Prompt(task.render_prompt(it), SYSTEM_PROMPT) for it in items]
    print(
        f"device {engine.device} dtype {engine.dtype} torch threads {torch.get_num_threads()}; "
        f"{len(items)} questions, {args.frames} frames ({prepared[0].num_video_tokens} video tokens), "
        f"max_new_tokens {args.max_new_tokens}; video decode {decode_s:.2f} s total"
    )
    print(
        f"{'batch':>5} {'seconds':>8} {'questions/s':>12} {'tokens/s':>9} {'speed-up':>9} {'same outputs':>13}"
    )
    base_time, base_text = None, None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        texts, tokens = [], 0
        t0 = time.perf_counter()
        for s in range(0, len(items), bs):
            gens = engine.generate(prepared[s : s + bs], prompts[s : s + bs], args.max_new_tokens)
            texts += [g.text for g in gens]
            tokens += sum(g.num_tokens for g in gens)
        dt = time.perf_counter() - t0
        if base_time is None:
            base_time, base_text = dt, texts
        print(
            f"{bs:>5} {dt:>8.2f} {len(items) / dt:>12.2f} {tokens / dt:>9.1f} {base_time / dt:>8.2f}x "
            f"{str(texts == base_text):>13}"
        )


if __name__ == "__main__":
    main()
