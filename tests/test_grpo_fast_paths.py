"""Equivalence of the GRPO step's fast paths with the plain ones they replace: the skipped
old-policy pass, positions computed once per row, causal attention on right-aligned rows
instead of a padding mask."""

from __future__ import annotations

import copy

import pytest
import torch

from training.grpo.config import AlgorithmConfig
from training.grpo.logprobs import (
    Rollout,
    batch_positions,
    right_align,
    rows_batch,
    rows_logprobs,
    sequence_logprobs,
)
from training.grpo.rollout import Response
from training.grpo.trainer import GRPOTrainer
from training.grpo.update import UpdateInputs, old_pass_is_redundant, policy_update
from training.grpo.video_cache import VideoEmbedder
from training.mm_batch import collate, hidden_states, rope_positions, token_logprobs
from training.prompts import encode_example
from training.records import load_records
from training.video_inputs import VideoSampling, VisionSpec

from .fixtures.grpo import SYSTEM, grpo_config


def _rows(model, tok, model_dir, task, n_prompts=3, lengths=(1, 4, 7)):
    """Rows of prompts of two lengths with responses of several lengths: padding everywhere."""
    recs = load_records(task).records[:n_prompts]
    emb = VideoEmbedder(model, "online", VideoSampling(num_frames=4), VisionSpec.from_model_dir(model_dir),
                        trainable_vision=False)
    videos, failures = emb.prepare(recs)
    assert not failures
    rows = [Rollout(r, videos[r.id], encode_example(tok, r, videos[r.id].num_tokens, system_prompt=SYSTEM),
                    Response(list(range(40 + i, 40 + i + n)), [], True), i)
            for i, r in enumerate(recs) for n in lengths]
    assert len({len(r.sequence.input_ids) for r in rows}) > 3
    return rows, emb


def test_causal_right_aligned_logprobs_equal_the_masked_left_padded_path(tiny_model, tiny_model_dir, colour_task):
    model, tok = tiny_model
    rows, emb = _rows(model, tok, tiny_model_dir, colour_task)
    batch = collate([r.sequence for r in rows], [r.video for r in rows], tok.pad_token_id, with_pixels=False)
    assert bool((batch.attention_mask == 0).any())  # left padding present
    embeds = emb.row_embeds([r.video for r in rows])
    model.zero_grad(set_to_none=True)
    fast, fast_ent = sequence_logprobs(model, batch, embeds, temperature=0.7, chunk_size=5, with_entropy=True)
    fast.sum().backward()
    g_fast = model.lm_head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    # the plain path: the [B, 1, L, L] padding mask through transformers, no rotation
    hidden = hidden_states(model, batch, embeds)
    plain, plain_ent = token_logprobs(model, hidden, batch.input_ids, batch.loss_mask, chunk_size=5,
                                      temperature=0.7, with_entropy=True)
    plain.sum().backward()
    g_plain = model.lm_head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    assert torch.equal(fast == 0, plain == 0)  # same response positions filled, in the caller's layout
    assert float((fast - plain).detach().abs().max()) <= 1e-5
    assert float((fast_ent - plain_ent).abs().max()) <= 1e-5
    assert float((g_fast - g_plain).abs().max()) <= 1e-5 * max(1.0, float(g_plain.abs().max()))
    assert float(fast.abs().sum()) > 0


def test_right_align_rotates_left_padding_and_refuses_anything_else():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    idx, inv = right_align(mask)
    assert mask.gather(1, idx).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    x = torch.arange(12).view(3, 4)
    assert torch.equal(x.gather(1, idx).gather(1, inv), x)
    assert right_align(torch.ones(2, 3, dtype=torch.long)) == (None, None)
    with pytest.raises(ValueError, match="not left padding"):
        right_align(torch.tensor([[1, 0, 1, 1]]))


def test_cached_positions_equal_recomputed_in_any_batch_composition(tiny_model, tiny_model_dir, colour_task):
    model, tok = tiny_model
    rows, _ = _rows(model, tok, tiny_model_dir, colour_task)
    first = rows_batch(rows[:4], tok.pad_token_id, False, "cpu", model)  # caches rows 0-3
    assert all(r.positions is not None for r in rows[:4]) and rows[5].positions is None
    for part in (rows[2:], rows[::-1], rows[3:5]):  # other paddings, some rows cached, some not
        batch = collate([r.sequence for r in part], [r.video for r in part], tok.pad_token_id, with_pixels=False)
        fresh = rope_positions(model, batch)
        assert torch.equal(batch_positions(model, part, batch), fresh)
        assert torch.equal(rows_batch(part, tok.pad_token_id, False, "cpu", model).position_ids, fresh)
    assert torch.equal(first.position_ids, rope_positions(model, collate(
        [r.sequence for r in rows[:4]], [r.video for r in rows[:4]], tok.pad_token_id, with_pixels=False)))


