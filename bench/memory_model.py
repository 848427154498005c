"""The memory model behind bench/bench_memory.py: measured per-layer / per-token figures fitted,
then extrapolated to full depth, a real pixel budget and an 80 GB GPU (docs/sequence_parallel.md,
"Memory at scale").

Per GPU, during the policy update of one sequence of T tokens on an SP group of size sp
(the peak of a GRPO step: rollout, old-policy and reference passes hold no activations):

    step(T)   = a + b*T + c*T/sp + (depth-1) * s*T/sp          (measured fit, depth-1 runs)
    model     = 16*N/world                 fp32 params + grads + Adam (FSDP over all GPUs)
              + 4*N/world                  frozen fp32 reference shards (0 when CPU-offloaded)
              + (2+2+4)*P_layer*2          two bf16 layers gathered (prefetch), bf16 grad + fp32 reduce
              + (2+6)*P_root               root (embeddings, lm_head) gathered in bf16, its grads
              + replica                    parallel.rollout_replica=true: an unsharded bf16 copy, N*2 per GPU
                                           (0 on the default path: rollout/vision through the shards in lockstep)
    embeds    = T_video * H * 4            the cached video embeddings the rank holds (fp32)
    naive     = the same with sp = 1, the measured full-logits step (+ T*T bytes: the [1,1,L,L] mask)

a, b, c, s are least-squares fits of the measured rows (a: constant, b: per token of the whole
sequence on every rank - embeddings, positions, gathered log-probs; c: per local token of one
layer plus the all-to-all buffers; s: torch's count of what one decoder layer saves for backward,
per local token). With activation checkpointing s is replaced by the measured per-layer step of
the checkpointed runs. Activations are measured in fp32 on CPU; `bf16_ratio` (the measured ratio
of a layer's saved bytes in bf16 to fp32) scales c and s for bf16 compute.
"""

from __future__ import annotations

import torch

SHAPES = {
    "3b": dict(
        hidden=2048,
        heads=16,
        kv_heads=2,
        intermediate=11008,
        vocab=151936,
        layers=36,
        tied=True,
        vision_hidden=1280,
        vision_heads=16,
        vision_intermediate=3420,
        vision_depth=32,
        params=3.75e9,
    ),
    "7b": dict(
        hidden=3584,
        heads=28,
        kv_heads=4,
        intermediate=18944,
        vocab=152064,
        layers=28,
        tied=False,
        vision_hidden=1280,
        vision_heads=16,
        vision_intermediate=3420,
        vision_depth=32,
        params=8.29e9,
    ),
    # the script's own smoke shape (seconds), not a real model
    "smoke": dict(
        hidden=256,
        heads=4,
        kv_heads=2,
        intermediate=512,
        vocab=4096,
        layers=4,
        tied=False,
        vision_hidden=64,
        vision_heads=2,
        vision_intermediate=128,
        vision_depth=2,
        params=5e6,
    ),
}
GIB = 2**30
MIB = 2**20


def layer_params(shape: dict) -> float:
    h, kv = shape["hidden"], shape["kv_heads"] * shape["hidden"] // shape["heads"]
    return 2 * h * h + 2 * h * kv + 2 * kv + h + 3 * h * shape["intermediate"] + 2 * h


def root_params(shape: dict) -> float:
    return shape["vocab"] * shape["hidden"] * (1 if shape["tied"] else 2)


def _lstsq(x: list[list[float]], y: list[float]) -> list[float]:
    sol = torch.linalg.lstsq(
        torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)[:, None]
    )
    return sol.solution[:, 0].tolist()


