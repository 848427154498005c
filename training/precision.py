"""Mixed precision that learns: fp32 master weights, bf16 compute.

Why not bf16 weights: bf16 has 8 bits of mantissa, so a weight of magnitude 0.02 moves only in
steps of ~8e-5; AdamW's first update at the reference lr 1e-6 is ~1e-6 per weight and rounds
away. Measured on one GRPO step (lr 1e-6): bf16 weights changed 0.5 % of the LLM's weights
(mean change 9.8e-9), fp32 weights 78.7 %. So every launcher keeps the trained weights (and
AdamW's state) in fp32 and computes in bf16:
- one process: `torch.autocast(bf16)` around the step (matmuls in bf16, reductions and
  log-softmax in fp32);
- FSDP2 (DP, DP x SP): `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (the
  sharded fp32 parameters are cast for compute, gradients reduced in fp32) plus the same
  autocast for what runs outside the sharded modules.
fp32 stays the exact path used by the CPU equivalence tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp32")


class PrecisionError(ValueError):
    """A precision setting that cannot train (named keys and the fix in the message)."""


@dataclass(frozen=True)
class Precision:
    """The resolved compute precision of a run."""

    compute_dtype: torch.dtype  # torch.float32 or torch.bfloat16
    device_type: str

    @property
    def bf16(self) -> bool:
        return self.compute_dtype == torch.bfloat16

    @property
    def fsdp_param_dtype(self) -> str:
        """ParallelConfig.param_dtype for FSDP2's MixedPrecisionPolicy."""
        return "bfloat16" if self.bf16 else "float32"

    def autocast(self):
        """The compute context of a step: bf16 autocast, or nothing in fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """"auto": bf16 compute on CUDA, fp32 elsewhere; "bf16"; "fp32"."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    bf16 = precision == "bf16" or (precision == "auto" and device_type == "cuda")
    return Precision(torch.bfloat16 if bf16 else torch.float32, device_type)


def check_trainable_weights_dtype(dtype: str, key: str = "dtype") -> None:
    """Refuse a config that would step bf16/fp16 parameters directly."""
    if dtype != "float32":
        raise PrecisionError(
            f"{key}={dtype} would keep the trained weights in {dtype}, where an lr 1e-6 update rounds "
            f"away (0.5 % of weights change vs 78.7 % in fp32); keep {key}=float32 and set "
            f"precision=bf16 (fp32 master weights, bf16 compute; the default on GPU with precision=auto)"
        )
