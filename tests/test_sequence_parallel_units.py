"""Single-process checks of MR-SP kernels against their plain paths (seconds each)."""

from __future__ import annotations

import pytest
import torch

from training.linear_logprobs import compute_dtype_of, linear_logprobs


def _case(seed: int = 0, n: int = 37, hidden: int = 64, vocab: int = 301):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) / hidden ** 0.5 * 3  # logits of a few units
    return h, w, torch.randint(0, vocab, (n,), generator=g), torch.randn(n, generator=g)


def _run(h, w, targets, upstream, **kw):
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lp, ent = linear_logprobs(h, w, targets, temperature=0.7, token_chunk=8, vocab_chunk=64, with_entropy=True, **kw)
    (lp * upstream).sum().backward()
    return lp.detach(), ent, h.grad.float(), w.grad.float()


def _plain_fp32(h, w, targets, upstream):
    h, w = h.float().clone().requires_grad_(True), w.float().clone().requires_grad_(True)
    logp = torch.log_softmax(h @ w.T / 0.7, dim=-1)
    lp = logp.gather(1, targets[:, None]).squeeze(1)
    (lp * upstream).sum().backward()
    return lp.detach(), (-(logp.exp() * logp).sum(-1)).detach(), h.grad, w.grad


@pytest.mark.parametrize("how", ["bf16_inputs", "autocast"])
def test_linear_logprobs_bf16_compute_within_bf16_tolerance_of_fp32(how):
    """bf16 GEMMs, fp32 log-sum-exp: within what rounding the logits to bf16 (8 mantissa bits)
    can move a log-prob, of the plain fp32 log_softmax on the same (bf16-representable) inputs;
    the fp32 kernel on the same inputs stays within 1e-5, and bf16 is really used (it differs)."""
    h, w, targets, up = _case()
    h, w = h.bfloat16().float(), w.bfloat16().float()  # representable: only the compute differs
    want = _plain_fp32(h, w, targets, up)
    exact = _run(h, w, targets, up)
    if how == "bf16_inputs":
        assert compute_dtype_of(h.bfloat16(), w.bfloat16()) == torch.bfloat16
        got = _run(h.bfloat16(), w.bfloat16(), targets, up)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert compute_dtype_of(h, w) == torch.bfloat16
            got = _run(h, w, targets, up)
    assert compute_dtype_of(h, w) == torch.float32
    zmax = (h @ w.T / 0.7).abs().max().item()
    # a logit rounded to bf16 moves by <= 2^-9 of its size; a log-prob (z_t - lse) by twice that
    bound = 2 * zmax * 2 ** -9
    for e, x in zip(exact[:2], want[:2], strict=True):
        assert (e - x).abs().max().item() <= 1e-5
    for g, x in zip(got[:2], want[:2], strict=True):
        err = (g - x).abs().max().item()
        assert 0 < err <= bound, (err, bound)
    for g, x in zip(got[2:], want[2:], strict=True):  # gradients: relative to their largest entry
        rel = ((g - x).abs().max() / x.abs().max()).item()
        assert 0 < rel <= 2 ** -6, rel
    assert got[2].dtype == torch.float32 and got[0].dtype == torch.float32


def test_packed_scoring_builds_no_mask_and_calls_sdpa_without_one(sp_tokenizer):
    """Issue 12.2: with packed rows (the default) no [B, 1, L, L] (or any) mask is made - the
    causal mask function is never called and every SDPA call of the language model is causal with
    attn_mask=None - and the log-probs equal the padded-mask path's on left-padded rows."""
    from unittest import mock

    import torch.nn.functional as F
    import transformers.masking_utils as mu

    from tests.fixtures.sequence_parallel import make_video_batch, reference_logprobs
    from training.mm_batch import encode_videos, rope_positions
    from training.sequence_parallel import attention
    from training.sequence_parallel.policy import LogProbModel
    from training.tiny_model import TinyModelSpec, build_tiny_model

    model, _ = build_tiny_model(TinyModelSpec(seed=3), sp_tokenizer)
    batch = make_video_batch(sp_tokenizer, [(5, 2, 4, 4, 3, 6), (3, 1, 4, 8, 2, 10)])
    assert (batch.attention_mask == 0).any()  # left-padded: the padded path needs a 4-D mask
    with torch.no_grad():
        embeds = encode_videos(model, batch.pixel_values_videos, batch.video_grid_thw)
        pos = rope_positions(model, batch)
        calls, real = [], F.scaled_dot_product_attention
        spy = lambda *a, **k: calls.append((k.get("attn_mask"), k.get("is_causal"))) or real(*a, **k)  # noqa: E731
        lpm = LogProbModel(model)
        with mock.patch.object(F, "scaled_dot_product_attention", side_effect=spy), \
                mock.patch.object(mu, "create_causal_mask", side_effect=AssertionError("mask built")), \
                mock.patch.object(attention, "create_causal_mask", side_effect=AssertionError("mask built")):
            lp, _ = lpm(batch.input_ids, batch.attention_mask, pos, batch.loss_mask, video_embeds=embeds)
        padded, _ = LogProbModel(model, pack=False)(batch.input_ids, batch.attention_mask, pos, batch.loss_mask,
                                                    video_embeds=embeds)
    # one causal call per row per layer, none with a mask
    assert len(calls) == 2 * model.config.text_config.num_hidden_layers
    assert all(m is None and c for m, c in calls)
    assert (lp - padded).abs().max().item() <= 1e-5
    assert (lp - reference_logprobs(model, batch, embeds)).abs().max().item() <= 1e-5
