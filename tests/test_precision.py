"""Mixed precision that learns: one GRPO step at the reference lr 1e-6 changes as many weights
under the GPU default (fp32 master weights, bf16 compute) as in fp32, while bf16 weights swallow
the update; configs that would step bf16 weights are refused naming the keys."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from training.grpo.trainer import GRPOTrainer
from training.precision import PrecisionError, resolve_precision

from .fixtures.grpo import grpo_config

REWARD = "tests.fixtures.grpo:bare_choice_reward"


def _changed_share(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Share of the LLM's weights (decoder layers) that one step moved."""
    keys = [k for k in before if ".layers." in k and "visual" not in k]
    # Compared in the dtype the weights were held in (bf16-held weights start bf16-rounded).
    moved = sum(int((before[k].to(after[k].dtype) != after[k]).sum()) for k in keys)
    return moved / sum(before[k].numel() for k in keys)


def _one_step(model_dir, data_dir, out, monkeypatch=None, **over) -> float:
    cfg = grpo_config(max_steps=1, **{"rollout.prompts_per_step": 2, "rollout.group_size": 4,
                                      "rollout.max_new_tokens": 1, "optim.lr": 1e-6, "algorithm.kl_coef": 0.0,
                                      "reward.weights": {REWARD: 1.0}, "seed": 3, **over})
    GRPOTrainer(cfg, model_dir, data_dir, out).train()
    return _changed_share(load_file(model_dir / "model.safetensors"), load_file(out / "model" / "model.safetensors"))


def test_lr_1e6_step_under_bf16_compute_moves_weights_as_fp32(answer_ab_model_dir, colour_task, tmp_path, monkeypatch):
    fp32 = _one_step(answer_ab_model_dir, colour_task, tmp_path / "fp32", precision="fp32")
    mixed = _one_step(answer_ab_model_dir, colour_task, tmp_path / "bf16", precision="bf16")
    # The contrast that makes the test able to fail: weights held in bf16 (what dtype=bfloat16 did).
    from training.grpo import setup

    real = setup.TrainerSetup.load_kwargs
    monkeypatch.setattr(setup.TrainerSetup, "load_kwargs", lambda self: {**real(self), "dtype": "bfloat16"})
    bf16_weights = _one_step(answer_ab_model_dir, colour_task, tmp_path / "bf16w", precision="fp32")
    print(f"share of LLM weights moved by one lr-1e-6 step: fp32 {fp32:.4f}, bf16 compute {mixed:.4f}, bf16 weights {bf16_weights:.4f}")
    assert fp32 > 0.5, fp32  # AdamW's first step moves every weight that has a gradient
    assert abs(mixed - fp32) <= 0.05 * fp32, (mixed, fp32)
    assert bf16_weights < 0.1 * fp32, (bf16_weights, fp32)


def test_config_that_would_step_bf16_weights_is_refused():
    with pytest.raises(ValueError, match=r"dtype=bfloat16 .* precision=bf16"):
        grpo_config(dtype="bfloat16").check()
    with pytest.raises(ValueError, match="precision 'half'"):
        grpo_config(precision="half").check()


def test_precision_resolves_bf16_on_gpu_and_fp32_on_cpu():
    assert resolve_precision("auto", "cuda").bf16 and not resolve_precision("auto", "cpu").bf16
    assert resolve_precision("bf16", "cpu").fsdp_param_dtype == "bfloat16"
    assert resolve_precision("fp32", "cuda").compute_dtype == torch.float32
    with resolve_precision("bf16", "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(PrecisionError):
        resolve_precision("fp8", "cpu")
