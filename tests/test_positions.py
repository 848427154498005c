"""One 3-D M-RoPE position scheme (training.positions) in the real long-video regime: 10-20 s per
temporal patch, 64-512 frames, several videos and text segments per prompt, left padding, rows
of different lengths. Checked against a transcription of vLLM's Qwen2.5-VL positions, and rollout
log-probs against trainer log-probs on prompts where the old transformers scheme was off by
hundreds of positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.vllm_mrope import vllm_qwen2_5_vl_positions
from training.generation import generate
from training.mm_batch import collate, hidden_states, rope_positions, token_logprobs
from training.positions import mrope_positions, next_text_position, row_positions
from training.prompts import EncodedExample, append_response_ids, encode_example
from training.video_inputs import VideoPatches, VideoSampling, VisionSpec, frames_to_patches

from .test_model_kit import MCQ, NUM

MERGE = 2
TPS = 2  # Qwen2.5-VL-3B/7B's vision_config.tokens_per_second

# (frames sampled, clip seconds): 1 s per temporal patch (where the old schemes coincided),
# then the long-video regime: 4 frames of 30 s, 64 of 10 min (18.75 s per patch), 512 of 1 h.
REGIMES = [(4, 2.0), (4, 30.0), (64, 600.0), (512, 3600.0), (256, 2560.0)]


def _ids(model) -> dict[str, int]:
    c = model.config
    return {"image": c.image_token_id, "video": c.video_token_id, "start": c.vision_start_token_id,
            "end": c.vision_end_token_id}


def _prompt(rng, ids: dict[str, int], grids: list[tuple[int, int, int]], vocab: int) -> list[int]:
    """Random text segments around `grids` videos, each wrapped in vision start/end tokens."""
    out: list[int] = []
    for g in grids:
        out += rng.integers(10, vocab, rng.integers(1, 12)).tolist() + [ids["start"]]
        out += [ids["video"]] * (g[0] * (g[1] // MERGE) * (g[2] // MERGE)) + [ids["end"]]
    return out + rng.integers(10, vocab, rng.integers(0, 9)).tolist()


@pytest.mark.parametrize("frames,seconds", REGIMES)
def test_positions_equal_vllm_transcription(tiny_model, frames, seconds):
    model, _ = tiny_model
    ids = _ids(model)
    rng = np.random.default_rng(frames)
    spg = 2 / (frames / seconds)  # seconds per temporal patch of 2 frames
    rows_grids = [[(frames // 2, 4, 6)], [(frames // 2, 2, 2), (max(1, frames // 8), 4, 4)], [],
                  [(frames // 2, 6, 4), (1, 2, 2), (frames // 4, 2, 4)]]
    rows = [_prompt(rng, ids, g, 500) for g in rows_grids]
    L = max(len(r) for r in rows)
    types = torch.zeros((len(rows), L), dtype=torch.int32)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        off = L - len(r)  # left padding
        types[b, off:] = torch.tensor([2 if t == ids["video"] else 0 for t in r], dtype=torch.int32)
        mask[b, off:] = 1
    secs = [[spg] * len(g) for g in rows_grids]
    ours = mrope_positions(types, mask, rows_grids, MERGE, secs, TPS)
    nxt = next_text_position(ours, mask)
    for b, r in enumerate(rows):
        ref, delta = vllm_qwen2_5_vl_positions(r, ids["image"], ids["video"], ids["start"], MERGE, TPS,
                                               [list(g) for g in rows_grids[b]], secs[b])
        off = L - len(r)
        assert torch.equal(ours[:, b, off:], ref), f"row {b}"
        assert (ours[:, b, :off] == 0).all()
        assert int(nxt[b]) == len(r) + delta  # where vLLM continues decoding
    if seconds / frames >= 5:  # long regime: text after a video starts after its time axis
        t_last = int((torch.arange(frames // 2)[-1:] * spg * TPS).long())
        r0 = rows[0]
        first_video = r0.index(ids["video"])
        after = first_video + (frames // 2) * 2 * 3  # tokens of grid (t, 4, 6)
        off = L - len(r0)
        assert int(ours[0, 0, off + after]) == int(ours[0, 0, off + first_video]) + t_last + 1


def test_a_run_that_does_not_match_its_grid_is_an_error_naming_the_row():
    types = torch.tensor([0, 2, 2, 2, 0])
    with pytest.raises(ValueError, match="row 3: video 0 has 3 tokens"):
        row_positions(types, [(1, 4, 4)], MERGE, [1.0], TPS, row=3)
    with pytest.raises(ValueError, match="row 0: 1 runs of video tokens but 2 videos"):
        row_positions(types, [(1, 2, 6), (1, 2, 2)], MERGE, [1.0, 1.0], TPS)


def _long_video(spec: VisionSpec, frames: int, seconds: float, seed: int) -> VideoPatches:
    rng = np.random.default_rng(seed)
    return frames_to_patches(rng.integers(0, 256, (frames, 56, 56, 3), dtype=np.uint8), frames / seconds, spec,
                             VideoSampling())


@pytest.mark.parametrize("frames,seconds", [(64, 600.0), (512, 3600.0)])
def test_rollout_logprobs_equal_trainer_logprobs_on_long_videos(tiny_model, frames, seconds):
    model, tok = tiny_model
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56)
    vids = [_long_video(spec, frames, seconds, 1), _long_video(spec, frames // 2, seconds / 3, 2)]
    assert vids[0].second_per_grid_t >= 10  # the regime where the old schemes disagreed
    exs = [encode_example(tok, r, v.num_tokens) for r, v in zip((MCQ, NUM), vids, strict=True)]
    batch = collate(exs, vids, tok.pad_token_id)
    assert (batch.attention_mask[:, 0] == 0).any()  # rows of different lengths, left padded
    for temperature in (1.0, 0.7):
        gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=8,
                       temperature=temperature, generator=torch.Generator().manual_seed(0))
        full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)], vids,
                       tok.pad_token_id)
        pos = rope_positions(model, full)
        prompt_pos = rope_positions(model, batch)
        with torch.no_grad():
            lp, _ = token_logprobs(model, hidden_states(model, full), full.input_ids, full.loss_mask,
                                   temperature=temperature)
        for i in range(2):
            resp = full.loss_mask[i].bool()
            # the first response token sits where decoding put it: after the prompt's largest position
            first = int(resp.nonzero()[0])
            assert int(pos[0, i, first]) == int(next_text_position(prompt_pos, batch.attention_mask)[i])
            trainer = lp[i][resp]
            assert trainer.shape[0] == len(gen.logprobs[i])
            assert (trainer - torch.tensor(gen.logprobs[i])).abs().max() <= 1e-5


def test_several_videos_and_none_in_one_batch(tiny_model):
    """Rows holding two videos and a text-only row: positions match vLLM's, and rollout == trainer."""
    model, tok = tiny_model
    ids = _ids(model)
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56)
    a, b, c = (_long_video(spec, 16, 240.0, s) for s in (3, 4, 5))

    def two_video_prompt(v1: VideoPatches, v2: VideoPatches, text: str) -> EncodedExample:
        head = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
        mid = tok(" then ", add_special_tokens=False)["input_ids"]
        tail = tok(text + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        seq, types = list(head), [0] * len(head)
        for k, v in enumerate((v1, v2)):
            seq += [ids["start"]] + [ids["video"]] * v.num_tokens + [ids["end"]]
            types += [0] + [2] * v.num_tokens + [0]
            if k == 0:
                seq += mid
                types += [0] * len(mid)
        seq += tail
        types += [0] * len(tail)
        return EncodedExample(seq, types, len(seq))

    text_only = tok("<|im_start|>user\nHow many? <|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    exs = [two_video_prompt(a, b, "Which came first?"), EncodedExample(text_only, [0] * len(text_only), len(text_only)),
           two_video_prompt(c, a, "Same?")]
    videos = [[a, b], [], [c, a]]
    batch = collate(exs, videos, tok.pad_token_id)
    assert batch.video_counts == (2, 0, 2)
    pos = rope_positions(model, batch)
    for i, ex in enumerate(exs):
        grids = [list(v.grid_thw) for v in videos[i]]
        ref, _ = vllm_qwen2_5_vl_positions(ex.input_ids, ids["image"], ids["video"], ids["start"], MERGE,
                                           model.config.vision_config.tokens_per_second, grids,
                                           [v.second_per_grid_t for v in videos[i]])
        assert torch.equal(pos[:, i, batch.attention_mask[i].bool()], ref)
    gen = generate(model, batch, [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id, max_new_tokens=6,
                   generator=torch.Generator().manual_seed(1))
    full = collate([append_response_ids(e, g) for e, g in zip(exs, gen.token_ids, strict=True)], videos, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = token_logprobs(model, hidden_states(model, full), full.input_ids, full.loss_mask)
    for i in range(3):
        trainer = lp[i][full.loss_mask[i].bool()]
        assert (trainer - torch.tensor(gen.logprobs[i])).abs().max() <= 1e-5
