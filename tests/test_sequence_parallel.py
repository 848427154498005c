"""Sequence parallelism (MR-SP stage 2) against the plain single-process model.

The multi-process checks run every scenario of a world size inside ONE local gloo group (forked
ranks, ~1 s to start) and compare with transformers' own forward on the same batch: log-probs,
entropy, the GRPO loss and every parameter gradient within 1e-5 (fp32), at SP=2 and SP=4, with
sequence lengths that no SP size divides, left-padded rows, a head count (3 query / 1 KV) that
neither divides, KV heads that SP=4 does not divide (4 / 2), the vision tower split by frames
(including a rank that gets no frames), activation checkpointing, and FSDP2 on a dp x sp mesh.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist

from tests.fixtures.sequence_parallel import (
    grpo_loss,
    loss_anchors,
    make_video_batch,
    max_diff,
    param_grads,
    reference_logprobs,
)
from training.linear_logprobs import linear_logprobs
from training.mm_batch import encode_videos, rope_positions
from training.sequence_parallel.layout import (
    SequenceSplit,
    attention_layout,
    plan_heads,
    split_lengths,
)
from training.sequence_parallel.local_group import run_local_group
from training.sequence_parallel.mesh import (
    ParallelConfig,
    build_log_prob_model,
    full_state_dict,
    init_parallel,
)
from training.sequence_parallel.vision import encode_videos_split, split_frames
from training.tiny_model import TinyModelSpec, build_tiny_model

TOL = 1e-5
DEFAULT = TinyModelSpec(seed=3)  # 4 query heads / 2 KV heads
ODD_HEADS = TinyModelSpec(seed=4, hidden_size=48, num_heads=3, num_kv_heads=1)  # SP 4: kv_gather (auto)
UNEVEN_GQA = TinyModelSpec(seed=6, hidden_size=48, num_heads=6, num_kv_heads=2)  # SP 4: heads 2,2,1,1
# Qwen2.5-VL-7B's 28 / 4 heads halved (group of 7): at SP 4 the query heads split 4,4,3,3 and rank 1
# reads two KV heads - 7B's layout at SP 8 (4,4,4,4,3,3,3,3; KV 1,2,1,2,1,2,1,1) in miniature
QWEN7B_SHRUNK = TinyModelSpec(seed=8, hidden_size=112, num_heads=14, num_kv_heads=2)
PADDED_ROWS = [(5, 2, 4, 4, 3, 6), (3, 1, 4, 8, 2, 10)]  # L = 23, rows of 22 and 23 tokens
SINGLE_ROW = [(4, 3, 4, 4, 2, 7)]  # L = 25
SCENARIOS = {
    "pixels_left_padded": dict(spec=DEFAULT, rows=PADDED_ROWS, cached=False, checkpointing=False),
    "cached_odd_heads": dict(spec=ODD_HEADS, rows=SINGLE_ROW, cached=True, checkpointing=False),
    "activation_checkpointing": dict(spec=DEFAULT, rows=SINGLE_ROW, cached=False, checkpointing=True),
    # the padded-mask path (no packing) the varlen path replaces, kept exact
    "padded_mask_path": dict(spec=DEFAULT, rows=PADDED_ROWS, cached=False, checkpointing=False, pack=False),
    # context parallelism (KV all-gathered, blockwise attention with tiles smaller than a row)
    "kv_gather_left_padded": dict(spec=DEFAULT, rows=PADDED_ROWS, cached=True, checkpointing=False,
                                  layout="kv_gather", kv_block=5),
    # query heads spanning two KV heads on one rank: only the KV heads read are sent
    "uneven_gqa_heads": dict(spec=UNEVEN_GQA, rows=PADDED_ROWS, cached=True, checkpointing=False),
    "qwen7b_heads_shrunk": dict(spec=QWEN7B_SHRUNK, rows=PADDED_ROWS, cached=True, checkpointing=False),
}
VISION_GRIDS = {"uneven": [(3, 4, 4), (1, 4, 8), (2, 8, 4)], "fewer_frames_than_ranks": [(1, 4, 4), (2, 4, 4)]}
FSDP_ROWS = [PADDED_ROWS, [(4, 1, 4, 4, 3, 7)]]  # one batch per data-parallel replica


def _model(spec, tokenizer, train=True):
    model, _ = build_tiny_model(spec, tokenizer)
    model.train(train)
    return model


def _score(lpm, model, batch, video_embeds, pos, anchors):
    kwargs = ({"video_embeds": video_embeds} if video_embeds is not None else
              {"pixel_values_videos": batch.pixel_values_videos, "video_grid_thw": batch.video_grid_thw})
    lp, ent = lpm(batch.input_ids, batch.attention_mask, pos, batch.loss_mask, with_entropy=True, **kwargs)
    loss = grpo_loss(lp, batch.loss_mask, anchors)
    loss.backward()
    return lp.detach(), ent, loss.detach()


def _rank_main(rank: int, world: int, tokenizer, cached_embeds, anchors) -> dict:
    out = {}
    for name, sc in SCENARIOS.items():
        model = _model(sc["spec"], tokenizer)
        batch = make_video_batch(tokenizer, sc["rows"])
        state = init_parallel(sp_size=world)
        cfg = ParallelConfig(sp_size=world, fsdp=False, activation_checkpointing=sc["checkpointing"],
                             pack=sc.get("pack", True), attention_layout=sc.get("layout", "auto"),
                             kv_block=sc.get("kv_block", 1024))
        lpm = build_log_prob_model(model, state, cfg)
        lp, ent, loss = _score(lpm, model, batch, cached_embeds.get(name), rope_positions(model, batch),
                               anchors[name])
        grads = param_grads(model)
        for g in grads.values():  # each SP rank holds a share; the mean over SP is the gradient
            dist.all_reduce(g)
            g /= world
        out[name] = {"lp": lp, "ent": ent, "loss": loss, "grads": grads}
    model = _model(DEFAULT, tokenizer, train=False)
    with torch.no_grad():
        for name, grids in VISION_GRIDS.items():
            pixels = torch.randn(sum(t * h * w for t, h, w in grids), 1176, generator=torch.Generator().manual_seed(5))
            out[f"vision_{name}"] = encode_videos_split(model, pixels, torch.tensor(grids), dist.group.WORLD, rank, world)
    if world == 4:
        out["fsdp"] = {shard: _fsdp_rank(tokenizer, shard, anchors["fsdp"]) for shard in ("dp_sp", "dp")}
    return out


def _fsdp_rank(tokenizer, shard_over: str, anchors) -> dict:
    state = init_parallel(sp_size=2)
    model = _model(DEFAULT, tokenizer)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    batch = make_video_batch(tokenizer, FSDP_ROWS[state.dp_rank], seed=state.dp_rank)
    lpm = build_log_prob_model(model, state, ParallelConfig(sp_size=2, shard_over=shard_over))
    _, _, loss = _score(lpm, model, batch, None, rope_positions(model, batch), anchors[state.dp_rank])
    state_dict = full_state_dict(lpm)
    # the frozen reference: sharded the same way, its shards offloaded to CPU memory
    ref = build_log_prob_model(_model(DEFAULT, tokenizer, train=False), state,
                               ParallelConfig(sp_size=2, shard_over=shard_over, reference_cpu_offload=True),
                               trainable=False)
    with torch.no_grad():
        ref_lp, _ = ref(batch.input_ids, batch.attention_mask, rope_positions(ref.model, batch), batch.loss_mask,
                        pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw)
    return {"grads": param_grads(model), "loss": loss, "ref_lp": ref_lp, "dp_rank": state.dp_rank,
            "state_dict_diff": max((state_dict[k] - v).abs().max().item() for k, v in original.items())}


@functools.cache
def _reference(tokenizer) -> dict:
    out = {}
    for name, sc in SCENARIOS.items():
        model = _model(sc["spec"], tokenizer)
        batch = make_video_batch(tokenizer, sc["rows"])
        embeds = None
        if sc["cached"]:
            with torch.no_grad():
                embeds = [e.clone() for e in encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)]
        lp = reference_logprobs(model, batch, embeds)
        anchors = loss_anchors(lp)
        loss = grpo_loss(lp, batch.loss_mask, anchors)
        loss.backward()
        out[name] = {"lp": lp.detach(), "loss": loss.detach(), "grads": param_grads(model), "embeds": embeds,
                     "anchors": anchors}
    model = _model(DEFAULT, tokenizer, train=False)
    with torch.no_grad():
        for name, grids in VISION_GRIDS.items():
            pixels = torch.randn(sum(t * h * w for t, h, w in grids), 1176, generator=torch.Generator().manual_seed(5))
            out[f"vision_{name}"] = encode_videos(model, pixels, torch.tensor(grids))
    per_replica, out["fsdp_lp"], out["fsdp_anchors"] = [], [], []
    for i, rows in enumerate(FSDP_ROWS):
        model = _model(DEFAULT, tokenizer)
        batch = make_video_batch(tokenizer, rows, seed=i)
        lp = reference_logprobs(model, batch)
        out["fsdp_anchors"].append(loss_anchors(lp, seed=i))
        grpo_loss(lp, batch.loss_mask, out["fsdp_anchors"][-1]).backward()
        per_replica.append(param_grads(model))
        out["fsdp_lp"].append(lp.detach())
    out["fsdp_grads"] = {k: (per_replica[0][k] + per_replica[1][k]) / 2 for k in per_replica[0]}
    return out


_RUNS: dict[int, list[dict]] = {}


@pytest.fixture(scope="module", params=[2, 4], ids=["sp2", "sp4"])
def world(request, sp_tokenizer):
    """(world size, every rank's results, the single-process reference)."""
    size = request.param
    ref = _reference(sp_tokenizer)
    if size not in _RUNS:
        cached = {name: ref[name]["embeds"] for name, sc in SCENARIOS.items() if sc["cached"]}
        anchors = {name: ref[name]["anchors"] for name in SCENARIOS} | {"fsdp": ref["fsdp_anchors"]}
        _RUNS[size] = run_local_group(_rank_main, size, sp_tokenizer, cached, anchors)
    return size, _RUNS[size], ref


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sequence_parallel_equals_single_process(world, scenario):
    size, ranks, ref = world
    expected = ref[scenario]
    assert expected["lp"].shape[1] % size != 0  # lengths no SP size divides
    for rank, res in enumerate(ranks):
        got = res[scenario]
        assert (got["lp"] - expected["lp"]).abs().max().item() <= TOL, f"rank {rank} log-probs"
        assert abs(got["loss"].item() - expected["loss"].item()) <= TOL, f"rank {rank} loss"
        assert max_diff(got["grads"], expected["grads"]) <= TOL, f"rank {rank} gradients"
        assert (got["lp"] != 0).sum() == (expected["lp"] != 0).sum() > 0
        assert torch.all(got["ent"][expected["lp"] != 0] > 0) and torch.all(got["ent"][expected["lp"] == 0] == 0)
    # the language-model gradients are not trivially zero (the comparison means something)
    assert max(g.abs().max().item() for k, g in expected["grads"].items() if "layers.1.self_attn" in k) > 1e-4


def test_entropy_matches_full_softmax(sp_tokenizer):
    model = _model(DEFAULT, sp_tokenizer, train=False)
    batch = make_video_batch(sp_tokenizer, PADDED_ROWS)
    from training.sequence_parallel.policy import LogProbModel

    lpm = LogProbModel(model, vocab_chunk=100, token_chunk=7)
    with torch.no_grad():
        lp, ent = lpm(batch.input_ids, batch.attention_mask, rope_positions(model, batch), batch.loss_mask,
                      pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                      with_entropy=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=rope_positions(model, batch), pixel_values_videos=batch.pixel_values_videos,
                       video_grid_thw=batch.video_grid_thw).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    full_ent = -(logp.exp() * logp).sum(-1)
    scored = batch.loss_mask[:, 1:] > 0
    assert (ent[:, 1:][scored] - full_ent[scored]).abs().max().item() <= TOL
    assert (lp - reference_logprobs(model, batch)).abs().max().item() <= TOL


def test_vision_split_equals_unsplit(world):
    size, ranks, ref = world
    for name, grids in VISION_GRIDS.items():
        for rank, res in enumerate(ranks):
            got, expected = res[f"vision_{name}"], ref[f"vision_{name}"]
            assert [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
            assert max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True)) <= TOL, (name, rank)
        if name == "fewer_frames_than_ranks" and size == 4:
            assert [] in split_frames(grids, size)  # one rank really had no frames


