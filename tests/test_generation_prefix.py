"""The hf rollout's fast paths against the plain ones they replace: one prefill per prompt with
its G samples decoded from the expanded KV cache (vs every row prefilled on its own, and vs the
former per-token loop kept here as the reference), no per-token host syncs, and every tensor of
the decode loop on the model's device (checked on the meta device: a CPU tensor mixed in fails)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training.generation import _top_p_filter, decode, generate, prefill
from training.grpo.rollout import HFRolloutEngine, RolloutPrompt, SamplingSettings
from training.grpo.video_cache import VideoEmbedder
from training.mm_batch import base_model, collate, embed_with_video, rope_positions, video_positions
from training.positions import next_text_position
from training.prompts import encode_example
from training.records import load_records
from training.video_inputs import VideoSampling, VisionSpec

from .fixtures.grpo import SYSTEM


@torch.no_grad()
def plain_generate(model, batch, stop_ids, pad_id, max_new_tokens, temperature, generator):
    """The former loop: left-padded prefill with the padding mask, the mask concatenated and
    every token read back to the host each step."""
    from transformers import DynamicCache

    positions = rope_positions(model, batch)
    embeds = embed_with_video(model, batch.input_ids, batch.video_embeds, video_positions(batch))
    lm = base_model(model).language_model
    cache = DynamicCache()
    out = lm(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=positions,
             past_key_values=cache, use_cache=True)
    hidden, next_pos, attn = out.last_hidden_state[:, -1], next_text_position(positions, batch.attention_mask), \
        batch.attention_mask
    B = batch.size
    stop, done = torch.tensor(stop_ids), torch.zeros(B, dtype=torch.bool)
    tokens, logps = [[] for _ in range(B)], [[] for _ in range(B)]
    for _ in range(max_new_tokens):
        scaled = model.get_output_embeddings()(hidden).float() / temperature
        logp = F.log_softmax(scaled, -1)
        choice = torch.multinomial(_top_p_filter(scaled, 1.0).softmax(-1), 1, generator=generator).squeeze(-1)
        lp = logp.gather(-1, choice[:, None]).squeeze(-1)
        for i in range(B):
            if not done[i]:
                tokens[i].append(int(choice[i]))
                logps[i].append(float(lp[i]))
        done |= torch.isin(choice, stop)
        if bool(done.all()):
            break
        step_ids = torch.where(done, torch.full_like(choice, pad_id), choice)
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype)], dim=1)
        out = lm(inputs_embeds=base_model(model).get_input_embeddings()(step_ids[:, None]), attention_mask=attn,
                 position_ids=next_pos.view(1, B, 1).expand(3, B, 1), past_key_values=cache, use_cache=True)
        hidden, next_pos = out.last_hidden_state[:, -1], next_pos + 1
    return tokens, logps


@pytest.fixture
def prompts(tiny_model, tiny_model_dir, colour_task):
    model, tok = tiny_model
    recs = load_records(colour_task).records[:4]  # two frame sizes: prompts of two lengths
    emb = VideoEmbedder(model, "online", VideoSampling(num_frames=4), VisionSpec.from_model_dir(tiny_model_dir),
                        trainable_vision=False)
    videos, failures = emb.prepare(recs)
    assert not failures
    out = [RolloutPrompt(encode_example(tok, r, videos[r.id].num_tokens, system_prompt=SYSTEM), videos[r.id],
                         videos[r.id].embeds) for r in recs]
    assert len({len(p.prompt.input_ids) for p in out}) == 2
    return out


def _stop(tok):
    return [tok.convert_tokens_to_ids("<|im_end|>")]


def _run(model, tok, prompts, share, seed=3, temperature=1.0, n=3, rows=6, sync_every=16, new=7, stop=None):
    eng = HFRolloutEngine(model, tok, stop or _stop(tok), rows_per_call=rows, share_prefix=share,
                          sync_every=sync_every)
    return eng.generate(prompts, SamplingSettings(n=n, max_new_tokens=new, temperature=temperature, seed=seed))


def _max_lp_diff(a, b):
    return max(max((abs(x - y) for x, y in zip(ra.logprobs, rb.logprobs, strict=True)), default=0.0)
               for ga, gb in zip(a, b, strict=True) for ra, rb in zip(ga, gb, strict=True))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_shared_prefix_samples_what_the_per_row_path_samples(tiny_model, prompts, temperature):
    model, tok = tiny_model
    shared = _run(model, tok, prompts, True, temperature=temperature)  # 2 prompts x 3 per call
    plain = _run(model, tok, prompts, False, temperature=temperature)  # 6 rows per call
    assert [[r.token_ids for r in g] for g in shared] == [[r.token_ids for r in g] for g in plain]
    assert [[r.finished for r in g] for g in shared] == [[r.finished for r in g] for g in plain]
    assert _max_lp_diff(shared, plain) <= 1e-5
    assert len({tuple(r.token_ids) for g in shared for r in g}) > 3  # really sampled


def test_shared_prefix_greedy_equals_per_row_greedy(tiny_model, prompts):
    model, tok = tiny_model
    batch = collate([p.prompt for p in prompts], [p.video for p in prompts], tok.pad_token_id, with_pixels=False)
    rows = collate([p.prompt for p in prompts for _ in range(2)], [p.video for p in prompts for _ in range(2)],
                   tok.pad_token_id, with_pixels=False)
    kw = dict(max_new_tokens=6, greedy=True)
    shared = generate(model, batch, _stop(tok), tok.pad_token_id, num_samples=2,
                      video_embeds=[p.video_embeds for p in prompts], **kw)
    plain = generate(model, rows, _stop(tok), tok.pad_token_id,
                     video_embeds=[p.video_embeds for p in prompts for _ in range(2)], **kw)
    assert shared.token_ids == plain.token_ids and shared.finished == plain.finished
    assert max(abs(a - b) for x, y in zip(shared.logprobs, plain.logprobs, strict=True)
               for a, b in zip(x, y, strict=True)) <= 1e-5


def test_equals_the_former_per_token_loop(tiny_model, prompts):
    """Per-row path with a done check every step consumes the generator as the former loop did:
    the same tokens, log-probs within 1e-5 (its prefill used the padding mask, ours none)."""
    model, tok = tiny_model
    rows = [p for p in prompts for _ in range(2)]
    batch = collate([p.prompt for p in rows], [p.video for p in rows], tok.pad_token_id, with_pixels=False)
    batch.video_embeds = [p.video_embeds for p in rows]
    ref_t, ref_lp = plain_generate(model, batch, _stop(tok), tok.pad_token_id, 7, 1.0, torch.Generator().manual_seed(5))
    out = generate(model, batch, _stop(tok), tok.pad_token_id, max_new_tokens=7, video_embeds=batch.video_embeds,
                   generator=torch.Generator().manual_seed(5), sync_every=1)
    assert out.token_ids == ref_t
    assert max(abs(a - b) for x, y in zip(out.logprobs, ref_lp, strict=True) for a, b in zip(x, y, strict=True)) <= 1e-5


def test_done_check_interval_does_not_change_outputs(tiny_model, prompts):
    model, tok = tiny_model
    stop = list(range(0, len(tok), 9))  # every 9th id stops: rows finish at different steps
    every = _run(model, tok, prompts[:2], True, sync_every=1, new=12, stop=stop)
    seldom = _run(model, tok, prompts[:2], True, sync_every=64, new=12, stop=stop)
    lengths = {len(r.token_ids) for g in every for r in g}
    assert len(lengths) > 1 and min(lengths) < 12
    # on the CPU the default checks every step: no step is decoded after the last row ends
    batch = collate([p.prompt for p in prompts[:2]], [p.video for p in prompts[:2]], tok.pad_token_id,
                    with_pixels=False)
    tokens, _, lens, done = decode(model, prefill(model, batch, [p.video_embeds for p in prompts[:2]]).expand(3),
                                   stop, tok.pad_token_id, 40, generator=torch.Generator().manual_seed(1))
    assert bool(done.all()) and tokens.shape[1] == int(lens.max()) < 40
    assert [[r.token_ids for r in g] for g in every] == [[r.token_ids for r in g] for g in seldom]
    assert _max_lp_diff(every, seldom) == 0.0


def test_each_prompt_is_prefilled_once(tiny_model, prompts):
    """Tokens through the LLM in the prefill: one copy of each prompt, not G."""
    model, tok = tiny_model
    seen: list[int] = []
    lm = base_model(model).language_model
    handle = lm.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape[0] * kw["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        seen.clear()
        _run(model, tok, prompts, True, new=1, rows=12)  # 4 prompts in one call, 1 token: prefill only
        shared = sum(seen)
        seen.clear()
        _run(model, tok, prompts, False, new=1, rows=12)
        per_row = sum(seen)
    finally:
        handle.remove()
    longest = max(len(p.prompt.input_ids) for p in prompts)
    assert shared == 4 * longest
    assert per_row == 3 * shared


def test_decode_keeps_every_tensor_on_the_model_device(tiny_model, prompts):
    """On the meta device any tensor created on the CPU inside the loop (stop ids, done flags,
    the attention mask) makes an op fail with 'not on the expected device'."""
    model, tok = tiny_model
    batch = collate([p.prompt for p in prompts], [p.video for p in prompts], tok.pad_token_id, with_pixels=False)
    state = prefill(model, batch, [p.video_embeds for p in prompts]).expand(2)
    cpu_tokens, _, cpu_len, _ = decode(model, state, _stop(tok), tok.pad_token_id, 5, greedy=True, sync_every=64)
    assert cpu_tokens.shape == (8, 5) and int(cpu_len.min()) >= 1
    meta_model = copy.deepcopy(model).to("meta")
    state = prefill(model, batch, [p.video_embeds for p in prompts]).expand(2)
    for layer in state.cache.layers:
        layer.keys, layer.values = layer.keys.to("meta"), layer.values.to("meta")
    state.hidden, state.attention_mask = state.hidden.to("meta"), state.attention_mask.to("meta")
    state.next_pos = state.next_pos.to("meta")
    outs = decode(meta_model, state, _stop(tok), tok.pad_token_id, 5, greedy=True, sync_every=64)
    assert all(t.device.type == "meta" for t in outs)
    assert outs[0].shape == (8, 5)
    with pytest.raises(RuntimeError, match="device"):  # the check has teeth: a CPU tensor fails
        torch.cat([outs[0], torch.zeros((8, 1), dtype=torch.long)])