def fit(rows: list[dict], name: str) -> dict:
    """The model's coefficients (bytes) for one model from its measured rows."""
    mine = [r for r in rows if r["model"] == name and r["dtype"] == "float32"]
    main = [r for r in mine if r["path"] == "mrsp" and not r["checkpointing"] and r["depth"] == 1]
    a, b, c = _lstsq(
        [[1.0, r["tokens"], r["tokens"] / r["sp"]] for r in main],
        [r["peak_mib"] * MIB for r in main],
    )
    s = _lstsq([[r["tokens"] / r["sp"]] for r in main], [r["layer_saved_mib"] * MIB for r in main])[
        0
    ]
    out = {"a": a, "b": b, "c": c, "s": s, "n_fit": len(main)}
    # the per-layer RSS step of depth 2 over depth 1 (SP 1), against torch's saved-bytes count
    d2 = {
        r["frames"]: r
        for r in mine
        if r["path"] == "mrsp" and not r["checkpointing"] and r["depth"] == 2
    }
    d1 = {r["frames"]: r for r in main if r["sp"] == 1}
    out["rss_layer_check"] = [
        ((d2[f]["peak_mib"] - d1[f]["peak_mib"]) * MIB / d2[f]["tokens"]) / s
        for f in sorted(d2)
        if f in d1
    ]
    ck = {(r["depth"], r["frames"]): r for r in mine if r["checkpointing"]}
    steps = [
        (ck[(2, f)]["peak_mib"] - ck[(1, f)]["peak_mib"]) * MIB / ck[(2, f)]["tokens"]
        for d, f in ck
        if d == 2 and (1, f) in ck
    ]
    # no checkpointed depth-2 run: what a checkpointed layer keeps is its fp32 input (4 * hidden
    # bytes per token; the 3B measurement checks this estimate)
    out["s_ckpt_measured"] = bool(steps)
    out["s_ckpt"] = sum(steps) / len(steps) if steps else 4.0 * SHAPES[name]["hidden"]
    # checkpointed depth-1 step: a + b*T + c_ckpt*T (one layer recomputed in backward)
    one = [r for (d, _), r in ck.items() if d == 1]
    out["c_ckpt"] = (
        sum((r["peak_mib"] * MIB - a - b * r["tokens"]) / r["tokens"] for r in one) / len(one)
        if one
        else None
    )
    naive = [r for r in mine if r["path"] == "naive"]
    if len(naive) >= 2:
        out["naive_a"], out["naive_b"] = _lstsq(
            [[1.0, r["tokens"]] for r in naive], [r["peak_mib"] * MIB for r in naive]
        )
    ratios = []
    for other in [name] + sorted(
        {r["model"] for r in rows} - {name}
    ):  # own ratio, else another model's
        bf = {r["frames"]: r for r in rows if r["model"] == other and r["dtype"] == "bfloat16"}
        fp = {
            r["frames"]: r
            for r in rows
            if r["model"] == other
            and r["dtype"] == "float32"
            and r["sp"] == 1
            and r["depth"] == 1
            and r["path"] == "mrsp"
            and not r["checkpointing"]
        }
        ratios = [bf[f]["layer_saved_mib"] / fp[f]["layer_saved_mib"] for f in bf if f in fp]
        if ratios:
            out["bf16_from"] = other
            break
    out["bf16_ratio"] = sum(ratios) / len(ratios) if ratios else 0.5
    return out


def gpu_bytes(
    name: str,
    co: dict,
    frames: int,
    *,
    sp: int,
    world: int,
    path: str,
    checkpointing: bool,
    tokens_per_frame: int,
    text_tokens: int,
    bf16: bool = True,
    replica_bytes: float = 0.0,
    reference_offload: bool = False,
) -> dict[str, float]:
    """Bytes per GPU, by term, of the update pass of one sequence of `frames` frames."""
    shape = SHAPES[name]
    n, depth = shape["params"], shape["layers"]
    video = frames * tokens_per_frame
    t = video + text_tokens
    r = co["bf16_ratio"] if bf16 else 1.0
    state = 16 * n / world + (0 if reference_offload else 4 * n / world)
    gathered = 8 * layer_params(shape) * 2 + 8 * root_params(shape)
    if path == "naive":
        local, sp = t, 1
        per_token_fixed = co["naive_b"] - co["c"]  # logits etc. beyond the one layer the fit holds
        act = (
            co["naive_a"] + per_token_fixed * t + co["c"] * r * t + t * t
        )  # + the bool [1,1,L,L] mask
    else:
        local = t / sp
        act = co["a"] + co["b"] * t + co["c"] * r * local
    if checkpointing:
        act += (
            co["c_ckpt"] * r * local - co["c"] * r * local + (depth - 1) * co["s_ckpt"] * r * local
        )
    else:
        act += (depth - 1) * co["s"] * r * local
    return {
        "model_state": state,
        "gathered": gathered,
        "replica": replica_bytes * n,
        "video_embeds": video * shape["hidden"] * 4,
        "activations": act,
    }


