"""A GRPO step of longrl's trainer beside a plain Hugging Face step written the way TRL's
GRPOTrainer does it, in one run, on the same model, videos, prompts and budgets.

The plain step (the peer baseline): each prompt's row repeated G times; its video decoded and
patched every step; `model.generate(pixel_values_videos=..., do_sample=True)` over the P x G
rows (the vision tower and the whole prompt prefill run once per row); the reference's
log-probs by a forward with the pixels; the loss forward with the pixels (vision tower again),
PPO-clip + k3 KL, backward, AdamW. With one iteration per batch TRL skips the old-policy pass,
as longrl does.

longrl's step is `GRPOTrainer.train_step` (encode each video once, prefill each prompt once,
decode its G samples from the shared KV cache, cached positions, causal scoring without a
mask, next step's videos decoded in the background). Modes that turn one fast path off show
what each is worth against the path it replaces:
- longrl-rowwise: rollout.share_prefix=false (every row prefilled on its own);
- longrl-noprefetch: video.prefetch_workers=0 (videos decoded inside the step);
- longrl-oldpass: the old-policy log-prob pass run although it equals the update's own.

Modes run interleaved (round-robin over `--repeats` rounds of `--block` steps each, order
rotated every round) with a fixed thread count, after one warm-up step each; min and median
step seconds per mode. A longrl mode leaves no decode running when its block ends (pending
prefetches are dropped, so the next block's first step decodes its own videos). `--fail-below
R` exits 1 when the plain/longrl median ratio is below R (a regression gate).

    .venv/bin/python bench/bench_grpo_step.py --frames 64 --threads 1 --fail-below 1.5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def set_threads(n: int) -> None:
    """Fix the compute threads before any heavy import uses them."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(max(1, n))


# ----------------------------------------------------------------------------------------------
# longrl
def trainer_overrides(prompts: int, group: int, new_tokens: int, frames: int, lr: float = 1e-4,
                      kl_coef: float = 0.01, seed: int = 0) -> list[str]:
    return [f"max_steps={10**6}", f"rollout.prompts_per_step={prompts}", f"rollout.group_size={group}",
            f"rollout.max_new_tokens={new_tokens}", f"video.num_frames={frames}", "progress=false",
            "plots=false", "save_every=0", f"optim.lr={lr}", f"algorithm.kl_coef={kl_coef}", f"seed={seed}"]


def make_trainer(model_dir: Path, data: Path, out: Path, overrides: list[str]):
    from common.config import load_config
    from training.grpo.config import GRPOConfig
    from training.grpo.trainer import GRPOTrainer

    return GRPOTrainer(load_config(GRPOConfig, None, overrides), model_dir, data, out)


def longrl_step(trainer, force_old_pass: bool = False) -> Callable[[], dict]:
    import contextlib
    from unittest import mock

    def step() -> dict:
        trainer.step += 1
        # the path 18.1 replaces: the old-policy pass run although it equals the update's own
        patch = (mock.patch("training.grpo.trainer.old_pass_is_redundant", lambda *a: False)
                 if force_old_pass else contextlib.nullcontext())
        t0, c0 = time.perf_counter(), time.process_time()
        with trainer.precision.autocast(), patch:
            m = trainer.train_step(trainer.step)
        return {"s": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                "calls": m.get("vision_calls_per_video", 0.0),
                **{k: m.get(f"time/{k}", 0.0) for k in ("encode", "rollout", "logprob", "update")}}
    return step


def drop_prefetch(trainer) -> None:
    """No decode of this mode may run into another mode's timing (nor be kept for free)."""
    trainer.embedder.drop_prefetch()


