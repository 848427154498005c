"""Shared training infrastructure: optimiser and schedule, batch plan, checkpoints, the planned
video grid, and the SFT config checks."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from training.optim import (
    build_adamw,
    clip_grad_norm,
    param_groups,
    warmup_cosine,
    warmup_cosine_factor,
    warmup_steps_for,
)
from training.sft.batching import epoch_batches, micro_batches, padding_fraction


def test_warmup_cosine_schedule_values():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # 10 decay steps: the last one (index 13) is one step short of min_lr_ratio.
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.9)))
    assert warmup_cosine_factor(9, 4, 14, 0.1) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert warmup_cosine_factor(14, 4, 14, 0.1) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert warmup_steps_for(100, 0, 0.03) == 3 and warmup_steps_for(100, 7, 0.5) == 7 and warmup_steps_for(5, 9) == 5
    with pytest.raises(ValueError, match="warmup_steps 20"):
        warmup_cosine(opt, 20, 10)


def test_adamw_groups_and_clipping():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model[0].weight)}  # matrices only; the frozen one is left out
    assert len(groups[1]["params"]) == 4  # two biases, the norm's weight and bias
    opt = build_adamw(model, lr=1e-3, weight_decay=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5
    model(torch.randn(3, 4)).pow(2).sum().mul(100).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    before = torch.cat([p.grad.flatten() for p in params]).norm().item()
    assert clip_grad_norm(params, 1.0) == pytest.approx(before, rel=1e-5)
    assert torch.cat([p.grad.flatten() for p in params]).norm().item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(torch.nn.Linear(2, 2).requires_grad_(False), 0.0)


def test_batch_plan_covers_each_example_once_and_groups_lengths():
    rng = random.Random(0)
    lengths = {i: rng.randint(100, 5000) for i in range(203)}
    grouped = epoch_batches(lengths, global_batch=8, epoch=0, seed=3, grouping=True, group_batches=8)
    plain = epoch_batches(lengths, global_batch=8, epoch=0, seed=3, grouping=False)
    for plan in (grouped, plain):
        flat = [k for b in plan for k in b]
        assert len(plan) == 25 and all(len(b) == 8 for b in plan) and len(set(flat)) == 200
    assert set(k for b in grouped for k in b) == set(k for b in plain for k in b)  # same 3 dropped
    assert grouped == epoch_batches(lengths, 8, 0, 3, True, 8)  # a pure function: resumable
    assert grouped != epoch_batches(lengths, 8, 1, 3, True, 8)  # reshuffled every epoch
    pad_grouped, pad_plain = padding_fraction(grouped, lengths, 2), padding_fraction(plain, lengths, 2)
    assert pad_grouped < pad_plain / 4, (pad_grouped, pad_plain)
    # Two workers x two accumulation rounds: a partition of the batch, similar lengths per round.
    batch = grouped[0]
    r0 = micro_batches(batch, lengths, 2, world_size=2, rank=0)
    r1 = micro_batches(batch, lengths, 2, world_size=2, rank=1)
    assert len(r0) == len(r1) == 2
    assert sorted(k for m in r0 + r1 for k in m) == sorted(batch)
    assert max(lengths[k] for k in r0[0]) >= max(lengths[k] for k in r1[0]) >= max(lengths[k] for k in r0[1])
    with pytest.raises(ValueError, match="does not split"):
        micro_batches(batch[:6], lengths, 2, world_size=2, rank=0)


def test_checkpoint_bf16_folder_keeps_fp32_master_weights(tiny_model, tmp_path):
    from transformers import AutoModelForImageTextToText

    from training.checkpoint import (
        TrainerState,
        latest_checkpoint,
        list_checkpoints,
        load_checkpoint,
        save_checkpoint,
    )
    from training.distributed import DistContext, shard_model

    model, tok = tiny_model
    ctx = DistContext()
    src = tmp_path / "src"
    src.mkdir()
    (src / "preprocessor_config.json").write_text("{}")

    def setup(m):
        runner = shard_model(m, ctx)
        opt = build_adamw(runner, lr=1e-2, weight_decay=0.1)
        return runner, opt, warmup_cosine(opt, 2, 10)

    runner, opt, sched = setup(model)
    model.train()
    for _ in range(2):
        model.lm_head(torch.randn(3, model.config.text_config.hidden_size)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    for step in (1, 2, 3):
        torch.manual_seed(123)  # the RNG state the checkpoint must bring back
        path = save_checkpoint(tmp_path / "out", TrainerState(step=step, epoch=1, batch_in_epoch=step),
                               runner, opt, sched, tok, src, ctx, keep_last=2, save_dtype="bfloat16")
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-00000002", "step-00000003"]
    (tmp_path / "out" / "checkpoints" / "step-00000009").mkdir()  # no COMPLETE marker: ignored
    assert latest_checkpoint(tmp_path / "out") == path
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    assert (path / "preprocessor_config.json").is_file()
    served = AutoModelForImageTextToText.from_pretrained(path)
    assert torch.equal(served.lm_head.weight, model.lm_head.weight.detach().to(torch.bfloat16).float())

    # Resume: a fresh model (bf16-rounded weights from the folder) gets the fp32 master weights,
    # the optimizer moments, the schedule position and the RNG state back.
    torch.manual_seed(999)
    fresh = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    runner2, opt2, sched2 = setup(fresh)
    state = load_checkpoint(path, runner2, opt2, sched2, ctx)
    assert (state.step, state.epoch, state.batch_in_epoch) == (3, 1, 3)
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    exp_avg = opt.state[model.lm_head.weight]["exp_avg"]
    assert torch.equal(opt2.state[fresh.lm_head.weight]["exp_avg"], exp_avg)
    assert sched2.get_last_lr() == sched.get_last_lr()
    # A parameter that had no gradient before the checkpoint has no AdamW state after it either.
    assert model.model.visual.patch_embed.proj.weight not in opt.state
    assert fresh.model.visual.patch_embed.proj.weight not in opt2.state
    assert torch.equal(torch.rand(3), expected_draw)


def test_planned_grid_matches_decoded_patches(make_video, tiny_model_dir):
    from training.video_inputs import VideoSampling, VisionSpec, load_video_patches, planned_grid

    path = make_video("clip.mp4", num_frames=37, fps=10.0, size=(90, 50))
    spec = VisionSpec.from_model_dir(tiny_model_dir)
    for sampling, span in ((VideoSampling(num_frames=5), (0.0, None)),
                           (VideoSampling(fps=2.0, min_frames=2, max_frames=50), (0.5, 3.2)),
                           (VideoSampling(num_frames=8, max_pixels=28 * 28 * 2), (0.0, None))):
        assert planned_grid(path, sampling, spec, *span) == load_video_patches(path, sampling, spec, *span).grid_thw


def test_sft_config_checks():
    from common.config import load_config
    from training.sft.config import SFTConfig

    cfg = load_config(SFTConfig, None, ["use_gpu=false", "micro_batch_size=2", "grad_accum=3", "num_workers=2"])
    assert cfg.check().global_batch == 12 and cfg.wants_gpu() is False
    for bad, match in ((["precision=fp8"], "precision"), (["grad_accum=0"], "grad_accum"),
                       (["save_dtype=int8"], "save_dtype"), (["use_gpu=maybe"], "use_gpu"),
                       (["max_bad_fraction=1.5"], "max_bad_fraction")):
        with pytest.raises(ValueError, match=match):
            load_config(SFTConfig, None, bad).check()


def test_left_padded_rows_score_as_they_do_alone(tiny_model, sft_records):
    """The SFT loss of a row does not depend on the rows it is batched with (left padding,
    explicit 3-D positions), so length grouping changes only the padding, not the numbers."""
    import numpy as np

    from training.mm_batch import collate, hidden_states, token_logprobs
    from training.prompts import encode_example
    from training.sft.data import target_text
    from training.video_inputs import VideoSampling, VisionSpec, frames_to_patches

    model, tok = tiny_model
    spec = VisionSpec(min_pixels=28 * 28, max_pixels=56 * 56)
    rng = np.random.default_rng(0)
    recs = sorted(sft_records, key=lambda r: len(r.reasoning))[::8][:3]
    vids = [frames_to_patches(rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8), 2.0, spec, VideoSampling())
            for n in (2, 4, 6)]
    exs = [encode_example(tok, r, v.num_tokens, response=target_text(r)) for r, v in zip(recs, vids, strict=True)]

    def nll_rows(examples, videos):
        batch = collate(examples, videos, tok.pad_token_id)
        with torch.no_grad():
            lp, _ = token_logprobs(model, hidden_states(model, batch), batch.input_ids, batch.loss_mask)
        return [-float(row.sum()) for row in lp]

    together = nll_rows(exs, vids)
    assert len({len(e.input_ids) for e in exs}) == 3  # really padded
    for i in range(3):
        assert together[i] == pytest.approx(nll_rows([exs[i]], [vids[i]])[0], rel=1e-5)
