"""GRPO / PPO / DAPO math as small pure functions over tensors.

Shapes: `N` sequences (all rollouts of a step or of a micro-batch), `T` response tokens (right
end padded, `mask` is 1 on real response tokens). Nothing here knows about models, videos or
rewards beyond plain numbers, so every function is unit-tested against hand-computed values
(tests/test_grpo_algorithms.py).

Defaults follow the reference recipe (verl / EasyR1 as used by Long-RL, see shared/CONTEXT.md):
unbiased group std, ratio clip 0.2 (DAPO clip-higher: 0.2 low / 0.28 high), dual clip 3.0,
token-mean aggregation, k3 "low_var_kl" as a loss clamped to [-10, 10].

Gradient accumulation: every aggregation takes optional global normalisers (`num_tokens`,
`num_seqs`) so that summing micro-batch losses gives exactly the loss (and gradient) of the
whole mini-batch - the reference divides by each micro-batch's own token count, which weights
tokens differently depending on how a batch happens to be split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl"]
LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
_KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}

# exp() of a log-ratio beyond +-20 overflows fp16/bf16 and means the policies have nothing in
# common anyway; both the reference and we clamp there.
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------
def group_advantages(
    rewards: Tensor,
    group_index: Tensor,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    unbiased_std: bool = True,
) -> Tensor:
    """GRPO outcome advantages: (r - mean_g) / (std_g + eps) within each group g.

    `rewards` [N] float, `group_index` [N] int (any ids; members need not be contiguous).
    `scale_by_std=False` gives Dr.GRPO's r - mean_g. A group with one member has no baseline
    and is an error (GRPO needs G >= 2), never a silent zero. A group whose rewards are all
    equal gets exactly 0: computed naively, fp32 rounding of the mean (e.g. eight 0.9s) leaves a
    ~1e-8 residue that dividing by std + eps blows up to -0.056 for every member.
    """
    if rewards.ndim != 1 or group_index.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index "
                         f"{tuple(group_index.shape)} must both be [N]")
    rewards = rewards.to(torch.float32)
    out = torch.empty_like(rewards)
    for g in torch.unique(group_index):
        sel = group_index == g
        r = rewards[sel]
        if r.numel() < 2:
            raise ValueError(f"group {int(g)} has {r.numel()} sample(s); GRPO needs >= 2 per group")
        if bool((r == r[0]).all()):
            out[sel] = 0.0
            continue
        r64 = r.double()  # mean and std in float64: no rounding residue in the centring
        centred = r64 - r64.mean()
        adv = centred / (r64.std(unbiased=unbiased_std) + eps) if scale_by_std else centred
        out[sel] = adv.to(out.dtype)
    return out


def contiguous_groups(num_groups: int, group_size: int) -> Tensor:
    """Group ids [0,0,..,1,1,..] for rollouts laid out prompt-major (G per prompt)."""
    return torch.arange(num_groups).repeat_interleave(group_size)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------
def aggregate_loss(
    loss_mat: Tensor,
    mask: Tensor,
    mode: LossAgg = "token-mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [N, T] to a scalar.

    - token-mean: sum over all valid tokens / number of valid tokens (DAPO).
    - seq-mean-token-sum: per-sequence sum, mean over sequences.
    - seq-mean-token-mean: per-sequence mean, mean over sequences (original GRPO).
    - seq-mean-token-sum-norm: per-sequence sum / `norm_length` (a fixed length, e.g. the max
      response length), mean over sequences (Dr.GRPO: no length bias).
    `num_tokens` / `num_seqs` replace the local counts by the mini-batch totals so micro-batch
    losses add up to the mini-batch loss.
    """
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} differ")
    mask = mask.to(loss_mat.dtype)
    masked = loss_mat * mask
    seqs = float(num_seqs) if num_seqs is not None else float(loss_mat.shape[0])
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum()
        return masked.sum() / torch.clamp(torch.as_tensor(denom, dtype=loss_mat.dtype), min=1.0)
    if mode == "seq-mean-token-sum":
        return masked.sum(-1).sum() / max(seqs, 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / torch.clamp(mask.sum(-1), min=1.0)
        return per_seq.sum() / max(seqs, 1.0)
    if mode == "seq-mean-token-sum-norm":
        if not norm_length or norm_length <= 0:
            raise ValueError("seq-mean-token-sum-norm needs norm_length > 0 (the max response length)")
        return masked.sum() / float(norm_length) / max(seqs, 1.0)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {LOSS_AGG_MODES}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / torch.clamp(mask.sum(), min=1.0)


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------
@dataclass
class PolicyLoss:
    """The aggregated PPO-clip loss and its diagnostics (diagnostics are detached)."""

    loss: Tensor
    clip_fraction: Tensor  # share of tokens where the low/high ratio clip is active
    dual_clip_fraction: Tensor  # share of tokens (negative advantage) capped by the dual clip
    approx_kl: Tensor  # mean of old - new log-prob over valid tokens
    ratio_max: Tensor
    ratio_min: Tensor
    per_token: Tensor = field(repr=False)  # [N, T] unaggregated loss (masked positions = 0)


def ppo_clip_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_length: float | None = None,
) -> PolicyLoss:
    """PPO-clip with separate low/high ratio bounds (DAPO clip-higher) and dual clip.

    per token: ratio = exp(logp - old_logp);
      l = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high));
      for A < 0 with dual clip c: l = min(l, -A * c) (bounds the loss of very off-policy tokens).
    `advantages` is [N] (one per sequence) or [N, T].
    """
    if log_probs.shape != old_log_probs.shape or log_probs.shape != mask.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)}, old_log_probs "
                         f"{tuple(old_log_probs.shape)} and mask {tuple(mask.shape)} must match")
    if advantages.ndim == 1:
        advantages = advantages[:, None].expand_as(log_probs)
    if advantages.shape != log_probs.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} do not fit {tuple(log_probs.shape)}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1.0, got {dual_clip}")
    advantages = advantages.to(log_probs.dtype)
    log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    dual_active = torch.zeros_like(clip_active)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_active = (loss > cap) & (advantages < 0)
        loss = torch.where(advantages < 0, torch.minimum(loss, cap), loss)
    per_token = loss * mask.to(loss.dtype)
    agg_loss = aggregate_loss(loss, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs,
                              norm_length=norm_length)
    with torch.no_grad():
        valid = mask.bool()
        any_valid = bool(valid.any())
        return PolicyLoss(
            loss=agg_loss,
            clip_fraction=masked_mean(clip_active.to(loss.dtype), mask),
            dual_clip_fraction=masked_mean(dual_active.to(loss.dtype), mask),
            approx_kl=masked_mean(-log_ratio.detach(), mask),
            ratio_max=ratio[valid].max() if any_valid else ratio.new_tensor(1.0),
            ratio_min=ratio[valid].min() if any_valid else ratio.new_tensor(1.0),
            per_token=per_token,
        )