@pytest.mark.parametrize("world", [4], ids=["sp4"], indirect=True)  # the dp x sp mesh needs 4 ranks
def test_fsdp_dp_x_sp_gradients_equal_data_parallel_mean_and_offloaded_reference(world):
    size, ranks, ref = world
    assert size == 4
    for shard_over in ("dp_sp", "dp"):
        for rank, res in enumerate(ranks):
            got = res["fsdp"][shard_over]
            assert max_diff(got["grads"], ref["fsdp_grads"]) <= TOL, (shard_over, rank)
            assert got["state_dict_diff"] == 0.0
            assert (got["ref_lp"] - ref["fsdp_lp"][got["dp_rank"]]).abs().max().item() <= TOL
        # the vision tower is trained too: its gradients come through the frame-split encoding
        # (each rank encodes its frames, the all-gather's backward sums them) and are not zero
        vision = [k for k in ref["fsdp_grads"] if k.startswith("model.visual.blocks.")]
        assert vision and max(ref["fsdp_grads"][k].abs().max().item() for k in vision) > 1e-6
        # both SP ranks of a replica computed the same loss; the replicas differ
        assert ranks[0]["fsdp"][shard_over]["loss"] == ranks[1]["fsdp"][shard_over]["loss"]
        assert ranks[0]["fsdp"][shard_over]["loss"] != ranks[2]["fsdp"][shard_over]["loss"]