# ----------------------------------------------------------------------------------------------
# the plain HF / TRL-style step
class PlainStep:
    """TRL GRPOTrainer's step for a video VLM, with transformers' own generate and forward."""

    def __init__(self, model_dir: Path, data: Path, args, scorer) -> None:
        import torch

        from training.grpo.data import PromptSampler
        from training.grpo.setup import STOP_TOKENS
        from training.model_io import load_model, load_tokenizer
        from training.prompts import SYSTEM_PROMPT
        from training.records import load_records
        from training.video_inputs import VideoSampling, VisionSpec

        self.args, self.scorer = args, scorer
        self.model = load_model(model_dir)
        self.model.model.visual.requires_grad_(False)  # as the trainer's default freeze_vision
        self.ref = load_model(model_dir) if args.kl_coef > 0 else None
        self.tok = load_tokenizer(model_dir)
        self.stop = [self.tok.convert_tokens_to_ids(t) for t in STOP_TOKENS]  # the trainer's
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=args.lr,
                                     weight_decay=1e-2)
        self.sampler = PromptSampler(load_records(data).records, args.seed)
        self.sampling, self.spec = VideoSampling(num_frames=args.frames), VisionSpec.from_model_dir(model_dir)
        self.system = SYSTEM_PROMPT
        cfg = self.model.config
        self.suppress = [i for i in (getattr(cfg, "video_token_id", None), getattr(cfg, "image_token_id", None))
                         if i is not None]
        self.gen = torch.Generator().manual_seed(args.seed)

    def logps(self, model, ids, attn, types, batch, n_completion: int):
        import torch

        out = model(input_ids=ids, attention_mask=attn, pixel_values_videos=batch.pixel_values_videos,
                    video_grid_thw=batch.video_grid_thw, second_per_grid_ts=batch.second_per_grid_ts,
                    mm_token_type_ids=types, logits_to_keep=n_completion + 1, use_cache=False)
        logits = out.logits[:, :-1].float() / self.args.temperature
        model.model.rope_deltas = None
        target = ids[:, -n_completion:]
        return torch.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)

    def __call__(self) -> dict:
        import torch

        from training.grpo.video_cache import load_patches
        from training.mm_batch import collate
        from training.prompts import encode_example

        a, G = self.args, self.args.group
        t0, c0 = time.perf_counter(), time.process_time()
        recs = self.sampler.next(a.prompts)
        vids = [load_patches(r, self.sampling, self.spec) for r in recs]  # the processor reads the video
        prompts = [encode_example(self.tok, r, v.num_tokens, system_prompt=self.system) for r, v in zip(recs, vids)]
        batch = collate([p for p in prompts for _ in range(G)], [v for v in vids for _ in range(G)],
                        self.tok.pad_token_id)
        t1 = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            seq = self.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                second_per_grid_ts=batch.second_per_grid_ts, mm_token_type_ids=batch.mm_token_type_ids,
                do_sample=True, temperature=a.temperature, top_k=0, top_p=1.0, max_new_tokens=a.new_tokens,
                min_new_tokens=a.new_tokens if a.fixed_length else 0,
                eos_token_id=self.stop, pad_token_id=self.tok.pad_token_id,
                # a sampled <|video_pad|> would make transformers' forward count one video token
                # too many (longrl reads video positions from the token types, not the id)
                suppress_tokens=self.suppress)
        self.model.model.rope_deltas = None
        L = batch.input_ids.shape[1]
        completion = seq[:, L:]
        C = completion.shape[1]
        is_eos = torch.isin(completion, torch.tensor(self.stop))
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((seq.shape[0],), C))
        cmask = (torch.arange(C)[None] <= first[:, None]).float()
        t2 = time.perf_counter()
        texts = self.tok.batch_decode(completion, skip_special_tokens=True)
        rewards = torch.tensor([r.total for r in self.scorer.score(texts, [r for r in recs for _ in range(G)])])
        grouped = rewards.view(-1, G)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
        attn = torch.cat([batch.attention_mask, cmask.long()], 1)
        types = torch.cat([batch.mm_token_type_ids, torch.zeros_like(completion, dtype=batch.mm_token_type_ids.dtype)], 1)
        ref = None
        if self.ref is not None:
            with torch.no_grad():
                ref = self.logps(self.ref, seq, attn, types, batch, C)
        t3 = time.perf_counter()
        self.model.train()
        lp = self.logps(self.model, seq, attn, types, batch, C)
        ratio = torch.exp(lp - lp.detach())  # one iteration: old = current, detached
        clipped = torch.clamp(ratio, 0.8, 1.2)
        loss_tok = -torch.min(ratio * adv[:, None], clipped * adv[:, None])
        if ref is not None:
            loss_tok = loss_tok + a.kl_coef * (torch.exp(ref - lp) - (ref - lp) - 1)
        loss = (loss_tok * cmask).sum() / cmask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        return {"s": t4 - t0, "cpu": time.process_time() - c0, "encode": t1 - t0, "rollout": t2 - t1, "logprob": t3 - t2, "update": t4 - t3}


# ----------------------------------------------------------------------------------------------
def interleave(modes: dict[str, Callable[[], dict]], repeats: int, block: int,
               after_block: dict[str, Callable[[], None]] | None = None) -> dict[str, list[dict]]:
    """One warm-up step per mode, then `repeats` rounds of `block` steps per mode, the order
    rotated each round. Returns every timed step per mode."""
    names = list(modes)
    for n in names:
        modes[n]()
        (after_block or {}).get(n, lambda: None)()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            for _ in range(block):
                runs[n].append(modes[n]())
            (after_block or {}).get(n, lambda: None)()
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {runs[n][-1]['s']:.2f}s" for n in order), flush=True)
    return runs


def summary(steps: list[dict]) -> dict:
    s, c = [x["s"] for x in steps], [x["cpu"] for x in steps]
    return {"min": min(s), "median": statistics.median(s), "cpu_min": min(c), "cpu_median": statistics.median(c),
            **{k: statistics.median(x[k] for x in steps) for k in ("encode", "rollout", "logprob", "update")}}


