"""The policy update: PPO-clip + KL (+ entropy) over the step's rollouts, with gradient
accumulation whose micro-batch losses add up exactly to the mini-batch loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from training.grpo.algorithms import aggregate_loss, kl_loss, ppo_clip_loss
from training.grpo.config import AlgorithmConfig
from training.grpo.logprobs import LogprobFn, Rollout, gather_rows, rows_batch, scatter_rows
from training.optim import clip_grad_norm


@dataclass
class UpdateInputs:
    rows: Sequence[Rollout]
    advantages: torch.Tensor  # [N]
    # Per row; None: the update's own detached log-probs (see `old_pass_is_redundant`).
    old_logprobs: Sequence[torch.Tensor] | None
    ref_logprobs: Sequence[torch.Tensor] | None  # per row (KL as a loss)
    row_weight: torch.Tensor  # [N] 1 to train on the row, 0 to leave it out (e.g. truncated)
    # Filled by policy_update: per row, the detached log-probs of its first-epoch forward pass
    # (the rollout policy when there is one mini-batch), for metrics when the old pass is skipped.
    first_logprobs: list[torch.Tensor | None] | None = None


def old_pass_is_redundant(cfg: AlgorithmConfig, num_rows: int, model) -> bool:
    """True when a separate old-policy pass would only reproduce the update's own forward pass:
    one PPO epoch, one mini-batch (so every row is scored before the only optimizer step), the
    old log-probs taken from the trainer (not the rollout engine), no KL in the reward (which
    needs the old log-probs before the advantages exist), and no dropout (train and eval mode
    then compute the same function). The update then uses its own detached log-probs as the
    old ones: the ratio is exactly 1, as it is up to float noise with the separate pass."""
    one_mini = cfg.mini_batch_rows <= 0 or cfg.mini_batch_rows >= num_rows
    return (cfg.ppo_epochs == 1 and one_mini and cfg.old_logprobs == "trainer"
            and not cfg.kl_in_reward and not has_dropout(model))


def has_dropout(model) -> bool:
    """Any active dropout: a Dropout module with p > 0 or an attention dropout in the config."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
    configs = [getattr(model, "config", None)]
    configs += [getattr(configs[0], k, None) for k in ("text_config", "vision_config")]
    return any(float(getattr(c, "attention_dropout", 0.0) or 0.0) > 0 for c in configs if c is not None)


class _Mean:
    """Token-weighted running mean of diagnostics across micro-batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}


def policy_update(model, optimizer, scheduler, inputs: UpdateInputs, cfg: AlgorithmConfig, *,
                  embed_rows: Callable[..., list[torch.Tensor]], pad_id: int, temperature: float,
                  max_new_tokens: int, max_grad_norm: float,
                  logprob_fn: LogprobFn) -> dict[str, float]:
    rows = list(inputs.rows)
    n = len(rows)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    mini = cfg.mini_batch_rows if cfg.mini_batch_rows > 0 else n
    stats = _Mean()
    grad_norms: list[float] = []
    skipped = 0
    if inputs.old_logprobs is None and not (cfg.ppo_epochs == 1 and mini >= n):
        raise ValueError("old log-probs may come from the update itself only with one epoch and one mini-batch")
    first: list[torch.Tensor | None] = [None] * n
    inputs.first_logprobs = first
    model.train()
    for _epoch in range(cfg.ppo_epochs):
        for m0 in range(0, n, mini):
            idx = list(range(m0, min(m0 + mini, n)))
            weights = inputs.row_weight[idx]
            resp_len = torch.tensor([len(rows[i].response.token_ids) for i in idx], dtype=torch.float32)
            norms = {"num_tokens": float((resp_len * weights).sum()),
                     "num_seqs": float(weights.sum()), "norm_length": float(max_new_tokens)}
            if norms["num_seqs"] == 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            mini_pg = mini_kl = 0.0
            for s in range(0, len(idx), cfg.micro_batch_rows):
                part = idx[s:s + cfg.micro_batch_rows]
                chunk = [rows[i] for i in part]
                batch = rows_batch(chunk, pad_id, False, device, model)
                mask = batch.loss_mask * inputs.row_weight[part].to(device)[:, None]
                logp, ent = logprob_fn(model, batch, embed_rows([r.video for r in chunk], grad=True),
                                       temperature=temperature, chunk_size=cfg.logprob_chunk,
                                       with_entropy=True)
                if _epoch == 0:
                    for i, v in zip(part, gather_rows(logp.detach(), batch.loss_mask), strict=True):
                        first[i] = v.cpu()
                old = (logp.detach() if inputs.old_logprobs is None else
                       scatter_rows([inputs.old_logprobs[i] for i in part], batch.loss_mask))
                pl = ppo_clip_loss(logp, old, inputs.advantages[part].to(device), mask,
                                   clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                   dual_clip=cfg.dual_clip, agg=cfg.loss_agg, **norms)  # type: ignore[arg-type]
                loss = pl.loss
                tokens = float(mask.sum())
                if inputs.ref_logprobs is not None:
                    ref = scatter_rows([inputs.ref_logprobs[i] for i in part], batch.loss_mask)
                    kl = kl_loss(logp, ref, mask, cfg.kl_kind, cfg.loss_agg, **norms)  # type: ignore[arg-type]
                    loss = loss + cfg.kl_coef * kl
                    mini_kl += float(kl.detach())
                if ent is not None:
                    ent_loss = aggregate_loss(ent, mask, cfg.loss_agg, **norms)  # type: ignore[arg-type]
                    if cfg.entropy_coef:
                        loss = loss - cfg.entropy_coef * ent_loss
                    stats.add("actor/entropy", float((ent.detach() * mask).sum()) / max(tokens, 1), tokens)
                loss.backward()
                mini_pg += float(pl.loss.detach())  # micro losses add up to the mini-batch loss
                stats.add("actor/clip_fraction", float(pl.clip_fraction), tokens)
                stats.add("actor/dual_clip_fraction", float(pl.dual_clip_fraction), tokens)
                stats.add("actor/approx_kl", float(pl.approx_kl), tokens)
            stats.add("actor/pg_loss", mini_pg, 1.0)
            if inputs.ref_logprobs is not None:
                stats.add("actor/kl_loss", mini_kl, 1.0)
            norm = clip_grad_norm(params, max_grad_norm)
            grad_norms.append(norm)
            if math.isfinite(norm):
                optimizer.step()
            else:  # a non-finite gradient would poison the weights: skip and count it
                skipped += 1
            scheduler.step()
    model.eval()
    out = stats.result()
    out["actor/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    out["actor/lr"] = float(scheduler.get_last_lr()[0])
    out["actor/optimizer_steps"] = float(len(grad_norms) - skipped)
    out["actor/skipped_updates"] = float(skipped)
    return out
