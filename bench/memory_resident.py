"""Parameters resident per rank with and without the rollout replica (issue 12.1), for
`bench/bench_memory.py --resident MODEL:DEPTH:RANKS` (split from bench_memory.py): the real
ParallelGRPOTrainer.build_models at the real widths, depth cut, on gloo ranks."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from bench_memory import _status_mib, build_model
from memory_model import GIB, MIB, SHAPES

from training.sequence_parallel.local_group import run_local_group
from training.sequence_parallel.mesh import ParallelConfig, init_parallel


def _resident_rank(rank: int, world: int, folder: str, replica: bool) -> dict:
    """ParallelGRPOTrainer.build_models as the trainer runs it (dp = world): parameter bytes this
    rank holds (its FSDP shards of policy and reference, plus the replica when there is one) and
    its resident memory after the build above the start."""
    from torch.distributed.tensor import DTensor

    from training.grpo.config import GRPOConfig
    from training.precision import resolve_precision
    from training.sequence_parallel.grpo_trainer import ParallelGRPOTrainer

    t = ParallelGRPOTrainer.__new__(ParallelGRPOTrainer)  # only the model set-up, not the data
    t.cfg = t.global_cfg = GRPOConfig(parallel=ParallelConfig(rollout_replica=replica))
    t.parallel, t.device, t.model_dir = t.cfg.parallel, torch.device("cpu"), Path(folder)
    t.par = init_parallel(1, t.device)
    t.precision = resolve_precision(t.cfg.precision, t.device)
    gc.collect()
    base = _status_mib("VmRSS")
    t.build_models(None)
    with torch.no_grad():  # touch every parameter: a safetensors mmap is resident only once read
        for m in (t.model, t.ref, t.replica):
            for p in m.parameters() if m is not None else ():
                (p.to_local() if isinstance(p, DTensor) else p).sum()
    gc.collect()

    def nbytes(m) -> int:
        if m is None:
            return 0
        return sum(
            (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size()
            for p in m.parameters()
        )

    return {
        "replica": replica,
        "policy_mib": nbytes(t.model) / MIB,
        "reference_mib": nbytes(t.ref) / MIB,
        "replica_mib": nbytes(t.replica) / MIB,
        "rss_mib": _status_mib("VmRSS") - base,
        "peak_mib": _status_mib("VmHWM") - base,
    }


def resident(name: str, depth: int, world: int, tokenizer, folder: Path) -> None:
    """Parameters resident per rank with and without the rollout replica (issue 12.1), measured
    at the real widths with the depth cut, and the same terms at full depth from the count."""
    model = build_model(SHAPES[name], depth, tokenizer)
    if SHAPES[name]["tied"]:  # build_model fills both tensors; the folder must hold one
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    gc.collect()
    print(
        f"== {name} depth {depth}: {total / 1e6:.1f} M parameters (fp32 {total * 4 / MIB:.0f} MiB), {world} ranks"
    )
    for replica in (True, False):
        r = run_local_group(_resident_rank, world, str(folder), replica)[0]
        print(
            f"   rollout_replica={str(replica).lower():<5}: policy {r['policy_mib']:7.0f} + reference "
            f"{r['reference_mib']:7.0f} + replica {r['replica_mib']:7.0f} MiB of parameters per rank; "
            f"RSS after the build +{r['rss_mib']:.0f} MiB (peak +{r['peak_mib']:.0f})",
            flush=True,
        )
    full = SHAPES[name]["params"]
    print(
        f"   full depth ({full / 1e9:.2f} B parameters), {world * 4} GPUs, bf16 compute: the replica is "
        f"{2 * full / GIB:.1f} GiB per GPU (bf16), policy + reference shards {20 * full / (world * 4) / GIB:.1f} "
        f"GiB with optimizer state"
    )
