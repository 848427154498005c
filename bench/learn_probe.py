"""Issue 11.4 probes behind docs/grpo.md "Learning": one rung of the synth ladder at a time.

    .venv/bin/python bench/learn_probe.py sft OBJECT_SCALE STEPS TAG [sft overrides...]
    .venv/bin/python bench/learn_probe.py grpo TAG STEPS NAME [grpo overrides...]
    .venv/bin/python bench/learn_probe.py solid TAG STEPS [sft overrides...]

env FRAMES (default: bench_learning's 8), RECOLOURS (SynthConfig.max_recolours, default -1),
WIDTH and LAYERS (the LLM's hidden size and depth; default bench_learning's 128 and 4), CANON=1
(SynthConfig.canonical_options: colour options are the whole palette in palette order).
`sft` builds seed-1 data and model with bench_learning's functions (ladder knob object_scale
and max_recolours), trains SFT and evaluates it on the held-out split; `grpo` trains GRPO from
TAG's SFT model and compares it with that SFT run (paired McNemar); `solid` is the sanity rung:
solid-colour videos, "What colour is the video?". Everything lands in .tmp/learn/TAG.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import bench_learning as bl  # noqa: E402  (the bench folder is not a package)

SFT_ARGS = ["video.fps=0", "micro_batch_size=8", "epochs=100", "lr=1e-3", "freeze_vision_tower=false",
            "eval_generate=0", "save_every=0", "log_every=50", "seed=1", "scan_decode=false"]  # fmt: skip


def _sft(base: Path, data: Path, out: Path, steps: int, extra: list[str]) -> Path:
    from common.config import load_config
    from training.sft.config import SFTConfig
    from training.sft.run import train_sft

    cfg = load_config(SFTConfig, None, [f"video.num_frames={bl.FRAMES}", f"video.max_pixels={bl.MAX_PIXELS}",
                                        f"max_steps={steps}", *SFT_ARGS, *extra])  # fmt: skip
    if not (out / "model" / "config.json").is_file():
        train_sft(cfg, base, data, out)
    return out / "model"


def probe_sft(scale: float, steps: int, tag: str, extra: list[str]) -> None:
    bl.LADDER["object_scale"] = scale
    bl.LADDER["max_recolours"] = int(os.environ.get("RECOLOURS", -1))
    bl.LADDER["canonical_options"] = os.environ.get("CANON", "0") == "1"
    out = ROOT / ".tmp" / "learn" / tag
    out.mkdir(parents=True, exist_ok=True)
    data = bl.make_data(out, 1, {"sft": 500, "rl": 500, "bench": 60})
    model = _sft(bl.make_model(out, 1), data["sft"], out / "sft", steps, extra)
    print(tag, bl.by_type(bl.evaluate(model, data["bench"], out / "eval-sft")), flush=True)


def probe_grpo(tag: str, steps: int, name: str, extra: list[str]) -> None:
    from common.config import load_config
    from eval.compare import compare_runs
    from training.grpo.config import GRPOConfig
    from training.grpo.run import train_grpo

    src = ROOT / ".tmp" / "learn" / tag
    out = src / name
    cfg = load_config(GRPOConfig, None, [
        f"max_steps={steps}", "seed=1", "rollout.prompts_per_step=8", "rollout.group_size=6",
        "rollout.max_new_tokens=40", f"video.num_frames={bl.FRAMES}", "video.fps=0",
        f"video.max_pixels={bl.MAX_PIXELS}", "optim.lr=2e-5", "algorithm.kl_coef=0.0", "save_every=0",
        "plots=true", "progress=false", *extra])  # fmt: skip
    if not (out / "model" / "config.json").is_file():
        train_grpo(cfg, src / "sft" / "model", src / "data" / "rl", out)
    print(name, "reward quarters", bl.reward_quarters(out), flush=True)
    run = bl.evaluate(out / "model", src / "data" / "bench", out / "eval")
    res = compare_runs(run, src / "eval-sft", n_boot=500, seed=1)["benchmarks"]["synth"]
    print(name, bl.by_type(run), "vs sft", res["difference"], res["wins"], res["losses"], res["p_value"])


def probe_solid(tag: str, steps: int, extra: list[str]) -> None:
    import cv2
    import numpy as np

    from data_gen.schema import QARecord
    from data_gen.synth_world import COLOURS

    out = ROOT / ".tmp" / "learn" / tag
    names = list(COLOURS)
    for split, n, seed in (("train", 300, 1), ("bench", 70, 2)):
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        rng, rows = np.random.default_rng(seed), []
        for i in range(n):
            colour = names[rng.integers(len(names))]
            if not (d / f"v{i}.mp4").exists():
                w = cv2.VideoWriter(str(d / f"v{i}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (168, 112))
                for _ in range(32):
                    w.write(np.full((112, 168, 3), COLOURS[colour][::-1], np.uint8))
                w.release()
            rows.append(QARecord(id=f"q{i}", video_id=f"v{i}", video_path=f"v{i}.mp4",
                                 question="What colour is the video?", answer=colour, answer_type="open_ended",
                                 reasoning=f"The video is {colour}.", category="Plot & Narrative").to_dict())  # fmt: skip
        (d / "manifest.json").write_text(json.dumps({"format": "longrl-synth"}))
        (d / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = _sft(bl.make_model(out, 1), out / "train", out / "sft", steps, extra)
    run = bl.evaluate(model, out / "bench", out / "ev")
    rows = [json.loads(x) for x in (run / "synth" / "predictions.jsonl").read_text().splitlines()]
    # a plain QARecord folder is not exact-graded by the synth task: compare the names here
    print(tag, "right", sum(r["extracted"] == r["answer"] for r in rows), "of", len(rows))


def main() -> None:
    if len(sys.argv) < 2:  # `make bench` runs every script bare: say how, run nothing
        print(__doc__)
        return
    cmd, args = sys.argv[1], sys.argv[2:]
    bl.FRAMES = int(os.environ.get("FRAMES", bl.FRAMES))
    if width := int(os.environ.get("WIDTH", 0)):
        bl.MODEL.update(hidden_size=width, intermediate_size=2 * width)
    bl.MODEL["num_layers"] = int(os.environ.get("LAYERS", bl.MODEL["num_layers"]))
    t0 = time.monotonic()
    if cmd == "sft":
        probe_sft(float(args[0]), int(args[1]), args[2], args[3:])
    elif cmd == "grpo":
        probe_grpo(args[0], int(args[1]), args[2], args[3:])
    elif cmd == "solid":
        probe_solid(args[0], int(args[1]), args[2:])
    else:
        raise SystemExit(f"unknown probe {cmd!r}: sft, grpo or solid")
    print(f"{(time.monotonic() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
