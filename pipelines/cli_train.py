"""`longrl train ...`: the training stages (CoT-SFT here; GRPO beside it)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import typer

from pipelines.cli_common import (
    CONFIG_HELP,
    OVERRIDES_HELP,
    PRINT_CONFIG_HELP,
    console,
    fail,
    resolve_config,
    resolve_model,
)

INTERRUPTED = ("interrupted (Ctrl-C): complete checkpoints in {out} are kept; the same command "
               "resumes from the newest")


def gpu_problem(wants_gpu: bool, key: str, cpu_fix: str) -> str | None:
    """GPUs asked for where there are none: refuse at once (Ray would wait for them forever).
    On a Ray cluster (RAY_ADDRESS) the GPUs are the cluster's, not this machine's."""
    if not wants_gpu or os.environ.get("RAY_ADDRESS"):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return (f"{key} asks for GPUs but this machine has none (torch.cuda.is_available() is False); "
            f"train on CPU with {cpu_fix}, or run on a GPU machine or a Ray cluster with GPUs (RAY_ADDRESS)")


@contextmanager
def _stage_errors(out: Path):
    """One line for the failures a user can fix, and for Ctrl-C."""
    from common.config import ConfigError
    from common.jsonl import JsonlError
    from training.model_io import ModelFolderError
    from training.records import DataError
    from training.sft.data import SFTDataError

    try:
        yield
    except KeyboardInterrupt:
        fail(INTERRUPTED.format(out=out), 130)
    except (DataError, SFTDataError, ModelFolderError, ConfigError, JsonlError, FileNotFoundError) as exc:
        fail(str(exc))
    except Exception as exc:  # a failure inside Ray workers arrives wrapped; show its message
        if type(exc).__name__ in ("TrainingFailedError", "WorkerGroupError"):
            fail(f"training failed: {getattr(exc, '__cause__', None) or exc}")
        raise

app = typer.Typer(help="Training stages: CoT-SFT and GRPO on long videos.", no_args_is_help=True)


@app.command("sft")
def sft(
    model: Path = typer.Option(..., "--model", help="Model folder to start from (Hugging Face format: a Qwen2.5-VL-*-Instruct folder, a checkpoint, or `longrl model tiny`)."),
    data: Path = typer.Option(..., "--data", help="Dataset: a `longrl data build` folder (its `sft` split), a datasets/parquet/jsonl split, or a `longrl synth` folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (model/, checkpoints/, metrics.jsonl, loss_curve.png, skipped.jsonl, summary.json). A run started again on it resumes from its newest checkpoint."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " Keys: --print-config lists them, e.g. max_steps=100 lr=0.00001 video.num_frames=32 num_workers=8 launcher=ray."),
) -> None:
    """CoT-SFT: teach the model to answer video questions as <think>reasoning</think><answer>answer</answer>.

    The records' reasoning and answer are the target (loss on those tokens only), with 3-D M-RoPE positions and length-grouped batches.

    One CPU/GPU process by default; num_workers=N runs N Ray Train workers with FSDP2 (gloo on CPU, NCCL on GPUs).

    Examples with a missing or undecodable video, too many tokens, or an empty answer/reasoning are listed in OUT/skipped.jsonl and left out; more than max_bad_fraction of them fails the run.

    Checkpoints and OUT/model are plain Hugging Face folders (from_pretrained and vLLM load them as they are). Metrics go to the console, OUT/metrics.jsonl and MLflow when MLFLOW_TRACKING_URI is set. See docs/sft.md."""
    from training.sft.config import SFTConfig

    cfg = resolve_config(SFTConfig, config, overrides, print_config)
    try:
        cfg.check()
    except ValueError as exc:
        fail(str(exc), 2)
    problem = gpu_problem(cfg.use_gpu is True, "use_gpu=true", "use_gpu=auto (or false)")
    if problem:
        fail(problem, 2)
    model = resolve_model(model)
    from training.model_folder import validate_model_folder
    from training.sft.metrics import summary_lines
    from training.sft.run import train_sft

    with _stage_errors(out):
        validate_model_folder(model)  # before any worker starts: folder, family, weights, tokenizer
        summary = train_sft(cfg, model, data, out)
    for line in summary_lines(summary):
        console.print(line)
    console.print(f"[green]done[/green]: {out}")


@app.command("grpo")
def grpo(
    model: Path = typer.Option(..., "--model", help="Policy to start from (Hugging Face folder: usually the CoT-SFT output, a Qwen2.5-VL-*-Instruct folder, or `longrl model tiny`). It is also the frozen reference for the KL term."),
    data: Path = typer.Option(..., "--data", help="RL records: a `longrl data build` folder (its `rl` split), a datasets/parquet/jsonl split, or a `longrl synth` folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (model/, checkpoints/, metrics.jsonl, samples.jsonl, errors.jsonl, plots/, summary.json). Started again on the same folder, a run resumes from its newest checkpoint."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " Keys: --print-config lists them, e.g. max_steps=200 rollout.group_size=8 algorithm.clip_high=0.28 video.num_frames=64 reward.judge.base_url=http://127.0.0.1:8000/v1 reward.judge.model=NAME num_workers=8 parallel.sp_size=4 device=cuda."),
) -> None:
    """GRPO on long videos (MR-SP stage 1): each step samples prompts, encodes each video once, draws G rollouts per prompt, scores them (0.9 accuracy + 0.1 format by default; open-ended answers through an LLM judge), and updates the policy with PPO-clip and a KL penalty to the reference.

    Video embeddings: video.embeddings=online (vision tower once per video per step), offline (read `longrl embed-cache build` output, zero vision calls) or pixels (re-encode every pass, for comparison).

    Rollouts: rollout.engine=hf (everywhere) or vllm (GPU). Per-step metrics (reward and parts, accuracy by category, KL, clip fraction, entropy, lengths, vision_calls_per_video, time per phase, tokens/s) go to the console, OUT/metrics.jsonl, MLflow when MLFLOW_TRACKING_URI is set, and PNG curves. The judge's API key is read from the environment variable named by reward.judge.api_key_env. See docs/grpo.md.

    Workers (as `longrl train sft`): one process by default; num_workers=N runs N Ray Train workers (launcher=auto|ray; a local Ray, or the cluster at RAY_ADDRESS) as a data-parallel x sequence-parallel job with FSDP2 - parallel.sp_size=S ranks split each sequence (Ulysses), dp = N / S replicas split the prompts. launcher=local: inside processes started by `torchrun --nproc-per-node N`. device=cuda: GPU workers (NCCL), device=cpu: CPU workers (gloo); auto decides where the command runs. Needs video.freeze_vision=true and online/offline embeddings; impossible combinations are refused before anything starts. Same output folder. See docs/sequence_parallel.md."""
    from training.grpo.config import GRPOConfig
    from training.grpo.run import check_launch

    cfg = resolve_config(GRPOConfig, config, overrides, print_config)
    try:
        check_launch(cfg)  # config and workers, before any process or model is started
    except ValueError as exc:
        fail(str(exc), 2)
    problem = gpu_problem(cfg.wants_gpu(), f"device={cfg.device}", "device=cpu (or auto)")
    if problem:
        fail(problem, 2)
    model = resolve_model(model)
    from training.grpo.embed_cache import EmbedCacheError
    from training.grpo.run import train_grpo
    from training.model_folder import validate_model_folder

    with _stage_errors(out):
        validate_model_folder(model)  # before Ray or torchrun workers start
        try:
            summary = train_grpo(cfg, model, data, out)
        except EmbedCacheError as exc:
            fail(str(exc))
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return
    first, last = summary["reward_first"], summary["reward_last"]
    if first is not None:
        console.print(f"reward {first:.3f} (first steps) -> {last:.3f} (last steps) over {summary['steps']} steps")
    layout = summary.get("parallel")
    if layout:
        console.print(f"{cfg.num_workers} workers: dp {layout['dp']} x sp {layout['sp']}")
    console.print(f"[green]done[/green]: {summary['model']}")
