"""vLLM against the trainer on a long-video prompt (GPU; part of bench/gpu_check.sh).

Prints, for a prompt with `--frames` frames of a `--seconds` clip (default 64 of 10 min: 18.75 s
per temporal patch, where transformers 5.x and vLLM disagreed by ~1,000 positions):
  - the trainer's 3-D positions (training.positions) against vLLM's own
    `get_mrope_input_positions` for the same tokens and grid;
  - the log-probs of vLLM's samples (engine fed the cached video embeddings) against the
    trainer's log-probs of the same tokens, in float32 and bfloat16.
`--dry-run` runs the trainer side on CPU and reports the vLLM side as skipped (a CPU test keeps
this script from rotting). Exit code 1 when a comparison fails its bound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_gen.schema import QARecord  # noqa: E402
from training.mm_batch import collate, encode_videos, hidden_states, rope_positions, token_logprobs  # noqa: E402
from training.model_io import load_model, load_tokenizer  # noqa: E402
from training.prompts import append_response_ids, encode_example  # noqa: E402
from training.tiny_model import TinyModelSpec, write_tiny_model_folder  # noqa: E402
from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches  # noqa: E402

RECORD = QARecord(id="q", video_id="v", video_path="v.mp4", question="What happened after the red ball left?",
                  answer="B", answer_type="multiple_choice", category="Temporal", options=["it rained", "a dog ran"])


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
    from types import SimpleNamespace

    from vllm.multimodal.inputs import MultiModalFeatureSpec  # noqa: F401 - the newer form exists

    start = input_ids.index(cfg.video_token_id)
    feature = SimpleNamespace(modality="video", mm_position=SimpleNamespace(offset=start),
                              data={"video_grid_thw": SimpleNamespace(data=torch.tensor(grid)),
                                    "second_per_grid_ts": SimpleNamespace(data=torch.tensor(second_per_grid))})
    holder = SimpleNamespace(config=cfg)
    pos, _ = fn(holder, input_ids, [feature])
    return pos


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--dry-run", action="store_true", help="CPU: trainer side only")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_vllm_check: no CUDA GPU (use --dry-run on CPU)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="gpu_vllm_check_"))
    # head_dim 64: a size every vLLM attention backend supports
    model_dir = write_tiny_model_folder(work / "model", TinyModelSpec(hidden_size=256, intermediate_size=512,
                                                                       num_heads=4, num_kv_heads=2))
    tok = load_tokenizer(model_dir)
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, 56, 56, 3), dtype=np.uint8)
    video = frames_to_patches(frames, args.frames / args.seconds, spec, VideoSampling())
    prompt = encode_example(tok, RECORD, video.num_tokens)
    batch = collate([prompt], [video], tok.pad_token_id)
    print(f"prompt: {len(prompt.input_ids)} tokens, grid {video.grid_thw}, {video.second_per_grid_t:.2f} s per temporal patch")
    failures = 0
    for dtype in ("float32", "bfloat16"):
        model = load_model(model_dir, dtype, device)
        ours = rope_positions(model, batch)[:, 0]
        print(f"[{dtype}] trainer: first response position {int(ours.max()) + 1}")
        if args.dry_run:
            print(f"[{dtype}] vllm: skipped (--dry-run)")
            continue
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            print(f"[{dtype}] vllm: not installed on this machine ({err}); vLLM comparisons not run")
            return failures + 1
        ref = vllm_positions(model_dir, prompt.input_ids, video.grid_thw, video.second_per_grid_t)
        same = torch.equal(ours.cpu(), torch.as_tensor(ref).cpu())
        print(f"[{dtype}] positions: trainer == vLLM: {same} (vLLM first response position {int(ref.max()) + 1})")
        failures += not same
        from training.grpo.rollout import RolloutPrompt, SamplingSettings, VLLMRolloutEngine

        with torch.no_grad():
            embeds = encode_videos(model, batch.pixel_values_videos.to(device, model.dtype), batch.video_grid_thw.to(device))
        stop = [tok.convert_tokens_to_ids("<|im_end|>")]
        engine = VLLMRolloutEngine(str(model_dir), tok, stop, model.config.video_token_id, 0.3, dtype)
        out = engine.generate([RolloutPrompt(prompt, video, embeds[0])],
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
        print(f"[{dtype}] log-probs vLLM vs trainer over {d.numel()} tokens: max {float(d.max()):.2e} "
              f"mean {float(d.mean()):.2e} (bound on mean {bound:g}) {'ok' if ok else 'FAIL'}")
        failures += not ok
        del engine
        torch.cuda.empty_cache()
    return int(failures > 0)


if __name__ == "__main__":
    raise SystemExit(main())