# ---------------------------------------------------------------- single-process unit checks
def test_sequence_split_is_balanced_without_padding():
    for total in (1, 23, 25, 1001):
        for parts in (1, 2, 3, 4, 8):
            lengths = split_lengths(total, parts)
            assert sum(lengths) == total and max(lengths) - min(lengths) <= 1
    split = SequenceSplit.even(23, 4)
    assert split.lengths == (6, 6, 6, 5) and split.bounds(3) == (18, 23)


@pytest.mark.parametrize(
    ("heads", "kv", "sp", "q_counts", "kv_counts"),
    [
        (4, 2, 2, [2, 2], [1, 1]),  # divides: plain Ulysses
        (4, 2, 4, [1] * 4, [1] * 4),  # a KV head to each of the two ranks that read it
        (16, 2, 8, [2] * 8, [1] * 8),  # Qwen2.5-VL-3B at SP 8
        (28, 4, 4, [7] * 4, [1] * 4),  # Qwen2.5-VL-7B at SP 4
        (28, 4, 8, [4, 4, 4, 4, 3, 3, 3, 3], [1, 2, 1, 2, 1, 2, 1, 1]),  # 7B at SP 8: 11 KV heads sent, not 32
        (3, 1, 2, [2, 1], [1, 1]),  # odd test model
        (14, 2, 4, [4, 4, 3, 3], [1, 2, 1, 1]),  # the shrunk 7B test model at SP 4
    ],
)
def test_head_plans(heads, kv, sp, q_counts, kv_counts):
    plan = plan_heads(heads, kv, sp)
    assert plan.q_counts() == q_counts and plan.kv_counts() == kv_counts
    for rank in range(sp):  # every query head is computed once, against the KV head it reads
        (q0, _), (k0, _) = plan.q_ranges[rank], plan.kv_ranges[rank]
        for lo, hi, j in plan.runs(rank):
            assert all((q0 + i) // (heads // kv) == k0 + j for i in range(lo, hi))
    assert attention_layout("auto", heads, sp) == "ulysses" and attention_layout("auto", heads, heads + 1) == "kv_gather"
    with pytest.raises(ValueError, match="kv_gather"):
        plan_heads(heads, kv, heads + 1)


def test_split_frames_is_contiguous_and_balanced():
    grids = [(5, 4, 4), (3, 8, 8), (1, 4, 4)]
    for parts in (1, 2, 3, 4):
        plan = split_frames(grids, parts)
        units = [(p.video, t) for pieces in plan for p in pieces for t in range(p.t0, p.t1)]
        assert units == [(v, t) for v, (tt, _, _) in enumerate(grids) for t in range(tt)]
        costs = [sum((p.t1 - p.t0) * grids[p.video][1] * grids[p.video][2] for p in pieces) for pieces in plan]
        assert max(costs) - min(costs) <= 64  # within one of the largest frame groups


def test_linear_logprobs_equals_log_softmax_with_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 24, generator=g, requires_grad=True)
    weight = torch.randn(301, 24, generator=g, requires_grad=True)
    targets = torch.randint(0, 301, (37,), generator=g)
    upstream = torch.randn(37, generator=g)
    lp, ent = linear_logprobs(hidden, weight, targets, temperature=0.7, token_chunk=8, vocab_chunk=64,
                              with_entropy=True)
    (lp * upstream).sum().backward()
    got = (lp.detach(), hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    logp = torch.log_softmax(hidden @ weight.T / 0.7, dim=-1)
    expected_lp = logp.gather(1, targets[:, None]).squeeze(1)
    (expected_lp * upstream).sum().backward()
    assert (got[0] - expected_lp.detach()).abs().max() <= TOL
    assert (got[1] - hidden.grad).abs().max() <= TOL and (got[2] - weight.grad).abs().max() <= TOL
    assert (ent - (-(logp.exp() * logp).sum(-1)).detach()).abs().max() <= TOL


def test_ulysses_attention_without_a_group_is_plain_sdpa(sp_tokenizer):
    from training.sequence_parallel.attention import use_ulysses_attention

    model = _model(DEFAULT, sp_tokenizer, train=False)
    batch = make_video_batch(sp_tokenizer, PADDED_ROWS)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=rope_positions(model, batch), pixel_values_videos=batch.pixel_values_videos,
                  video_grid_thw=batch.video_grid_thw)
    with torch.no_grad():
        plain = model(**kwargs).logits
        name = use_ulysses_attention(model)
        wrapped = model(**kwargs).logits
    assert name == "longrl_ulysses_sdpa" and model.config.text_config._attn_implementation == name
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert torch.equal(plain, wrapped)


