"""`longrl synth`: write procedural long videos with ground-truth event logs and questions."""

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
)


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"--size {text!r} is not WIDTHxHEIGHT (e.g. 320x180)", 2)
    return w, h


def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (manifest.json, videos, event logs, questions.jsonl)."),
    videos: int = typer.Option(None, "--videos", help="Number of videos [default 4]."),
    minutes: float = typer.Option(None, "--minutes", help="Length of each video in minutes [default 2]."),
    fps: float = typer.Option(None, "--fps", help="Frame rate of the files [default 8]."),
    size: str = typer.Option(None, "--size", help="Frame size WIDTHxHEIGHT, even sides [default 320x180]."),
    seed: int = typer.Option(None, "--seed", help="Random seed; the same seed writes the same data [default 0]."),
    codec: str = typer.Option(None, "--codec", help="mp4v (opencv, fastest) or h264 (PyAV libx264) [default mp4v]."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " Keys: --print-config lists them."),
) -> None:
    """Render synthetic long videos (shapes that appear, move between named regions, change
    colour, grow large, push each other) with a ground-truth event log per video and verifiable
    questions in four LongVideo-Reason categories. This is the demo/test dataset and the
    hidden-answer benchmark; the layout is described in docs/data.md."""
    import time

    from data_gen.synth import SynthConfig, generate

    wh = _size(size)
    cfg = resolve_config(
        SynthConfig, config, overrides, print_config, videos=videos, minutes=minutes, fps=fps, seed=seed,
        codec=codec, width=wh[0] if wh else None, height=wh[1] if wh else None,
    )
    try:
        cfg.check()
    except ValueError as exc:
        fail(str(exc), 2)
    t0 = time.perf_counter()
    manifest = generate(cfg, out)
    n_q = sum(v["questions"] for v in manifest["videos"])
    total_min = cfg.videos * cfg.minutes
    console.print(
        f"wrote {cfg.videos} videos ({total_min:.1f} min of video), {n_q} questions to {out} "
        f"in {time.perf_counter() - t0:.1f} s; min_frames to see every event: "
        f"{max(v['min_frames'] for v in manifest['videos'])}"
    )
