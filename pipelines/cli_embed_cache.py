"""`longrl embed-cache build`: video embeddings computed once, offline, for GRPO with a frozen
vision tower (video.embeddings=offline, video.embed_cache=DIR)."""

from __future__ import annotations

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

app = typer.Typer(help="Offline video-embedding caches for GRPO (zero vision-tower calls during RL).",
                  no_args_is_help=True)


@app.command("build")
def build(
    model: Path = typer.Option(..., "--model", help="Model folder whose (frozen) vision tower encodes the videos: the GRPO starting policy."),
    data: Path = typer.Option(..., "--data", help="Records whose videos to encode (same forms as `longrl train grpo --data`)."),
    out: Path = typer.Option(..., "--out", help="Cache folder (index.json, emb/<key>.safetensors). Building again on it adds missing videos only."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP + " The GRPO config: its data.* and video.* decide which frames are encoded."),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " Keys: those of `longrl train grpo` (--print-config), e.g. video.num_frames=64."),
) -> None:
    """Encode every unique video span of the records once with the model's vision tower and save the embeddings, keyed by file digest, clip span, frame sampling and pixel layout. Training with video.embeddings=offline checks the vision tower's fingerprint and each entry's shape; a video whose content or sampling changed finds no entry and is reported, never replaced. Unreadable videos are listed and skipped."""
    from training.grpo.config import GRPOConfig

    cfg = resolve_config(GRPOConfig, config, overrides, print_config)
    from training.sft.config import video_sampling_problems

    problems = video_sampling_problems(cfg.video, "video.")
    if problems:
        fail("; ".join(problems), 2)
    model = resolve_model(model)
    from training.grpo.embed_cache import EmbedCacheError, build_cache
    from training.model_folder import validate_model_folder
    from training.model_io import ModelFolderError, load_model
    from training.records import DataError, load_records
    from training.video_inputs import VisionSpec

    try:
        validate_model_folder(model)
        recs = load_records(data, cfg.data.split, cfg.data.video_root, cfg.data.answer_types,
                            cfg.data.max_records).records
        device = cfg.device if cfg.device != "auto" else ("cuda" if __import__("torch").cuda.is_available() else "cpu")
        policy = load_model(model, cfg.dtype, device)
        summary = build_cache(policy, recs, out, cfg.video.sampling, VisionSpec.from_model_dir(model),
                              str(model), progress=cfg.progress,
                              use_record_frames=cfg.video.use_record_frames)
    except (DataError, EmbedCacheError, ModelFolderError, FileNotFoundError) as exc:
        fail(str(exc))
    for vid, reason in summary["failed"].items():
        console.print(f"[yellow]skipped[/yellow] {vid}: {reason}")
    console.print(f"{summary['videos']} videos: {summary['written']} encoded, {summary['kept']} already cached, "
                  f"{len(summary['failed'])} failed -> {out}")