def test_video_positions_come_from_token_types_not_token_ids(sp_tokenizer):
    """A sampled response may contain <|video_pad|>: it stays a token (as when it was generated),
    and an embedding that does not fit its row is an error naming the row."""
    from training.sequence_parallel.policy import LogProbModel

    model = _model(DEFAULT, sp_tokenizer, train=False)
    batch = make_video_batch(sp_tokenizer, SINGLE_ROW)
    video_id = model.config.video_token_id
    batch.input_ids[0, -3] = video_id  # inside the response
    with torch.no_grad():
        embeds = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        video = batch.mm_token_type_ids == 2
        lpm = LogProbModel(model)
        pos = rope_positions(model, batch)
        lp, _ = lpm(batch.input_ids, batch.attention_mask, pos, batch.loss_mask, video_embeds=embeds,
                    video_mask=video)
        inputs = model.get_input_embeddings()(batch.input_ids)
        inputs[video] = embeds[0]
        logits = model(inputs_embeds=inputs, attention_mask=batch.attention_mask, position_ids=pos).logits
    expected = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, batch.input_ids[0, 1:, None]).squeeze(-1)
    scored = batch.loss_mask[0, 1:] > 0
    assert (lp[0, 1:][scored] - expected[scored]).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="row 0: video embedding of shape"):
        lpm(batch.input_ids, batch.attention_mask, pos, batch.loss_mask, video_embeds=[embeds[0][:-1]],
            video_mask=video)


