"""GRPO/PPO/DAPO math against values computed by hand (comments show the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from training.grpo.algorithms import (
    DynamicSampler,
    aggregate_loss,
    contiguous_groups,
    entropy_from_logits,
    group_advantages,
    informative_groups,
    kl_estimate,
    kl_loss,
    kl_penalized_rewards,
    overlong_penalty,
    ppo_clip_loss,
)


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0, 0, 0, 0.5, 0.5, 1, 0, 1, 1, 1, 1])
    groups = contiguous_groups(3, 4)
    adv = group_advantages(rewards, groups)
    # group 0: mean .25, unbiased std sqrt((.5625 + 3 * .0625) / 3) = .5 -> 1.5, -.5, -.5, -.5
    # group 1: mean .5, std sqrt(.5 / 3) = .408248 -> 0, 0, 1.224745, -1.224745
    # group 2: all equal -> std 0 -> 0 (eps keeps it finite)
    expected = [1.5, -0.5, -0.5, -0.5, 0, 0, 1.224745, -1.224745, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    no_std = group_advantages(rewards, groups, scale_by_std=False)
    assert no_std.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0.5, -0.5, 0, 0, 0, 0])


@pytest.mark.parametrize("value", [0.9, 0.1, 0.3, 1 / 3, 0.0, 1.0])
@pytest.mark.parametrize("size", [2, 8, 16])
def test_group_with_all_equal_rewards_gets_exactly_zero(value, size):
    # naively in fp32, eight 0.9s gave -0.056 to every member (mean rounding / (std + 1e-6))
    rewards = torch.tensor([value] * size + [0.0, 1.0])
    groups = torch.tensor([0] * size + [1, 1])
    adv = group_advantages(rewards, groups)
    assert torch.equal(adv[:size], torch.zeros(size))
    assert adv[size:].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-5)
    assert torch.equal(group_advantages(rewards, groups, scale_by_std=False)[:size], torch.zeros(size))


def test_group_advantages_groups_need_not_be_contiguous():
    rewards = torch.tensor([1.0, 0.5, 0, 0.5, 0, 1, 0, 0])
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    adv = group_advantages(rewards, groups)
    ref = group_advantages(rewards[[0, 2, 4, 6, 1, 3, 5, 7]], contiguous_groups(2, 4))
    assert adv[[0, 2, 4, 6, 1, 3, 5, 7]].tolist() == pytest.approx(ref.tolist())


def test_group_of_one_is_an_error():
    with pytest.raises(ValueError, match="group 1 has 1 sample"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))


def _ratios_case(dtype=torch.float64):
    # four tokens with ratios 1.5, 0.5, 1.1, 5.0 (old log-prob 0) and advantages +1, -1, +2, -1
    ratios = torch.tensor([[1.5, 0.5, 1.1, 5.0]], dtype=dtype)
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]], dtype=dtype)
    return ratios.log(), torch.zeros_like(ratios), adv, torch.ones_like(ratios)


def test_ppo_clip_hand_computed():
    logp, old, adv, mask = _ratios_case()
    out = ppo_clip_loss(logp, old, adv, mask)
    # a: max(-1.5, -1.2) = -1.2 (clipped)   b: max(.5, .8) = .8 (clipped, under dual cap 3)
    # c: -2.2 (inside)                      d: max(5, 1.2) = 5 -> dual clip min(5, 3) = 3
    # token-mean: (-1.2 + .8 - 2.2 + 3) / 4 = .1
    assert out.loss.item() == pytest.approx(0.1)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    assert out.dual_clip_fraction.item() == pytest.approx(0.25)
    assert out.ratio_max.item() == pytest.approx(5.0)
    assert out.approx_kl.item() == pytest.approx(-(math.log(1.5 * 0.5 * 1.1 * 5.0)) / 4)
    # DAPO clip-higher 0.28: a becomes max(-1.5, -1.28) = -1.28 -> (.32) / 4 = .08
    assert ppo_clip_loss(logp, old, adv, mask, clip_high=0.28).loss.item() == pytest.approx(0.08)
    # no dual clip: d stays 5 -> 2.4 / 4 = .6
    assert ppo_clip_loss(logp, old, adv, mask, dual_clip=None).loss.item() == pytest.approx(0.6)


def test_ppo_clip_ignores_padding_and_broadcasts_sequence_advantages():
    logp, old, _, _ = _ratios_case()
    padded_logp = torch.cat([logp, torch.tensor([[123.0]], dtype=logp.dtype)], 1)
    padded_old = torch.cat([old, torch.tensor([[-50.0]], dtype=old.dtype)], 1)
    mask = torch.tensor([[1.0, 1, 1, 1, 0]], dtype=logp.dtype)
    out = ppo_clip_loss(padded_logp, padded_old, torch.tensor([1.0], dtype=logp.dtype), mask)
    # A = +1 everywhere: max(-r, -clip(r, .8, 1.2)) = -1.2, -.5, -1.1, -1.2 -> mean -1.0
    assert out.loss.item() == pytest.approx(-1.0)
    assert out.per_token[0, 4].item() == 0.0
    assert out.ratio_max.item() == pytest.approx(5.0)


def test_aggregation_modes_hand_computed():
    loss = torch.tensor([[1.0, 2, 3], [4, 99, 99]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", norm_length=4).item() == \
        pytest.approx((6 + 4) / 4 / 2)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(loss, mask, "mean")  # type: ignore[arg-type]
    assert aggregate_loss(loss, torch.zeros_like(mask)).item() == 0.0  # no tokens: 0, not nan


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                 "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_policy_loss_micro_batches_add_up_to_the_batch(agg, micro):
    """Shapes at micro-batch 1 and > 1, and gradient accumulation with global normalisers gives
    exactly the full-batch gradient."""
    g = torch.Generator().manual_seed(0)
    n, t = 4, 6
    logits = torch.randn(n, t, generator=g, dtype=torch.float64)
    old = (logits + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)).detach()
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    mask = torch.ones(n, t, dtype=torch.float64)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    kw = dict(agg=agg, norm_length=t, clip_high=0.28)

    full = logits.clone().requires_grad_(True)
    ppo_clip_loss(full, old, adv, mask, **kw).loss.backward()

    acc = logits.clone().requires_grad_(True)
    norms = dict(num_tokens=float(mask.sum()), num_seqs=float(n))
    total = 0.0
    for s in range(0, n, micro):
        out = ppo_clip_loss(acc[s:s + micro], old[s:s + micro], adv[s:s + micro],
                            mask[s:s + micro], **kw, **norms)
        assert out.loss.ndim == 0 and out.per_token.shape == (min(micro, n - s), t)
        out.loss.backward()
        total += out.loss.item()
    assert total == pytest.approx(ppo_clip_loss(logits, old, adv, mask, **kw).loss.item())
    torch.testing.assert_close(acc.grad, full.grad, rtol=0, atol=1e-12)


def test_kl_estimators_hand_computed():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    d = math.log(2)
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_estimate(logp, ref, "kl").item() == pytest.approx(d)
    assert kl_estimate(ref, logp, "abs").item() == pytest.approx(d)
    assert kl_estimate(logp, ref, "mse").item() == pytest.approx(0.5 * d * d)
    # k3: exp(ref - logp) - (ref - logp) - 1 = .5 + ln 2 - 1
    assert kl_estimate(logp, ref, "low_var_kl").item() == pytest.approx(0.5 + d - 1)
    # clamps: ref - logp = -30 -> -20 -> e^-20 + 19 -> clamp 10; +30 -> 20 -> e^20 ... -> 10
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([-30.0]), "k3").item() == 10.0
    assert kl_estimate(torch.tensor([-30.0]), torch.tensor([0.0]), "k3").item() == 10.0
    assert kl_estimate(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="unknown KL"):
        kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_kl_loss_and_kl_in_reward():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.1, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.9], [0.5, 0.1, 0.1]]))
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 0]])
    k3 = 0.5 + math.log(2) - 1
    assert kl_loss(logp, ref, mask, "k3").item() == pytest.approx(k3 / 4, rel=1e-5)
    rewards, seq_kl = kl_penalized_rewards(torch.tensor([1.0, 0.0]), logp, ref, mask, 0.1, "k1")
    assert seq_kl.tolist() == pytest.approx([math.log(2), 0.0], rel=1e-5)
    assert rewards.tolist() == pytest.approx([1 - 0.1 * math.log(2), 0.0], rel=1e-5)


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy_from_logits(torch.tensor([[0.0, -1e4]])).item() == pytest.approx(0.0, abs=1e-6)


def test_overlong_penalty_hand_computed():
    # max 20, buffer 4 -> free up to 16; 18 -> -(2/4) = -.5; 20 -> -1; factor 2 doubles it
    lengths = torch.tensor([10, 16, 18, 20])
    assert overlong_penalty(lengths, 20, 4).tolist() == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(lengths, 20, 4, penalty_factor=2.0).tolist() == [0.0, 0.0, -1.0, -2.0]
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 20, 0)


def test_dynamic_sampling_drops_flat_groups_and_refills():
    assert informative_groups([[1, 1], [0, 1], [0, 0], [0.5, 0.2], []]) == \
        [False, True, False, True, False]
    sampler: DynamicSampler[str] = DynamicSampler(target_groups=3, max_rounds=3)
    assert sampler.add(["a", "b", "c", "d"], [[1, 1], [0, 1], [0, 0], [0.5, 0.2]]) == 2
    assert not sampler.done
    assert sampler.add(["e", "f"], [[1, 0], [0, 1]]) == 2
    assert sampler.full and sampler.take() == ["b", "d", "e"]
    stats = sampler.stats()
    assert stats["dynamic_sampling/rounds"] == 2
    assert stats["dynamic_sampling/dropped_share"] == pytest.approx(2 / 6)
    tired: DynamicSampler[str] = DynamicSampler(target_groups=2, max_rounds=2)
    tired.add(["a"], [[1, 1]])
    tired.add(["b"], [[0, 1]])
    assert tired.exhausted and tired.done and not tired.full and tired.take() == ["b"]
