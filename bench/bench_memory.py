"""Memory of one GRPO update step at the real Qwen2.5-VL-3B / 7B widths, measured on CPU with the
depth cut to 1-2 decoder layers, vs frame count and SP size, and a memory model that
extrapolates the measured per-layer figures to full depth on an 80 GB GPU (bench/memory_model.py).

What runs (each configuration in its own local gloo group, ranks forked from a parent that built
the model once, so the weights are shared copy-on-write and only activations are per rank):
- MR-SP: LogProbModel (packed rows, varlen attention, no mask tensor; Ulysses over SP ranks; tiled
  log-probs of the response only) from cached video embeddings, PPO-clip + k3 KL, backward;
- naive: one process, transformers' own forward on a left-padded row (the [1, 1, L, L] mask),
  full logits for every position, fp32 log_softmax, the same loss, backward.
Gradients are dropped as soon as each is accumulated (what FSDP does after its reduce-scatter),
so the step's figure is activations + temporaries; the model state (params, grads, Adam, sharded
over the GPUs) is added analytically by the model. Embedding and lm_head are frozen here for the
same reason (their gradients are model state).

Measured per rank: the peak resident memory of the step above the memory before it (VmHWM after
clear_refs, glibc's mmap threshold lowered so freed tensors return to the OS), and torch's own
count of the bytes autograd saves for backward in each decoder layer (saved-tensor hooks,
parameters and shared storages counted once): the per-layer figure the model multiplies by depth.

    .venv/bin/python bench/bench_memory.py [--models 3b,7b] [--frames 64,256,1024,2048] [--sp 1,2,4]
        [--tokens-per-frame 1] [--naive-frames 64,256] [--json out.json]
    .venv/bin/python bench/bench_memory.py --resident 3b:2:2   # parameters per rank, replica vs none
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_model import SHAPES, fit_and_report  # noqa: E402

from training.grpo.algorithms import kl_loss, ppo_clip_loss  # noqa: E402
from training.mm_batch import collate, embed_with_video, rope_positions  # noqa: E402
from training.prompts import EncodedExample  # noqa: E402
from training.sequence_parallel.local_group import run_local_group  # noqa: E402
from training.sequence_parallel.mesh import ParallelConfig, build_log_prob_model, init_parallel  # noqa: E402
from training.tiny_model import QWEN_SPECIAL_TOKENS, default_mrope_section, train_tokenizer  # noqa: E402
from training.video_inputs import VideoPatches  # noqa: E402

PROMPT, AFTER, RESPONSE = 40, 20, 256
M_MMAP_THRESHOLD = -3


def build_model(shape: dict, depth: int, tokenizer, dtype=torch.float32, device: str = "cpu"):
    """Qwen2.5-VL at the real widths/heads/vocabulary with `depth` decoder layers (vision tower of
    one block: the step runs from cached embeddings)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": shape["vocab"],
            "hidden_size": shape["hidden"],
            "intermediate_size": shape["intermediate"],
            "num_hidden_layers": depth,
            "num_attention_heads": shape["heads"],
            "num_key_value_heads": shape["kv_heads"],
            "max_position_embeddings": 128000,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": default_mrope_section(shape["hidden"] // shape["heads"]),
            },
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": shape["vision_hidden"],
            "num_heads": shape["vision_heads"],
            "intermediate_size": shape["vision_intermediate"],
            "out_hidden_size": shape["hidden"],
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape["tied"],
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():  # random weights, cheaply (transformers' init of 152K x 3584 takes long)
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    from training.model_loading import _restore_buffers

    _restore_buffers(
        model, [n for n, m in model.named_modules() if "rotary" in type(m).__name__.lower()], device
    )
    model.train()
    model.get_input_embeddings().requires_grad_(False)
    model.get_output_embeddings().requires_grad_(False)
    for p in model.parameters():  # FSDP frees each unsharded gradient after its reduce-scatter
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda q: setattr(q, "grad", None))
    return model