def test_vision_windows_batched_equal_transformers_sdpa_tower():
    """Grids of 16 x 20 patches: several 8 x 8 windows per frame and smaller edge windows; the
    batched varlen tower equals transformers' own SDPA tower (a Python loop over windows), with
    gradients, and calls SDPA once per window length instead of once per window."""
    from unittest import mock

    import torch.nn.functional as F

    from training.sequence_parallel.attention import use_varlen_vision_attention

    spec = TinyModelSpec(seed=7, vision_depth=2, vision_fullatt_blocks=[1])
    model, _ = build_tiny_model(spec)
    grids = torch.tensor([[2, 16, 20], [1, 12, 8]])
    pixels = torch.randn(int((grids[:, 0] * grids[:, 1] * grids[:, 2]).sum()), 1176,
                         generator=torch.Generator().manual_seed(1))

    def run():
        model.zero_grad()
        calls = []
        real = F.scaled_dot_product_attention
        with mock.patch.object(F, "scaled_dot_product_attention", side_effect=lambda *a, **k: calls.append(1) or real(*a, **k)):
            out = torch.cat(encode_videos(model, pixels, grids))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.model.visual.named_parameters()}, len(calls)

    plain, plain_grads, plain_calls = run()
    use_varlen_vision_attention(model)
    got, grads, calls = run()
    assert (got - plain).abs().max().item() <= TOL
    assert max((grads[k] - plain_grads[k]).abs().max().item() for k in grads) <= TOL
    assert calls < plain_calls / 3, (calls, plain_calls)


