"""Entry points: `train_sft` (what the CLI and the KFP component call) and `sft_worker` (the
function every training process runs; Ray Train ships it to its workers by module path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config import from_dict, save_config, to_dict
from training.sft.config import SFTConfig

SUMMARY_FILE = "summary.json"


def sft_worker(config: dict[str, Any]) -> None:
    """One training process: join the process group, train, leave."""
    import torch
    from transformers.utils import logging as hf_logging

    from training.distributed import init_distributed, teardown
    from training.sft.trainer import SFTTrainer

    hf_logging.disable_progress_bar()  # per-file load/save bars would bury the training progress
    cfg = from_dict(SFTConfig, config["cfg"])
    ctx = init_distributed(use_gpu=cfg.wants_gpu())
    if ctx.device.type == "cpu":
        # A worker uses the CPUs it was given; more threads than cores (several workers, or a
        # busy host) slow CPU training down many times over.
        torch.set_num_threads(cfg.cpus_per_worker)
    try:
        SFTTrainer(cfg, config["model_dir"], config["data_dir"], config["out_dir"], ctx).run()
    finally:
        teardown(ctx)


def _announce_resume(cfg: SFTConfig, out: Path) -> None:
    """The resume rule (common.config.check_resume), then "resuming from step N" on the console."""
    import sys

    from common.config import check_resume
    from training.checkpoint import PREFIX, latest_checkpoint

    found = latest_checkpoint(out) if cfg.resume == "auto" else (
        None if cfg.resume == "never" else Path(cfg.resume))
    if found is None:
        return
    if cfg.resume == "auto":
        check_resume(cfg, out, "resume=never")
    step = found.name[len(PREFIX):]
    print(f"resuming from step {int(step) if step.isdigit() else '?'} ({found})", file=sys.stderr, flush=True)


def train_sft(cfg: SFTConfig, model_dir: str | Path, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Run CoT-SFT with `cfg.num_workers` processes; returns the summary (also in OUT/summary.json).

    Outputs in OUT: model/ (the final Hugging Face folder), checkpoints/step-*/ (when
    save_every > 0), metrics.jsonl, loss_curve.png, skipped.jsonl, scan.json, summary.json,
    config.yaml.
    """
    from training.distributed import launch

    cfg.check()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    _announce_resume(cfg, out)
    save_config(cfg, out)
    payload = {"cfg": to_dict(cfg), "model_dir": str(Path(model_dir).resolve()),
               "data_dir": str(Path(data_dir).resolve()), "out_dir": str(out)}
    launch(sft_worker, payload, num_workers=cfg.num_workers, use_gpu=cfg.wants_gpu(), launcher=cfg.launcher,
           storage_dir=out / "ray", name="sft", cpus_per_worker=cfg.cpus_per_worker)
    return json.loads((out / SUMMARY_FILE).read_text())
