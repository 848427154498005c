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