def test_block_attention_and_packed_rows_equal_masked_sdpa():
    """The kv_gather kernel (tiles of 3 keys, GQA, segments) and the packed causal kernel against
    one SDPA call with an explicit mask, values and gradients."""
    from training.sequence_parallel.varlen import (
        PackedRows,
        causal_varlen_attention,
        gathered_kv_attention,
    )

    g = torch.Generator().manual_seed(0)
    rows = PackedRows((5, 9, 4))
    q = torch.randn(1, 4, rows.total, 8, generator=g, requires_grad=True)
    k = torch.randn(1, 2, rows.total, 8, generator=g, requires_grad=True)
    v = torch.randn(1, 2, rows.total, 8, generator=g, requires_grad=True)
    up = torch.randn(1, rows.total, 4, 8, generator=g)
    seg = rows.segment_ids("cpu")
    pos = torch.arange(rows.total)
    mask = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask).transpose(1, 2)

    def grads(out):
        q.grad = k.grad = v.grad = None
        (out * up).sum().backward()
        return [t.grad.clone() for t in (q, k, v)]

    want = grads(expected)
    for out in (causal_varlen_attention(q, k, v, rows, None),
                torch.cat([gathered_kv_attention(q[:, :, s:e], k, v, rows, s, None, block=3)
                           for s, e in ((0, 7), (7, 11), (11, 18))], dim=1)):
        assert (out - expected).abs().max().item() <= TOL
        assert all((a - b).abs().max().item() <= TOL for a, b in zip(grads(out), want, strict=True))