def test_old_pass_is_redundant_only_when_provable(tiny_model):
    model, _ = tiny_model
    a = AlgorithmConfig()
    assert old_pass_is_redundant(a, 8, model)
    assert old_pass_is_redundant(AlgorithmConfig(mini_batch_rows=8), 8, model)
    for cfg in (AlgorithmConfig(ppo_epochs=2), AlgorithmConfig(mini_batch_rows=4),
                AlgorithmConfig(kl_in_reward=True), AlgorithmConfig(old_logprobs="rollout")):
        assert not old_pass_is_redundant(cfg, 8, model)
    dropped = copy.deepcopy(model)
    dropped.config.text_config.attention_dropout = 0.1
    assert not old_pass_is_redundant(a, 8, dropped)


def _update(model, rows, emb, tok, adv, old):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)  # moves = lr * grad
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    inputs = UpdateInputs(rows, adv, old, None, torch.ones(len(rows)))
    stats = policy_update(model, opt, sched, inputs, AlgorithmConfig(micro_batch_rows=4), embed_rows=emb.row_embeds,
                          pad_id=tok.pad_token_id, temperature=1.0, max_new_tokens=8, max_grad_norm=1.0,
                          logprob_fn=sequence_logprobs)
    return stats, inputs.first_logprobs, model.state_dict()


def test_skipped_old_pass_gives_the_update_of_the_computed_one(tiny_model, tiny_model_dir, colour_task):
    base, tok = tiny_model
    rows, emb = _rows(base, tok, tiny_model_dir, colour_task)
    adv = torch.linspace(-1.0, 1.0, len(rows))
    computed, _ = rows_logprobs(base, emb.row_embeds, rows, tok.pad_token_id, 16, with_pixels=False,
                                temperature=1.0, chunk_size=1024)
    s_old, first_old, w_old = _update(copy.deepcopy(base), rows, emb, tok, adv, computed)
    s_skip, first_skip, w_skip = _update(copy.deepcopy(base), rows, emb, tok, adv, None)
    for a, b, c in zip(computed, first_old, first_skip, strict=True):
        assert float((a - c).abs().max()) <= 1e-5 and torch.equal(b, c)
    assert abs(s_old["actor/pg_loss"] - s_skip["actor/pg_loss"]) <= 1e-6
    assert s_skip["actor/clip_fraction"] == 0.0 and s_skip["actor/approx_kl"] == 0.0
    moved = max(float((w_old[k] - base.state_dict()[k]).abs().max()) for k in w_old)
    assert moved > 1e-4  # the update did something
    assert max(float((w_old[k] - w_skip[k]).abs().max()) for k in w_old) <= 1e-4 * moved


@pytest.mark.parametrize("over, policy_nograd_calls", [
    ({}, 0),  # on-policy default: no old pass
    ({"algorithm.ppo_epochs": 2}, 1),  # two epochs: the old pass is needed
    ({"algorithm.ppo_epochs": 2, "algorithm.old_logprobs": "rollout"}, 0),  # honoured: engine's
])
def test_trainer_runs_the_old_pass_only_when_needed(tiny_model_dir, colour_task, tmp_path, over, policy_nograd_calls):
    calls: list[tuple[str, bool]] = []
    holder: dict = {}

    def counting(model, batch, embeds, **kw):
        calls.append(("policy" if model is holder["t"].model else "ref", torch.is_grad_enabled()))
        return sequence_logprobs(model, batch, embeds, **kw)

    cfg = grpo_config(max_steps=1, **{"algorithm.kl_coef": 0.01, **over})
    holder["t"] = t = GRPOTrainer(cfg, tiny_model_dir, colour_task, tmp_path / "out", logprob_fn=counting)
    t.train()
    passes = -(-6 // cfg.algorithm.logprob_rows)  # 2 prompts x G=3 rows
    assert calls.count(("policy", False)) == policy_nograd_calls * passes
    assert calls.count(("ref", False)) == passes
    updates = cfg.algorithm.ppo_epochs * -(-6 // cfg.algorithm.micro_batch_rows)
    assert calls.count(("policy", True)) == updates
    import json
    m = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert "actor/kl" in m
    if cfg.algorithm.ppo_epochs == 1:  # the update's first pass stands in for the trainer's view
        assert m["rollout/logprob_diff_max"] <= 1e-5



@pytest.mark.parametrize("source", ["trainer", "rollout"])
def test_old_logprobs_rollout_takes_the_engines_logprobs(tiny_model_dir, colour_task, tmp_path, source):
    """The engine's log-probs are shifted by -0.3: with old_logprobs=rollout the update's ratio
    sees them (approx_kl = mean(old - new) = -0.3), with the trainer's it sees its own (0)."""
    cfg = grpo_config(max_steps=1, **{"algorithm.kl_coef": 0.0, "algorithm.old_logprobs": source})
    t = GRPOTrainer(cfg, tiny_model_dir, colour_task, tmp_path / "out")
    real = t.engine.generate

    def shifted(prompts, sampling):
        groups = real(prompts, sampling)
        for g in groups:
            for r in g:
                r.logprobs = [lp - 0.3 for lp in r.logprobs]
        return groups

    t.engine.generate = shifted
    t.train()
    import json
    m = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    if source == "rollout":
        assert abs(m["actor/approx_kl"] + 0.3) <= 1e-4
    else:
        assert abs(m["actor/approx_kl"]) <= 1e-6