def make_batch(tokenizer, frames: int, tokens_per_frame: int, hidden: int, pad: int = 0):
    """One row: prompt, `frames` frames of video tokens (cached embeddings), text, response;
    `pad` left-padding tokens (the naive path: a padded row gets the [1, 1, L, L] mask)."""
    h, w = {1: (2, 4), 2: (4, 4), 4: (4, 8), 8: (8, 8), 16: (8, 16), 32: (16, 16), 64: (16, 32)}[
        tokens_per_frame
    ]
    video = VideoPatches(
        pixel_values=torch.empty(0, 1176),
        grid_thw=(frames // 2, h, w),
        second_per_grid_t=1.0,
        timestamps_s=[float(i) for i in range(frames)],
    )
    g = torch.Generator().manual_seed(frames)
    vid = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    text = torch.randint(20, vid - 20, (PROMPT + AFTER + RESPONSE,), generator=g).tolist()
    n = video.num_tokens
    ids = text[:PROMPT] + [vid] * n + text[PROMPT:]
    types = [0] * PROMPT + [2] * n + [0] * (AFTER + RESPONSE)
    batch = collate(
        [EncodedExample(ids, types, PROMPT + n + AFTER)],
        [video],
        tokenizer.pad_token_id,
        with_pixels=False,
    )
    if pad:
        z = torch.zeros(1, pad, dtype=torch.long)
        batch.input_ids = torch.cat([z + tokenizer.pad_token_id, batch.input_ids], 1)
        batch.attention_mask = torch.cat([z, batch.attention_mask], 1)
        batch.mm_token_type_ids = torch.cat([z.int(), batch.mm_token_type_ids], 1)
        batch.loss_mask = torch.cat([z.float(), batch.loss_mask], 1)
    return batch, [torch.randn(n, hidden, generator=g)]


def _loss(lp, mask):
    old = lp.detach() + 0.1 * mask
    return ppo_clip_loss(
        lp, old, torch.ones(1), mask, clip_low=0.2, clip_high=0.28
    ).loss + 0.01 * kl_loss(lp, old, mask)


def naive_step(model, batch, embeds, pos):
    """The plain path: transformers' forward, full logits, fp32 log_softmax over the vocabulary."""
    from training.mm_batch import video_positions

    inputs = embed_with_video(model, batch.input_ids, embeds, video_positions(batch))
    logits = model(
        inputs_embeds=inputs, attention_mask=batch.attention_mask, position_ids=pos
    ).logits
    logp = (
        torch.log_softmax(logits.float(), -1)[:, :-1]
        .gather(-1, batch.input_ids[:, 1:, None])
        .squeeze(-1)
    )
    lp = torch.zeros_like(batch.loss_mask)
    lp[:, 1:] = logp * batch.loss_mask[:, 1:]
    _loss(lp, batch.loss_mask).backward()


class SavedBytes:
    """Bytes autograd saves for backward, per decoder layer (module pre/post hooks mark the layer;
    parameter storages excluded, each storage counted once)."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.per_layer: dict[str, int] = {}
        self.where = "outside"
        layers = model.model.language_model.layers
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "where", f"layer{i}"))
            layer.register_forward_hook(lambda m, a, o: setattr(self, "where", "outside"))

    def pack(self, t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self.params and ptr not in self.seen and s.device.type != "meta":
            self.seen.add(ptr)
            self.per_layer[self.where] = self.per_layer.get(self.where, 0) + s.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _rank(
    rank: int,
    world: int,
    model,
    tokenizer,
    frames: list[int],
    tpf: int,
    path: str,
    checkpointing: bool,
):
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 16)
    state = init_parallel(sp_size=world)
    cfg = ParallelConfig(sp_size=world, fsdp=False, activation_checkpointing=checkpointing)
    lpm = build_log_prob_model(model, state, cfg)
    hidden = model.config.text_config.hidden_size
    out = []
    for f in [frames[0]] + frames:  # the first one warms up (allocator, lazy init)
        batch, embeds = make_batch(tokenizer, f, tpf, hidden, pad=1 if path == "naive" else 0)
        pos = rope_positions(model, batch)
        saved = SavedBytes(model) if not checkpointing else None
        gc.collect()
        if dist.is_initialized():
            dist.barrier()
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_mib("VmRSS")
        t = time.perf_counter()
        with (
            saved.hooks()
            if saved
            else torch.autograd.graph.saved_tensors_hooks(lambda x: x, lambda x: x)
        ):
            if path == "naive":
                naive_step(model, batch, embeds, pos)
            else:
                lp, _ = lpm(
                    batch.input_ids, batch.attention_mask, pos, batch.loss_mask, video_embeds=embeds
                )
                _loss(lp, batch.loss_mask).backward()
        wall = time.perf_counter() - t
        peak = _status_mib("VmHWM") - base
        layer_mib = (saved.per_layer.get("layer0", 0) / 2**20) if saved else float("nan")
        stats = torch.tensor([peak, wall, layer_mib])
        if dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        out.append(
            {
                "frames": f,
                "tokens": batch.input_ids.shape[1],
                "peak_mib": stats[0].item(),
                "wall_s": stats[1].item(),
                "layer_saved_mib": stats[2].item(),
            }
        )
    return out[1:]


_BUILT: dict[tuple, torch.nn.Module] = {}


def measure(
    name: str,
    depth: int,
    frames: list[int],
    sp: int,
    tpf: int,
    path: str,
    checkpointing: bool,
    tokenizer,
    dtype=torch.float32,
) -> list[dict]:
    key = (name, depth, dtype)
    if key not in _BUILT:  # one model alive at a time; the ranks share it (fork, copy-on-write)
        _BUILT.clear()
        gc.collect()
        _BUILT[key] = build_model(SHAPES[name], depth, tokenizer, dtype)
    rows = run_local_group(_rank, sp, _BUILT[key], tokenizer, frames, tpf, path, checkpointing)[0]
    for r in rows:
        r.update(
            model=name,
            depth=depth,
            sp=sp,
            path=path,
            checkpointing=checkpointing,
            tpf=tpf,
            dtype=str(dtype).removeprefix("torch."),
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="3b,7b")
    ap.add_argument("--frames", default="64,256,1024,2048")
    ap.add_argument("--sp", default="1,2,4")
    ap.add_argument(
        "--tokens-per-frame",
        type=int,
        default=1,
        help="reduced pixel budget (1: 28 x 56 px frames)",
    )
    ap.add_argument(
        "--naive-frames", default="64,256", help="naive path (full logits) frame counts, SP 1"
    )
    ap.add_argument(
        "--ckpt-frames", default="256,1024", help="activation-checkpointing runs (SP 1, depth 1/2)"
    )
    ap.add_argument(
        "--bf16-frames", default="64", help="a bf16-compute run (depth 1, SP 1): the dtype ratio"
    )
    ap.add_argument("--json", default="", help="write every measured row here")
    ap.add_argument(
        "--real-tokens-per-frame", type=int, default=64, help="extrapolation: tokens per frame"
    )
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument(
        "--from-json",
        default="",
        help="skip measuring: the report from saved runs (comma-separated JSON files)",
    )
    ap.add_argument(
        "--resident",
        default="",
        help="only the per-rank parameter residency with and without the "
        "rollout replica: MODEL:DEPTH:RANKS (e.g. 3b:2:2), the folder written under .tmp/",
    )
    args = ap.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    if args.resident:
        from memory_resident import resident  # its own module: the 12.1 measurement

        name, depth, world = args.resident.split(":")
        folder = Path(__file__).resolve().parent.parent / ".tmp" / f"resident_{name}_{depth}"
        resident(name, int(depth), int(world), train_tokenizer(1024), folder)
        return
    if args.from_json:
        rows = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
        fit_and_report(rows, args.real_tokens_per_frame, gpu_gib=args.gpu_gib)
        return
    tok = train_tokenizer(1024)
    rows: list[dict] = []
    t0 = time.perf_counter()

    def run(*a, **k):
        got = measure(*a, tokenizer=tok, **k)
        rows.extend(got)
        if args.json:  # after every configuration: an interrupted run keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1))
        for r in got:
            print(
                f"  {r['model']} {r['path']:>5} depth {r['depth']} sp {r['sp']} ckpt {int(r['checkpointing'])} "
                f"{r['dtype']:>8} {r['frames']:>5} frames {r['tokens']:>6} tokens: peak {r['peak_mib']:8.1f} MiB/rank, "
                f"layer saved {r['layer_saved_mib']:8.1f} MiB, {r['wall_s']:6.1f} s   [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )

    tpf = args.tokens_per_frame
    for name in args.models.split(","):
        for sp in ints(args.sp):
            run(name, 1, ints(args.frames), sp, tpf, "mrsp", False)
        if args.naive_frames:
            run(name, 1, ints(args.naive_frames), 1, tpf, "naive", False)
        if args.ckpt_frames:
            run(name, 1, ints(args.ckpt_frames), 1, tpf, "mrsp", True)
        # depth 2 at the smallest and largest frame count: the per-layer RSS step vs torch's count
        ends = sorted({ints(args.frames)[0], ints(args.frames)[-1]})
        run(name, 2, ends, 1, tpf, "mrsp", False)
        if args.ckpt_frames:
            run(name, 2, ints(args.ckpt_frames), 1, tpf, "mrsp", True)
        if args.bf16_frames:
            run(name, 1, ints(args.bf16_frames), 1, tpf, "mrsp", False, dtype=torch.bfloat16)
    fit_and_report(rows, args.real_tokens_per_frame, gpu_gib=args.gpu_gib)


if __name__ == "__main__":
    main()
