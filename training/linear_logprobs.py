"""Log-probs of chosen tokens straight from hidden states, without [tokens x vocab] logits.

`linear_logprobs(hidden, weight, targets)` = log_softmax(hidden @ weight.T / T)[i, targets[i]].
The projection runs over (token chunk x vocabulary chunk) tiles with an online log-sum-exp, so the
largest temporary is one [token_chunk, vocab_chunk] fp32 tile in the forward AND the backward:
the backward recomputes each tile from the saved hidden states and the per-token log-sum-exp
instead of keeping every chunk's logits alive for autograd (a plain chunked log_softmax under
autograd still stores them all). For 256K video tokens only the response tokens are projected at
all; the caller selects them first. Used by every scoring pass: `mm_batch.token_logprobs`
(single process) and the sequence-parallel LogProbModel.

Entropy (for metrics) comes from the same pass, without gradient.
"""

from __future__ import annotations

import torch


def _tile_logits(h: torch.Tensor, w: torch.Tensor, inv_temp: float) -> torch.Tensor:
    # fp32 even under bf16 autocast: log-softmax over a large vocabulary needs the precision.
    with torch.autocast(device_type=h.device.type, enabled=False):
        logits = h.float() @ w.float().T
    return logits * inv_temp if inv_temp != 1.0 else logits


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, token_chunk, vocab_chunk, inv_temp, with_entropy):
        n, vocab = hidden.shape[0], weight.shape[0]
        logprobs = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, token_chunk):
            h, tgt = hidden[s : s + token_chunk], targets[s : s + token_chunk]
            run_max = torch.full((h.shape[0],), float("-inf"), device=h.device)
            run_sum = torch.zeros(h.shape[0], device=h.device)
            run_dot = torch.zeros(h.shape[0], device=h.device)  # sum exp(z - max) * z, for entropy
            picked = torch.zeros(h.shape[0], device=h.device)
            for v in range(0, vocab, vocab_chunk):
                z = _tile_logits(h, weight[v : v + vocab_chunk], inv_temp)
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
        ctx.token_chunk, ctx.vocab_chunk, ctx.inv_temp = token_chunk, vocab_chunk, inv_temp
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        tc, vc, inv_temp = ctx.token_chunk, ctx.vocab_chunk, ctx.inv_temp
        for s in range(0, hidden.shape[0], tc):
            h, tgt = hidden[s : s + tc], targets[s : s + tc]
            g, chunk_lse = grad_logprobs[s : s + tc].float(), lse[s : s + tc]
            for v in range(0, weight.shape[0], vc):
                w = weight[v : v + vc]
                z = _tile_logits(h, w, inv_temp)
                # d logprob / d z = onehot(target) - softmax(z)
                dz = -torch.exp(z - chunk_lse[:, None]) * g[:, None]
                inside = (tgt >= v) & (tgt < v + z.shape[1])
                rows = inside.nonzero(as_tuple=True)[0]
                dz[rows, tgt[rows] - v] += g[rows]
                if inv_temp != 1.0:
                    dz = dz * inv_temp
                if need_h:
                    grad_h[s : s + tc] += dz @ w.float()
                if need_w:
                    grad_w[v : v + vc] += dz.T @ h.float()
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            None, None, None, None, None,
        )


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    temperature: float = 1.0, token_chunk: int = 2048, vocab_chunk: int = 32768,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(targets[i] | hidden[i]), entropy or None) for hidden [N, H], weight [V, H] (the
    lm_head), targets [N]; fp32 results, differentiable w.r.t. hidden and weight."""
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows but {targets.shape[0]} targets")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logprobs, entropy = _LinearLogProbs.apply(hidden, weight, targets, token_chunk, vocab_chunk,
                                              1.0 / temperature, with_entropy)
    return logprobs, (entropy if with_entropy else None)