# --------------------------------------------------------------------------------------------
# KL to the reference policy
# --------------------------------------------------------------------------------------------
def kl_estimate(log_probs: Tensor, ref_log_probs: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs (Schulman's k1/k2/k3).

    k1 ("kl"): logp - ref; abs: |logp - ref|; k2 ("mse"): 0.5 (logp - ref)^2;
    k3 ("low_var_kl"): exp(ref - logp) - (ref - logp) - 1, with ref - logp clamped to +-20 and
    the result to +-10 as the reference does (one extreme token must not dominate the loss).
    """
    kind = _KL_ALIASES.get(kind, kind)  # type: ignore[assignment]
    diff = log_probs - ref_log_probs
    if kind == "k1":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "k2":
        return 0.5 * diff.square()
    if kind == "k3":
        back = torch.clamp(-diff, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(back) - back - 1.0, -K3_CLAMP, K3_CLAMP)
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1/kl, abs, k2/mse, k3/low_var_kl")


def kl_loss(
    log_probs: Tensor,
    ref_log_probs: Tensor,
    mask: Tensor,
    kind: KLKind = "k3",
    agg: LossAgg = "token-mean",
    **norms: float | None,
) -> Tensor:
    """KL penalty as a loss term (the trainer adds coef * this to the policy loss)."""
    return aggregate_loss(kl_estimate(log_probs, ref_log_probs, kind), mask, agg, **norms)


def kl_penalized_rewards(
    rewards: Tensor, log_probs: Tensor, ref_log_probs: Tensor, mask: Tensor,
    coef: float, kind: KLKind = "k1",
) -> tuple[Tensor, Tensor]:
    """KL in the reward instead of the loss: r - coef * sum_t kl_t per sequence.

    Returns (penalised rewards [N], per-sequence KL sums [N]). Outcome advantages only see the
    sequence total, so summing the per-token penalties is exactly what a token-level reward
    would contribute.
    """
    with torch.no_grad():
        seq_kl = (kl_estimate(log_probs, ref_log_probs, kind) * mask.to(log_probs.dtype)).sum(-1)
    return rewards - coef * seq_kl, seq_kl


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------
def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution per position: logsumexp(z) - sum softmax(z) z."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


# --------------------------------------------------------------------------------------------
# DAPO: overlong penalty and dynamic sampling
# --------------------------------------------------------------------------------------------
def overlong_penalty(
    response_lengths: Tensor, max_length: int, buffer_length: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO soft overlong punishment, added to the reward: 0 up to max_length - buffer_length,
    then falling linearly to -penalty_factor at max_length."""
    if buffer_length <= 0 or buffer_length > max_length:
        raise ValueError(f"buffer_length must be in (0, max_length={max_length}], got {buffer_length}")
    expected = max_length - buffer_length
    exceed = response_lengths.to(torch.float32) - expected
    return torch.clamp(-exceed / buffer_length * penalty_factor, max=0.0)


def informative_groups(rewards: Sequence[Sequence[float]], tol: float = 0.0) -> list[bool]:
    """DAPO dynamic-sampling filter: True for groups whose rewards are not all equal.

    A group where every rollout got the same reward has zero advantage everywhere and only
    dilutes the batch (with accuracy in {0, 1} these are the mean-0 and mean-1 groups).
    """
    return [len(g) > 0 and (max(g) - min(g)) > tol for g in rewards]


T = TypeVar("T")


class DynamicSampler(Generic[T]):
    """Collects groups that carry a learning signal across generation rounds (DAPO refill).

    The trainer keeps generating rounds of prompts and `add`s each round's groups with their
    rewards; once `full`, `take()` returns exactly `target_groups` of them (first come first
    served, so a fixed seed gives a fixed batch). After `max_rounds` rounds `exhausted` is True
    and the trainer trains on what it has rather than looping forever on a too-easy dataset.
    """

    def __init__(self, target_groups: int, max_rounds: int = 8, tol: float = 0.0) -> None:
        if target_groups < 1 or max_rounds < 1:
            raise ValueError("target_groups and max_rounds must be >= 1")
        self.target_groups, self.max_rounds, self.tol = target_groups, max_rounds, tol
        self.kept: list[T] = []
        self.rounds = 0
        self.seen_groups = 0
        self.dropped_groups = 0

    def add(self, groups: Sequence[T], rewards: Sequence[Sequence[float]]) -> int:
        """Add one round; returns how many of its groups were kept."""
        if len(groups) != len(rewards):
            raise ValueError(f"{len(groups)} groups but {len(rewards)} reward lists")
        self.rounds += 1
        keep = informative_groups(rewards, self.tol)
        self.seen_groups += len(groups)
        self.dropped_groups += keep.count(False)
        self.kept.extend(g for g, k in zip(groups, keep, strict=True) if k)
        return keep.count(True)

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.target_groups

    @property
    def exhausted(self) -> bool:
        return self.rounds >= self.max_rounds

    @property
    def done(self) -> bool:
        return self.full or self.exhausted

    def take(self) -> list[T]:
        return self.kept[: self.target_groups]

    def stats(self) -> dict[str, float]:
        return {
            "dynamic_sampling/rounds": float(self.rounds),
            "dynamic_sampling/kept_groups": float(min(len(self.kept), self.target_groups)),
            "dynamic_sampling/dropped_share": self.dropped_groups / max(self.seen_groups, 1),
        }
