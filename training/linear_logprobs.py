"""Log-probs of chosen tokens straight from hidden states, without [tokens x vocab] logits.

`linear_logprobs(hidden, weight, targets)` = log_softmax(hidden @ weight.T / T)[i, targets[i]].
The projection runs over (token chunk x vocabulary chunk) tiles with an online log-sum-exp, so the
largest temporary is one [token_chunk, vocab_chunk] fp32 tile in the forward AND the backward:
the backward recomputes each tile from the saved hidden states and the per-token log-sum-exp
instead of keeping every chunk's logits alive for autograd (a plain chunked log_softmax under
autograd still stores them all). For 256K video tokens only the response tokens are projected at
all; the caller selects them first. Used by every scoring pass: `mm_batch.token_logprobs`
(single process) and the sequence-parallel LogProbModel.

Precision: the matmuls run in the compute dtype - bf16 when the hidden states or the weight are
bf16 (FSDP2's param_dtype) or under bf16 autocast - with the log-sum-exp, the picked logit, the
entropy and the gradient accumulators in fp32 (`compute_dtype` overrides). On CUDA the bf16
GEMM writes fp32 logits straight from its fp32 accumulator (`torch.mm(..., out_dtype=float32)`);
where that is not available (CPU) the bf16 product is rounded to bf16 and then widened. No fp32
copy of a [vocab_chunk x hidden] weight tile is made (470 MB per tile at 7B). With fp32 inputs and
no autocast everything stays fp32: the exact path of the equivalence tests.

Entropy (for metrics) comes from the same pass, without gradient.
"""

from __future__ import annotations

import torch

_OUT_DTYPE_MM: dict[str, bool] = {}  # device type -> torch.mm(..., out_dtype=float32) works there


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as fp32. fp32 inputs: plain fp32 GEMM. Low-precision inputs: the GEMM in that dtype,
    fp32 output (straight from the accumulator where torch supports it, else widened)."""
    if a.dtype == torch.float32:
        return a @ b
    kind = a.device.type
    if _OUT_DTYPE_MM.get(kind, True):
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _OUT_DTYPE_MM[kind] = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            # Not a stub: torch builds without mm(out_dtype=) for this device (CPU; older
            # torch raises TypeError) take the widened product below, remembered per device.
            _OUT_DTYPE_MM[kind] = False
    return (a @ b).float()


def _tile_logits(h: torch.Tensor, w: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """[tokens, vocab tile] fp32 logits; h and w already in the compute dtype."""
    with torch.autocast(device_type=h.device.type, enabled=False):
        logits = _mm_fp32(h, w.T)
    return logits * inv_temp if inv_temp != 1.0 else logits


def compute_dtype_of(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """bf16/fp16 if either input is, or autocast is on for their device; else fp32."""
    for t in (hidden, weight):
        if t.dtype in (torch.bfloat16, torch.float16):
            return t.dtype
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.float32


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, token_chunk, vocab_chunk, inv_temp, with_entropy, dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        logprobs = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, token_chunk):
            h, tgt = hidden[s : s + token_chunk].to(dtype), targets[s : s + token_chunk]
            run_max = torch.full((h.shape[0],), float("-inf"), device=h.device)
            run_sum = torch.zeros(h.shape[0], device=h.device)
            run_dot = torch.zeros(h.shape[0], device=h.device)  # sum exp(z - max) * z, for entropy
            picked = torch.zeros(h.shape[0], device=h.device)
            for v in range(0, vocab, vocab_chunk):
                z = _tile_logits(h, weight[v : v + vocab_chunk].to(dtype), inv_temp)
                new_max = torch.maximum(run_max, z.max(dim=1).values)
                scale = torch.exp(run_max - new_max)
                e = torch.exp(z - new_max[:, None])
                run_sum = run_sum * scale + e.sum(dim=1)
                if with_entropy:
                    run_dot = run_dot * scale + (e * z).sum(dim=1)
                run_max = new_max
                inside = (tgt >= v) & (tgt < v + z.shape[1])
                rows = inside.nonzero(as_tuple=True)[0]
                picked[rows] = z[rows, tgt[rows] - v]
            chunk_lse = run_max + torch.log(run_sum)
            lse[s : s + token_chunk] = chunk_lse
            logprobs[s : s + token_chunk] = picked - chunk_lse
            if with_entropy:
                entropy[s : s + token_chunk] = chunk_lse - run_dot / run_sum
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.token_chunk, ctx.vocab_chunk, ctx.inv_temp, ctx.dtype = token_chunk, vocab_chunk, inv_temp, dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        tc, vc, inv_temp, dtype = ctx.token_chunk, ctx.vocab_chunk, ctx.inv_temp, ctx.dtype
        for s in range(0, hidden.shape[0], tc):
            h, tgt = hidden[s : s + tc].to(dtype), targets[s : s + tc]
            g, chunk_lse = grad_logprobs[s : s + tc].float(), lse[s : s + tc]
            for v in range(0, weight.shape[0], vc):
                w = weight[v : v + vc].to(dtype)
                z = _tile_logits(h, w, inv_temp)
                # d logprob / d z = onehot(target) - softmax(z)
                dz = -torch.exp(z - chunk_lse[:, None]) * g[:, None]
                inside = (tgt >= v) & (tgt < v + z.shape[1])
                rows = inside.nonzero(as_tuple=True)[0]
                dz[rows, tgt[rows] - v] += g[rows]
                if inv_temp != 1.0:
                    dz = dz * inv_temp
                dz = dz.to(dtype)  # the gradient GEMMs in the compute dtype too, accumulated in fp32
                if need_h:
                    grad_h[s : s + tc] += _mm_fp32(dz, w)
                if need_w:
                    grad_w[v : v + vc] += _mm_fp32(dz.T, h)
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            None, None, None, None, None, None,
        )


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    temperature: float = 1.0, token_chunk: int = 2048, vocab_chunk: int = 32768,
                    with_entropy: bool = False, compute_dtype: torch.dtype | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(targets[i] | hidden[i]), entropy or None) for hidden [N, H], weight [V, H] (the
    lm_head), targets [N]; fp32 results, differentiable w.r.t. hidden and weight. The matmuls run
    in `compute_dtype` (default: `compute_dtype_of(hidden, weight)`), everything else in fp32."""
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows but {targets.shape[0]} targets")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = compute_dtype or compute_dtype_of(hidden, weight)
    logprobs, entropy = _LinearLogProbs.apply(hidden, weight, targets, token_chunk, vocab_chunk,
                                              1.0 / temperature, with_entropy, dtype)
    return logprobs, (entropy if with_entropy else None)