def write_task(root: Path, n: int, frames: int, size: tuple[int, int]) -> Path:
    from bench_grpo_cache import write_videos

    root.mkdir(parents=True)
    recs = write_videos(root, n, max(frames, 16), size)
    (root / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--fixed-length", action="store_true",
                    help="no early stop in the plain step either (min_new_tokens = new tokens)")
    ap.add_argument("--videos", type=int, default=8, help="videos in the task (steps draw prompts over them)")
    ap.add_argument("--size", default="112x112", help="video frame size WIDTHxHEIGHT")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=2, help="consecutive steps per mode in a round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="plain,longrl,longrl-rowwise,longrl-noprefetch,longrl-oldpass")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kl-coef", type=float, default=0.01)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fail-below", type=float, default=0.0,
                    help="exit 1 when the plain/longrl ratio (--gate) is below this")
    ap.add_argument("--gate", choices=["median", "min", "cpu"], default="median",
                    help="ratio the gate reads: median or min wall seconds, or median process CPU seconds "
                         "(steadier on a shared machine; gives no credit for overlapped decoding)")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args()
    set_threads(args.threads)

    from bench_grpo_cache import BENCH_SPEC

    from training.grpo.rewards import RewardScorer
    from training.tiny_model import TinyModelSpec, write_tiny_model_folder

    size = tuple(int(v) for v in args.size.split("x"))
    wanted = args.modes.split(",")
    variants = {"longrl": [], "longrl-rowwise": ["rollout.share_prefix=false"],
                "longrl-noprefetch": ["video.prefetch_workers=0"], "longrl-oldpass": []}
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / ".tmp") as tmp:
        root = Path(tmp)
        model_dir = write_tiny_model_folder(root / "model", TinyModelSpec(seed=0, **BENCH_SPEC))
        data = write_task(root / "data", args.videos, args.frames, size)
        modes: dict[str, Callable[[], dict]] = {}
        after: dict[str, Callable[[], None]] = {}
        for name in wanted:
            if name == "plain":
                modes[name] = PlainStep(model_dir, data, args, RewardScorer())
            elif name in variants:
                over = trainer_overrides(args.prompts, args.group, args.new_tokens, args.frames, args.lr,
                                         args.kl_coef, args.seed)
                tr = make_trainer(model_dir, data, root / f"out-{name}", over + variants[name])
                modes[name] = longrl_step(tr, force_old_pass=name == "longrl-oldpass")
                after[name] = (lambda t=tr: drop_prefetch(t))
            else:
                raise SystemExit(f"unknown mode {name!r} (plain, {', '.join(variants)})")
        import torch

        print(f"GRPO step, {args.prompts} prompts x G={args.group}, {args.new_tokens} new tokens, {args.frames} "
              f"frames {args.size}, {args.threads} thread(s) (torch {torch.get_num_threads()}), "
              f"{args.repeats} rounds x {args.block} steps per mode, interleaved")
        runs = interleave(modes, args.repeats, args.block, after)
    res = {n: summary(v) for n, v in runs.items()}
    head = (f"{'mode':<18} {'min s':>7} {'median s':>9} {'cpu min':>8} {'cpu med':>8} | {'encode':>7} "
            f"{'rollout':>7} {'logprob':>7} {'update':>7}")
    print(f"\nwall seconds and process CPU seconds per step (load average {os.getloadavg()[0]:.1f}); phases: "
          "median wall seconds\n" + head + "\n" + "-" * len(head))
    for n, r in res.items():
        print(f"{n:<18} {r['min']:>7.3f} {r['median']:>9.3f} {r['cpu_min']:>8.3f} {r['cpu_median']:>8.3f} | "
              f"{r['encode']:>7.3f} {r['rollout']:>7.3f} {r['logprob']:>7.3f} {r['update']:>7.3f}")
    ratios = {}
    if "plain" in res and "longrl" in res:
        ratios["plain/longrl"] = res["plain"]["median"] / res["longrl"]["median"]
        ratios["plain/longrl (min)"] = res["plain"]["min"] / res["longrl"]["min"]
        ratios["plain/longrl (cpu median)"] = res["plain"]["cpu_median"] / res["longrl"]["cpu_median"]
    phase = {"longrl-rowwise": "rollout", "longrl-noprefetch": "encode", "longrl-oldpass": "logprob"}
    for variant, ph in phase.items():
        if variant in res and "longrl" in res:
            ratios[f"{variant}/longrl"] = res[variant]["median"] / res["longrl"]["median"]
            ratios[f"{variant}/longrl cpu"] = res[variant]["cpu_median"] / res["longrl"]["cpu_median"]
            ratios[f"{variant}/longrl {ph} phase"] = res[variant][ph] / max(res["longrl"][ph], 1e-9)
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "modes": res, "ratios": ratios}, indent=1))
    if args.fail_below > 0:
        key = {"median": "plain/longrl", "min": "plain/longrl (min)", "cpu": "plain/longrl (cpu median)"}[args.gate]
        got = ratios.get(key)
        if got is None:
            raise SystemExit("--fail-below needs the plain and longrl modes")
        if got < args.fail_below:
            print(f"FAIL: {key} {got:.2f}x < {args.fail_below:.2f}x")
            raise SystemExit(1)
        print(f"ok: {key} {got:.2f}x >= {args.fail_below:.2f}x")


if __name__ == "__main__":
    main()
