"""CoT-SFT training throughput on CPU: real (non-padding) tokens/s and frames/s of the whole
step (video decoding, vision tower, LLM forward/backward, optimizer), for

- length-grouped batches (the default) vs plain shuffled batches - same data, same model;
- gradient checkpointing off vs on (it trades compute for activation memory on GPUs);

on a small random Qwen2.5-VL (text hidden 512 x 4 layers, a small vision tower; `--model DIR`
takes any folder) and synthetic videos of three lengths sampled at 1 frame/s, so examples differ
in length as in real long-video data. Every configuration trains one epoch over the same 48
examples; rates are totals over the epoch. Configurations run in fresh processes (own peak
memory), interleaved `--repeat` times; the best repeat counts (the host is shared).

    .venv/bin/python bench/bench_sft.py [--batch 4] [--threads 1] [--repeat 2] [--model DIR]

`--prefetch` measures instead the video prefetch (`video.prefetch_workers`, training/sft/prefetch.py)
against the plain path it replaces (videos decoded inside the step), at a realistic source size:
H.264 (1 s GOP) files of `--size` (640x360) and `--seconds`, `--frames` (32) frames per example.
Both modes train the same step sequence in one process, interleaved in `--repeat` rounds of
`--block` steps (order rotated each round) with fixed torch threads; a block's first step is not
timed (in both modes it decodes its own videos: a mode's prefetch never runs into another's block).
Prints min / median step seconds, the step's wait for videos, CPU seconds, the ratio, and checks
that both modes gave the same losses. `--fail-below R`: exit 1 when the median ratio is below R.

    .venv/bin/python bench/bench_sft.py --prefetch [--frames 32] [--size 640x360] [--repeat 3] [--block 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_data(root: Path) -> Path:
    import datasets

    from data_gen.schema import features
    from data_gen.synth import SynthConfig, generate, load_synth_questions

    records = []
    for i, minutes in enumerate((0.25, 0.75, 1.5)):
        folder = root / f"synth{i}"
        generate(SynthConfig(videos=2, minutes=minutes, fps=4, width=160, height=96, num_slots=8,
                             questions_per_video=8, seed=i), folder, progress=False)
        records += load_synth_questions(folder)
    datasets.Dataset.from_list([r.to_dict() for r in records], features=features()).save_to_disk(str(root / "data" / "sft"))
    return root / "data"


def run(label: str, model_dir: Path, data: Path, out: Path, args, *overrides: str) -> dict:
    from common.config import load_config
    from training.sft.config import SFTConfig
    from training.sft.run import train_sft

    cfg = load_config(SFTConfig, None, [
        "video.fps=1.0", "video.min_frames=4", "video.max_frames=128", "video.min_pixels=3136",
        "video.max_pixels=6272", "progress=false", "mlflow_log_model=false", "max_bad_fraction=0",
        f"micro_batch_size={args.batch}", "epochs=1", "lr=0.0001", "warmup_steps=1",
        f"cpus_per_worker={args.threads}", *overrides])
    summary = train_sft(cfg, model_dir, data, out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["step_time_s"] for r in rows)
    real = sum(r["tokens_per_s"] * r["step_time_s"] for r in rows)
    frames = sum(r["frames_per_s"] * r["step_time_s"] for r in rows)
    return {
        "label": label, "steps": len(rows), "seconds": seconds,
        "tokens_per_s": real / seconds, "frames_per_s": frames / seconds,
        "pad_fraction": statistics.mean(r["pad_fraction"] for r in rows),
        "peak_mem_gb": summary["peak_mem_gb"], "loss_last": rows[-1]["loss"],
    }


CONFIGS = {
    "length-grouped": [],
    "plain shuffle": ["length_grouping=false"],
    "grouped + grad ckpt": ["gradient_checkpointing=true"],
}


def param_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a dict
                n = 1
                for d in st.get_slice(k).get_shape():
                    n *= d
                total += n
    return total


def make_video_data(root: Path, size: str, seconds: float, fps: int) -> Path:
    """Synthetic examples over H.264 videos at a real source size (decoding them costs what a
    downloaded video's decoding costs: same codec family, GOP, pixels)."""
    import datasets

    from data_gen.schema import features
    from data_gen.synth import SynthConfig, generate, load_synth_questions

    w, h = (int(v) for v in size.split("x"))
    generate(SynthConfig(videos=4, minutes=seconds / 60, fps=fps, width=w, height=h, codec="h264",
                         num_slots=6, questions_per_video=6, seed=0), root / "synth", progress=False)
    records = load_synth_questions(root / "synth")
    datasets.Dataset.from_list([r.to_dict() for r in records], features=features()).save_to_disk(str(root / "data" / "sft"))
    return root / "data"


def prefetch_bench(args, model_dir: Path, root: Path) -> int:
    """Step seconds with vs without the video prefetch; returns the exit code."""
    import time

    import torch

    from common.config import load_config
    from training.distributed import DistContext
    from training.sft.config import SFTConfig
    from training.sft.trainer import SFTTrainer

    torch.set_num_threads(args.threads)
    data = make_video_data(root, args.size, args.seconds, args.fps)
    modes = {"no prefetch": 0, "prefetch": args.workers}
    trainers = {}
    for i, (name, workers) in enumerate(modes.items()):
        cfg = load_config(SFTConfig, None, [
            f"video.num_frames={args.frames}", f"video.max_pixels={args.max_pixels}", "video.min_pixels=3136",
            f"video.prefetch_workers={workers}", "progress=false", "mlflow_log_model=false", "max_bad_fraction=0",
            f"micro_batch_size={args.batch}", "epochs=1000", "lr=0.0001", "warmup_steps=1", "save_every=0",
            f"cpus_per_worker={args.threads}", "scan_decode=false"])
        trainers[name] = SFTTrainer(cfg, model_dir, data, root / f"prefetch-out{i}", DistContext())
    pos = dict.fromkeys(modes, 0)
    losses: dict[str, list[float]] = {m: [] for m in modes}
    times: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}  # wall, cpu, video wait

    def step(name: str, ahead: bool) -> tuple[float, float, float]:
        tr, i = trainers[name], pos[name]
        t0, c0 = time.perf_counter(), time.process_time()
        m = tr.train_step(tr.keys_at(0, i), i, tr.keys_at(0, i + 1) if ahead else None)
        pos[name] += 1
        losses[name].append(m["loss"])
        return time.perf_counter() - t0, time.process_time() - c0, m["video_load_s"]

    names = list(modes)
    for name in names:  # warm-up (allocator, first decodes)
        step(name, ahead=False)
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for b in range(args.block):
                # the block's last step asks nothing ahead: no decode runs into the next block
                t = step(name, ahead=b < args.block - 1)
                if b > 0:  # the first step decodes its own videos in both modes
                    times[name].append(t)
            trainers[name].prefetch.drop()
    for tr in trainers.values():
        tr.prefetch.close()
    same = losses[names[0]] == losses[names[1]]
    v = trainers[names[0]].cfg.video
    print(f"\nSFT step, video prefetch: {args.size} H.264 (1 s GOP) sources, {args.frames} frames per example "
          f"(max_pixels {v.max_pixels}), micro-batch {args.batch}, {args.threads} torch thread(s), "
          f"{args.workers} prefetch workers; {args.repeat} rounds x {args.block - 1} timed steps per mode; "
          f"load average {os.getloadavg()[0]:.1f}")
    head = f"{'mode':<14}{'step s min':>11}{'median':>9}{'video wait s':>14}{'CPU s':>8}"
    print(head)
    print("-" * len(head))
    med: dict[str, float] = {}
    for name in names:
        wall = [t[0] for t in times[name]]
        med[name] = statistics.median(wall)
        print(f"{name:<14}{min(wall):>11.2f}{med[name]:>9.2f}{statistics.median(t[2] for t in times[name]):>14.2f}"
              f"{statistics.median(t[1] for t in times[name]):>8.2f}")
    ratio = med["no prefetch"] / med["prefetch"]
    ratio_min = min(t[0] for t in times["no prefetch"]) / min(t[0] for t in times["prefetch"])
    print(f"no prefetch / prefetch: {ratio:.2f}x median, {ratio_min:.2f}x min; losses identical: {'yes' if same else 'NO'}")
    print("video wait: seconds the step spent getting its videos (decoding them, or waiting for the prefetch); "
          "CPU s: the process's CPU seconds per step (all threads)")
    failed = not same or (args.fail_below and ratio < args.fail_below)
    if failed:
        print("regression check: FAILED" + ("" if same else " (losses differ)"))
    return 1 if failed else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="micro-batch size (one worker)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repeats; the fastest counts")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: a small random Qwen2.5-VL)")
    p.add_argument("--prefetch", action="store_true", help="time the video prefetch against in-step decoding")
    p.add_argument("--frames", type=int, default=32, help="--prefetch: frames per example")
    p.add_argument("--size", default="640x360", help="--prefetch: source video size")
    p.add_argument("--seconds", type=float, default=30.0, help="--prefetch: source video length")
    p.add_argument("--fps", type=int, default=30, help="--prefetch: source frame rate")
    p.add_argument("--max-pixels", type=int, default=25088, help="--prefetch: model frame pixel budget")
    p.add_argument("--block", type=int, default=4, help="--prefetch: steps per mode per round")
    p.add_argument("--workers", type=int, default=2, help="--prefetch: video.prefetch_workers")
    p.add_argument("--fail-below", type=float, default=0.0, help="--prefetch: exit 1 below this median ratio")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config
    p.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # a child process: one configuration, its own peak memory
        res = run(args.one, args.model, args.root / "data", args.root / f"out{list(CONFIGS).index(args.one)}",
                  args, *CONFIGS[args.one])
        print("RESULT " + json.dumps(res))
        return

    import subprocess

    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        model_dir = args.model or write_tiny_model_folder(root / "model", TinyModelSpec(
            hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8, num_kv_heads=2,
            vision_depth=2, vision_hidden_size=64, vision_intermediate_size=128, vision_num_heads=2,
            vision_fullatt_blocks=[1]))
        if args.prefetch:
            sys.exit(prefetch_bench(args, model_dir, root))
        make_data(root)
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for label in CONFIGS:
                cmd = [sys.executable, __file__, "--one", label, "--root", str(root), "--model", str(model_dir),
                       "--batch", str(args.batch), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
                if label not in best or res["seconds"] < best[label]["seconds"]:
                    best[label] = res
        n_params = param_count(model_dir)
    results = [best[label] for label in CONFIGS]
    print(f"\nCoT-SFT on CPU: one epoch of {results[0]['steps']} steps x micro-batch {args.batch}, "
          f"{args.threads} thread(s), {n_params / 1e6:.1f} M params, best of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.1f}")
    head = (f"{'config':<22}{'tokens/s':>10}{'frames/s':>10}{'padding':>9}{'epoch s':>9}{'peak GB':>9}"
            f"{'vs grouped':>12}")
    print(head)
    print("-" * len(head))
    base = results[0]["tokens_per_s"]
    for r in results:
        print(f"{r['label']:<22}{r['tokens_per_s']:>10.0f}{r['frames_per_s']:>10.1f}{r['pad_fraction']:>9.1%}"
              f"{r['seconds']:>9.1f}{r['peak_mem_gb']:>9.2f}{r['tokens_per_s'] / base:>11.2f}x")
    print("tokens/s: real (non-padding) prompt+response tokens per second of training steps; padding: padded "
          "share of the batch tensors; peak GB: the process's peak resident memory.")


if __name__ == "__main__":
    main()
