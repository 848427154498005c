"""vLLM against the trainer, per model family (GPU; part of bench/gpu_check.sh).

For each of `--archs` (default qwen2_5_vl, qwen3, qwen3_vl) on a tiny model of that family:
  - Qwen2.5-VL: a prompt with `--frames` frames of a `--seconds` clip (default 64 of 10 min:
    18.75 s per temporal patch, where transformers 5.x and vLLM disagreed by ~1,000 positions);
    Qwen3-VL: the same clip as timestamped frame groups, sent to vLLM as one image per group
    (training.grpo.rollout_vllm); qwen3: a text-only prompt, no multi-modal data;
  - the trainer's positions (training.positions) against vLLM's own `get_mrope_input_positions`
    for the same tokens (Qwen2.5-VL: video grid; Qwen3-VL: the image segments of the request;
    text: 0..L-1);
  - the log-probs of vLLM's samples (engine fed the cached video embeddings, DeepStack levels
    included for Qwen3-VL) against the trainer's log-probs of the same tokens, in float32 and
    (`--dtypes`) bfloat16 - bfloat16 only for Qwen2.5-VL by default, to keep the part short.
`--dry-run` runs the trainer side and builds the vLLM requests on CPU, reporting the vLLM side as
skipped (a CPU test keeps this script from rotting). Exit code 1 when a comparison fails its bound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_gen.schema import QARecord  # noqa: E402
from training.grpo.rollout_vllm import VisionTokens, rollout_request  # noqa: E402
from training.mm_batch import collate, encode_videos, hidden_states, rope_positions, token_logprobs  # noqa: E402
from training.model_io import load_model, load_tokenizer  # noqa: E402
from training.models import family_of  # noqa: E402
from training.models.qwen3_vl import frame_groups  # noqa: E402
from training.prompts import append_response_ids, encode_example  # noqa: E402
from training.tiny_model import TinyModelSpec, write_tiny_model_folder  # noqa: E402
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches, no_video  # noqa: E402

RECORD = QARecord(id="q", video_id="v", video_path="v.mp4", question="What happened after the red ball left?",
                  answer="B", answer_type="multiple_choice", category="Temporal", options=["it rained", "a dog ran"])
TEXT_RECORD = QARecord(id="t", video_id="", video_path="", question="Ana has 3 boxes of 7 pens. How many pens?",
                       answer="21", answer_type="numeric", category="Math", modality="text")
ARCHS = ("qwen2_5_vl", "qwen3", "qwen3_vl")


def vllm_positions(model_dir: Path, input_ids: list[int], grid: tuple[int, int, int], second_per_grid: float):
    """vLLM's Qwen2.5-VL positions for `input_ids` (its signature changed across releases: the
    grid/seconds form of 0.9-0.11 and the mm_features form of later ones are both tried)."""
    from transformers import AutoConfig
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as VL

    cfg = AutoConfig.from_pretrained(model_dir)
    fn = VL.get_mrope_input_positions
    try:
        pos, _ = fn(None, input_ids, hf_config=cfg, image_grid_thw=[], video_grid_thw=[list(grid)],
                    second_per_grid_ts=[second_per_grid])
        return pos
    except TypeError:
        pass
    from vllm.multimodal.inputs import MultiModalFeatureSpec  # noqa: F401 - the newer form exists

    start = input_ids.index(cfg.video_token_id)
    feature = SimpleNamespace(modality="video", mm_position=SimpleNamespace(offset=start),
                              data={"video_grid_thw": SimpleNamespace(data=torch.tensor(grid)),
                                    "second_per_grid_ts": SimpleNamespace(data=torch.tensor(second_per_grid))})
    holder = SimpleNamespace(config=cfg)
    pos, _ = fn(holder, input_ids, [feature])
    return pos


def vllm_qwen3_vl_positions(model_dir: Path, expanded: list[int], image_pad: int, grid: tuple[int, int, int]):
    """vLLM's Qwen3-VL positions of the request as vLLM expands it: one image feature (grid
    (1, h, w)) per frame group, at the first pad of its run."""
    from transformers import AutoConfig
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as VL

    cfg = AutoConfig.from_pretrained(model_dir)
    _, h, w = grid
    offsets = [i for i, t in enumerate(expanded) if t == image_pad and (i == 0 or expanded[i - 1] != image_pad)]
    feats = [SimpleNamespace(modality="image", mm_position=SimpleNamespace(offset=o, is_embed=None),
                             data={"image_grid_thw": SimpleNamespace(data=torch.tensor([1, h, w]))}) for o in offsets]
    holder = SimpleNamespace(config=cfg)
    holder.iter_mm_grid_hw = lambda toks, fs: VL.iter_mm_grid_hw(holder, toks, fs)
    pos, _ = VL.get_mrope_input_positions(holder, expanded, feats)
    return pos


def build_case(arch: str, work: Path, frames: int, seconds: float):
    """(model folder, tokenizer, prompt, video input) of one family's case."""
    # head_dim 64: a size every vLLM attention backend supports
    model_dir = write_tiny_model_folder(work / arch, TinyModelSpec(arch=arch, hidden_size=256, intermediate_size=512,
                                                                   num_heads=4, num_kv_heads=2))
    tok = load_tokenizer(model_dir)
    family = family_of(model_dir)
    if not family.has_vision:
        prompt = encode_example(tok, TEXT_RECORD, 0)
        print(f"[{arch}] prompt: {len(prompt.input_ids)} tokens, text only")
        return model_dir, tok, prompt, no_video()
    spec = VisionSpec.from_model_dir(model_dir)
    size = 64 if family.frame_groups else 56
    if not family.frame_groups:
        spec.min_pixels, spec.max_pixels = 28 * 28, 56 * 56
    pixels = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    stamps = [i * seconds / frames for i in range(frames)]
    video = frames_to_patches(pixels, frames / seconds, spec, VideoSampling(), stamps)
    groups = frame_groups(video.grid_thw, video.merge_size, video.timestamps_s, 2) if video.frame_groups else None
    prompt = encode_example(tok, RECORD, video.num_tokens, video_groups=groups)
    print(f"[{arch}] prompt: {len(prompt.input_ids)} tokens, grid {video.grid_thw}, "
          f"{video.second_per_grid_t:.2f} s per temporal patch")
    return model_dir, tok, prompt, video


