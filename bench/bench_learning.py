"""Does the recipe learn? base -> CoT-SFT -> GRPO on held-out synthetic long videos, paired tests.

    .venv/bin/python bench/bench_learning.py --seed N [--out DIR] [--sft-steps S] [--grpo-steps G]

N seeds everything: the tiny Qwen2.5-VL's weights, the SFT videos, the RL videos and a disjoint
benchmark (seeds 10_000 + 10 N + {1, 2, 3}: no test or demo uses them; a benchmark video whose
bytes also occur in a training set is left out, with its questions). The model is the "learn" preset, a
real Qwen2.5-VL folder of ~1 M parameters; the data are one rung of the synthetic task ladder
(`SynthConfig.task_types`, objects, slots, reasoning style). Each model answers every benchmark
question greedily; answers are graded exactly (multiple choice by letter, ground-truth names by
common.short_answers), so all three are scored on the same items.

Prints the accuracy table (overall, multiple choice beside its chance level, open-ended), the
paired comparisons (McNemar exact over questions, bootstrap CI over videos), the GRPO reward
curve's first and last quarter, and ends with one line:

    learning: base A sft B grpo C; sft-vs-base p=P1; grpo-vs-sft p=P2

Everything lands under --out (default .tmp/bench_learning/seed-N): the three eval folders
(predictions, metrics, plots), the SFT and GRPO runs (curves, checkpoints), table.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One rung of the ladder and the model that climbs it (sizes for 2 CPU cores).
# The rung the learning bar is measured on (docs/grpo.md "Learning"): one large object that keeps
# its colour, colour options in palette order (a letter per colour).
LADDER = {"task_types": ["state_change"], "min_objects": 1, "max_objects": 1, "num_slots": 8,
          "reasoning": "brief", "minutes": 0.5, "fps": 4.0, "width": 168, "height": 112,
          "object_scale": 6.0, "max_recolours": 0, "canonical_options": True}
MODEL = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
         "vision_depth": 2, "vision_hidden_size": 64, "vision_intermediate_size": 128,
         "vision_num_heads": 2, "vision_fullatt_blocks": [1], "video_max_pixels": 168 * 112}
# Rollouts at T=0.7 (at T=1 most of the tiny model's samples are broken text, far from the greedy
# answers that are graded) with KL to the SFT model.
GRPO_RECIPE = ["optim.lr=5e-5", "rollout.temperature=0.7", "algorithm.kl_coef=0.02"]
FRAMES, MAX_PIXELS = 8, 4704  # one merged token per region of the 2x3 grid, 4 temporal patches


def make_data(out: Path, seed: int, videos: dict[str, int]) -> dict[str, Path]:
    from data_gen.synth import SynthConfig, generate

    dirs = {}
    for k, (name, n) in enumerate(videos.items(), start=1):
        d = out / "data" / name
        if not (d / "manifest.json").is_file():
            generate(SynthConfig(videos=n, seed=10_000 + 10 * seed + k, questions_per_video=4, **LADDER), d,
                     progress=False)  # fmt: skip
        dirs[name] = d
    digests = {name: {v["digest"] for v in json.loads((d / "manifest.json").read_text())["videos"]}
               for name, d in dirs.items()}  # fmt: skip
    leak = digests["bench"] & (digests["sft"] | digests["rl"])
    if leak:
        drop_videos(dirs["bench"], leak)
    return dirs


def drop_videos(bench: Path, digests: set[str]) -> None:
    """Take benchmark videos whose bytes also occur in a training set out of the benchmark (with
    their questions). A one-object rung has few distinct scripts, so a disjoint seed can still
    draw a training video again now and then: held out means held out by content, not by seed."""
    man = json.loads((bench / "manifest.json").read_text())
    gone = {v["video_id"] for v in man["videos"] if v["digest"] in digests}
    man["videos"] = [v for v in man["videos"] if v["video_id"] not in gone]
    rows = [x for x in (bench / "questions.jsonl").read_text().splitlines()
            if x.strip() and json.loads(x)["video_id"] not in gone]  # fmt: skip
    (bench / "questions.jsonl").write_text("".join(r + "\n" for r in rows))
    (bench / "manifest.json").write_text(json.dumps(man, indent=1))
    print(f"benchmark: {len(gone)} video(s) also in the training data left out ({sorted(gone)}); "
          f"{len(rows)} questions remain")


def make_model(out: Path, seed: int) -> Path:
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    path = out / "base"
    if not (path / "config.json").is_file():
        write_tiny_model_folder(path, TinyModelSpec(seed=seed, **MODEL))
    return path


def run_sft(base: Path, data: Path, out: Path, steps: int, seed: int) -> Path:
    from common.config import load_config
    from training.sft.config import SFTConfig
    from training.sft.run import train_sft

    cfg = load_config(SFTConfig, None, [
        f"video.num_frames={FRAMES}", "video.fps=0", f"video.max_pixels={MAX_PIXELS}", "micro_batch_size=8",
        "epochs=100", f"max_steps={steps}", "lr=1e-3", "freeze_vision_tower=true", "eval_generate=0",
        "save_every=0", "log_every=50", f"seed={seed}", "scan_decode=false"])  # fmt: skip
    if not (out / "model" / "config.json").is_file():
        train_sft(cfg, base, data, out)
    return out / "model"


def run_grpo(sft: Path, data: Path, out: Path, steps: int, seed: int) -> Path:
    from common.config import load_config
    from training.grpo.config import GRPOConfig
    from training.grpo.run import train_grpo

    cfg = load_config(GRPOConfig, None, [
        f"max_steps={steps}", f"seed={seed}", "rollout.prompts_per_step=8", "rollout.group_size=6",
        "rollout.max_new_tokens=40", f"video.num_frames={FRAMES}", "video.fps=0",
        f"video.max_pixels={MAX_PIXELS}", *GRPO_RECIPE, "save_every=0", "plots=true",
        "progress=false"])  # fmt: skip
    if not (out / "model" / "config.json").is_file():
        train_grpo(cfg, sft, data, out)
    return out / "model"


def evaluate(model: Path, bench: Path, out: Path) -> Path:
    from common.config import load_config
    from eval.config import EvalConfig
    from eval.runner import evaluate as run_eval

    cfg = load_config(EvalConfig, None, [
        f"model={model}", "benchmarks=[synth]", f"data={bench}", f"out={out}", f"frames={FRAMES}",
        f"max_pixels={MAX_PIXELS}", "max_new_tokens=40", "batch_size=16", "bootstrap=500"])  # fmt: skip
    run_eval(cfg)
    return out


def by_type(run: Path) -> dict[str, tuple[int, int]]:
    rows = [json.loads(x) for x in (run / "synth" / "predictions.jsonl").read_text().splitlines()]
    out: dict[str, tuple[int, int]] = {}
    for key in ("all", "multiple_choice", "open_ended"):
        sel = [r for r in rows if key == "all" or r["answer_type"] == key]
        out[key] = (sum(bool(r["correct"]) for r in sel), len(sel))
    return out


def mc_chance(run: Path) -> float:
    """Chance level of the multiple-choice items: the mean of 1 / number of options."""
    rows = [json.loads(x) for x in (run / "synth" / "predictions.jsonl").read_text().splitlines()]
    opts = [len(r["options"]) for r in rows if r["answer_type"] == "multiple_choice" and r.get("options")]
    return sum(1 / n for n in opts) / len(opts) if opts else float("nan")


def reward_quarters(grpo_out: Path) -> tuple[float, float]:
    hist = [json.loads(x) for x in (grpo_out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    acc = [h["reward/accuracy"] for h in hist if h.get("reward/accuracy") is not None]
    q = max(1, len(acc) // 4)
    return sum(acc[:q]) / q, sum(acc[-q:]) / q


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sft-steps", type=int, default=180, help="short on purpose: SFT leaves room for GRPO")
    ap.add_argument("--grpo-steps", type=int, default=60)
    ap.add_argument("--videos", type=int, default=500, help="SFT videos (RL: the same number)")
    ap.add_argument("--bench-videos", type=int, default=60, help="benchmark videos (4 questions each)")
    args = ap.parse_args()
    out = (args.out or Path(".tmp/bench_learning") / f"seed-{args.seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    from eval.compare import compare_runs

    console = Console()
    t0 = time.monotonic()
    data = make_data(out, args.seed, {"sft": args.videos, "rl": args.videos, "bench": args.bench_videos})
    base = make_model(out, args.seed)
    sft = run_sft(base, data["sft"], out / "sft", args.sft_steps, args.seed)
    grpo = run_grpo(sft, data["rl"], out / "grpo", args.grpo_steps, args.seed)
    runs = {name: evaluate(m, data["bench"], out / f"eval-{name}") for name, m in
            (("base", base), ("sft", sft), ("grpo", grpo))}  # fmt: skip
    acc = {k: by_type(r) for k, r in runs.items()}
    chance = mc_chance(runs["base"])
    table = Table(title=f"held-out synth benchmark (seed {args.seed}, {acc['base']['all'][1]} questions)")
    for col in ("model", "overall", f"multiple choice (chance {chance:.0%})", "open-ended (7 colours)"):
        table.add_column(col, justify="right")
    for name, a in acc.items():
        table.add_row(name, *(f"{100 * c / max(1, n):.1f} % ({c}/{n})" for c, n in a.values()))
    console.print(table)
    pairs = {}
    for b_name, a_name in (("base", "sft"), ("sft", "grpo")):
        res = compare_runs(runs[a_name], runs[b_name], n_boot=1000, seed=args.seed)["benchmarks"]["synth"]
        pairs[f"{a_name}-vs-{b_name}"] = res
        lo, hi = res["difference_ci95"] or (float("nan"), float("nan"))
        console.print(f"{a_name} vs {b_name}: {100 * res['difference']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                      f"wins {res['wins']} losses {res['losses']}, {res.get('test', 'McNemar')} p = {res['p_value']:.3g}")  # fmt: skip
    first, last = reward_quarters(out / "grpo")
    console.print(f"GRPO accuracy reward: first quarter {first:.3f}, last quarter {last:.3f} "
                  f"({args.grpo_steps} steps); curves in {out / 'grpo'}")
    score = {k: a["all"][0] / max(1, a["all"][1]) for k, a in acc.items()}
    (out / "table.json").write_text(json.dumps({"seed": args.seed, "accuracy": acc, "pairs": pairs,
                                                "reward_quarters": [first, last], "args": vars(args) | {"out": str(out)},
                                                "minutes": (time.monotonic() - t0) / 60}, indent=1, default=str))  # fmt: skip
    console.print(f"{(time.monotonic() - t0) / 60:.1f} min; everything under {out}")
    print(f"learning: base {score['base']:.3f} sft {score['sft']:.3f} grpo {score['grpo']:.3f}; "
          f"sft-vs-base p={pairs['sft-vs-base']['p_value']:.3g}; grpo-vs-sft p={pairs['grpo-vs-sft']['p_value']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