def max_frames(name: str, co: dict, budget: float, **kw) -> int:
    lo, hi = 0, 1 << 17
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(gpu_bytes(name, co, mid, **kw).values()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def measured_table(rows: list[dict], name: str) -> None:
    """The measured step peaks per rank (MiB) and torch's per-layer saved bytes, frames x SP."""
    main = [
        r
        for r in rows
        if r["model"] == name
        and r["path"] == "mrsp"
        and r["depth"] == 1
        and not r["checkpointing"]
        and r["dtype"] == "float32"
    ]
    sps, frames = sorted({r["sp"] for r in main}), sorted({r["frames"] for r in main})
    at = {(r["frames"], r["sp"]): r for r in main}
    print(
        f"\n== {name}: measured update step, depth 1 at the real widths, fp32, per rank "
        "(peak RSS above the step's start / one layer's saved-for-backward bytes), MiB"
    )
    print(
        f"{'frames':>7} {'tokens':>7} | "
        + " | ".join(f"{'SP=' + str(sp):>15}" for sp in sps)
        + " | naive SP=1"
    )
    naive = {r["frames"]: r for r in rows if r["model"] == name and r["path"] == "naive"}
    for f in frames:
        cells = [
            f"{at[(f, sp)]['peak_mib']:>7.0f} / {at[(f, sp)]['layer_saved_mib']:>5.0f}"
            if (f, sp) in at
            else f"{'':>15}"
            for sp in sps
        ]
        nv = (
            f"{naive[f]['peak_mib']:>7.0f} / {naive[f]['layer_saved_mib']:>4.0f}"
            if f in naive
            else ""
        )
        tok = next(at[(f, sp)]["tokens"] for sp in sps if (f, sp) in at)
        print(f"{f:>7} {tok:>7} | " + " | ".join(cells) + f" | {nv}")
    for r in sorted(
        (
            r
            for r in rows
            if r["model"] == name
            and (r["depth"] == 2 or r["checkpointing"] or r["dtype"] != "float32")
            and r["path"] == "mrsp"
        ),
        key=lambda r: (r["dtype"], r["checkpointing"], r["depth"], r["frames"]),
    ):
        print(
            f"   depth {r['depth']}, checkpointing {'on' if r['checkpointing'] else 'off'}, {r['dtype']}, "
            f"{r['frames']} frames, SP 1: {r['peak_mib']:.0f} MiB"
            + (
                f" / layer {r['layer_saved_mib']:.0f}"
                if r["layer_saved_mib"] == r["layer_saved_mib"]
                else ""
            )
        )


def fit_and_report(
    rows: list[dict],
    tokens_per_frame: int = 64,
    text_tokens: int = 2048 + 256,
    gpu_gib: float = 80.0,
    world: int = 8,
) -> None:
    budget = gpu_gib * GIB * 0.92 - 1.5 * GIB  # allocator slack and the CUDA context
    for name in sorted({r["model"] for r in rows}):
        measured_table(rows, name)
        co = fit(rows, name)
        print(
            f"\n== {name} fit ({co['n_fit']} rows): a {co['a'] / MIB:.0f} MiB, b {co['b'] / 1024:.1f} KiB/token, "
            f"c {co['c'] / 1024:.1f} KiB/local token, per-layer saved s {co['s'] / 1024:.1f} KiB/local token "
            f"(fp32); RSS depth-2 step / s = {', '.join(f'{x:.2f}' for x in co['rss_layer_check'])}; "
            f"checkpointed layer {co['s_ckpt'] / 1024:.1f} KiB/token "
            f"({'measured' if co['s_ckpt_measured'] else 'estimate 4*hidden'}); "
            f"bf16/fp32 saved bytes {co['bf16_ratio']:.2f} ({co.get('bf16_from', 'assumed')})"
            + (f"; naive {co['naive_b'] / 1024:.0f} KiB/token" if "naive_b" in co else "")
        )
        if "naive_b" not in co or co["c_ckpt"] is None:
            print("   (naive or checkpointed runs missing: no extrapolation)")
            continue
        print(
            f"   full depth {SHAPES[name]['layers']} layers, bf16 compute, {tokens_per_frame} tokens/frame, "
            f"{text_tokens} text tokens, {world} GPUs (FSDP over all), {gpu_gib:.0f} GB, GiB per GPU:"
        )
        layouts = [
            ("naive SP1", dict(sp=1, path="naive")),
            ("MR-SP SP8", dict(sp=world, path="mrsp")),
        ]
        head = f"   {'layout':<11} {'ckpt':>4} {'replica':>8} | " + " ".join(
            f"{f:>6}f" for f in (512, 1024, 2048)
        )
        print(head + " | max frames/seq  frames/GPU")
        for label, lay in layouts:
            for ckpt in (False, True):
                for replica in (
                    2.0,
                    0.0,
                ):  # parallel.rollout_replica=true (a bf16 copy), or none (default)
                    kw = dict(
                        world=world,
                        checkpointing=ckpt,
                        tokens_per_frame=tokens_per_frame,
                        text_tokens=text_tokens,
                        replica_bytes=replica,
                        **lay,
                    )
                    cells = [
                        sum(gpu_bytes(name, co, f, **kw).values()) / GIB for f in (512, 1024, 2048)
                    ]
                    m = max_frames(name, co, budget, **kw)
                    print(
                        f"   {label:<11} {'on' if ckpt else 'off':>4} {'bf16' if replica else 'none':>8} | "
                        + " ".join(f"{c:7.1f}" for c in cells)
                        + f" | {m:>14} {m / lay['sp']:>11.0f}"
                    )
        kw = dict(
            world=world,
            checkpointing=True,
            tokens_per_frame=tokens_per_frame,
            text_tokens=text_tokens,
            replica_bytes=0.0,
            sp=world,
            path="mrsp",
        )
        terms = gpu_bytes(name, co, 1024, **kw)
        print(
            "   MR-SP SP8, checkpointing, no replica, 1024 frames: "
            + ", ".join(f"{k} {v / GIB:.1f}" for k, v in terms.items())
            + " GiB"
        )