def compare_positions(arch: str, model_dir: Path, tok, prompt, video, ours: torch.Tensor) -> bool:
    ids = prompt.input_ids
    family = family_of(model_dir)
    if not family.has_vision:  # vLLM's text LMs take the plain positions 0..L-1
        ref = torch.arange(len(ids)).expand(3, -1)
    elif family.frame_groups:
        tokens = VisionTokens.of(tok)
        expanded = [tokens.image_pad if t == tokens.video_pad else t for t in ids]
        try:
            ref = vllm_qwen3_vl_positions(model_dir, expanded, tokens.image_pad, video.grid_thw)
        except (TypeError, AttributeError, KeyError) as err:  # another vLLM release's signature
            print(f"[{arch}] positions: vLLM's get_mrope_input_positions has another form here ({err!r}); "
                  "not compared")
            return True
    else:
        ref = vllm_positions(model_dir, ids, video.grid_thw, video.second_per_grid_t)
    same = torch.equal(ours.cpu(), torch.as_tensor(ref).cpu())
    print(f"[{arch}] positions: trainer == vLLM: {same} (vLLM first response position {int(torch.as_tensor(ref).max()) + 1})")
    return same


def run_case(arch: str, args, work: Path, device: str) -> int:
    from training.grpo.rollout import RolloutPrompt, SamplingSettings, VLLMRolloutEngine

    t0 = time.perf_counter()
    model_dir, tok, prompt, video = build_case(arch, work, args.frames, args.seconds)
    batch = collate([prompt], [video], tok.pad_token_id)
    failures = 0
    dtypes = args.dtypes.split(",") if arch == "qwen2_5_vl" else ["float32"]
    for dtype in dtypes:
        model = load_model(model_dir, dtype, device)
        ours = rope_positions(model, batch)[:, 0]
        print(f"[{arch} {dtype}] trainer: first response position {int(ours.max()) + 1}")
        with torch.no_grad():
            embeds = (encode_videos(model, batch.pixel_values_videos.to(device, model.dtype),
                                    batch.video_grid_thw.to(device)) if video.num_tokens else [])
        row_embeds = embeds[0] if embeds else torch.zeros((0, model.get_input_embeddings().embedding_dim))
        req = rollout_request(prompt.input_ids, video, row_embeds, VisionTokens.of(tok),
                              family_of(model_dir).temporal_scaling)
        mm = {k: sorted(v) for k, v in req.get("multi_modal_data", {}).items()}
        print(f"[{arch} {dtype}] vLLM request: {len(req['prompt_token_ids'])} prompt ids, multi-modal {mm or 'none'}")
        if args.dry_run:
            print(f"[{arch} {dtype}] vllm: skipped (--dry-run)")
            continue
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            print(f"[{arch} {dtype}] vllm: not installed on this machine ({err}); vLLM comparisons not run")
            return failures + 1
        failures += not compare_positions(arch, model_dir, tok, prompt, video, ours)
        stop = [tok.convert_tokens_to_ids("<|im_end|>")]
        video_token = getattr(model.config, "video_token_id", -1)
        engine = VLLMRolloutEngine(str(model_dir), tok, stop, video_token, 0.3, dtype,
                                   max_frame_groups=max(1, int(video.grid_thw[0])))
        out = engine.generate([RolloutPrompt(prompt, video, row_embeds)],
                              SamplingSettings(n=args.samples, max_new_tokens=args.new_tokens, seed=0))[0]
        diffs = []
        for resp in out:
            full = collate([append_response_ids(prompt, resp.token_ids)], [video], tok.pad_token_id).to(device)
            with torch.no_grad():
                lp, _ = token_logprobs(model, hidden_states(model, full, embeds), full.input_ids, full.loss_mask)
            trainer = lp[0][full.loss_mask[0].bool()].float().cpu()
            diffs.append((trainer - torch.tensor(resp.logprobs)).abs())
        d = torch.cat(diffs)
        bound = 1e-3 if dtype == "float32" else 0.05
        ok = float(d.mean()) <= bound
        print(f"[{arch} {dtype}] log-probs vLLM vs trainer over {d.numel()} tokens: max {float(d.max()):.2e} "
              f"mean {float(d.mean()):.2e} (bound on mean {bound:g}) {'ok' if ok else 'FAIL'}")
        failures += not ok
        del engine
        torch.cuda.empty_cache()
    print(f"[{arch}] {time.perf_counter() - t0:.1f} s")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"families to check, of {', '.join(ARCHS)}")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="Qwen2.5-VL's dtypes (the others: float32)")
    ap.add_argument("--dry-run", action="store_true", help="CPU: trainer side and requests only")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_vllm_check: no CUDA GPU (use --dry-run on CPU)")
        return 1
    unknown = sorted(set(args.archs.split(",")) - set(ARCHS))
    if unknown:
        print(f"gpu_vllm_check: unknown arch {unknown}; known: {', '.join(ARCHS)}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu_vllm_check_"))
    failures = sum(run_case(arch, args, work, device) for arch in args.archs.split(","))
    return int(failures > 0)


if __name__ == "__main__":
    raise SystemExit(main())
