"""`longrl synth`: write procedural long videos with ground-truth event logs and questions, or
(`--kind text`) seeded verifiable math/logic word problems, or import a GSM8K/MATH-style file."""

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
    kind: str = typer.Option("video", "--kind", help="video (the synthetic long videos) or text (word problems)."),
    problems: int = typer.Option(None, "--problems", help="--kind text: number of problems [default 200]."),
    from_file: Path = typer.Option(None, "--from", help="--kind text: import this GSM8K/MATH-style .jsonl or "
                                                        ".parquet instead of generating."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " Keys: --print-config lists them."),
) -> None:
    """Render synthetic long videos (shapes that appear, move between named regions, change
    colour, grow large, push each other) with a ground-truth event log per video and verifiable
    questions in four LongVideo-Reason categories. This is the demo/test dataset and the
    hidden-answer benchmark; the layout is described in docs/data.md. With `--kind text`:
    seeded math/logic word problems with exact answers (text-only records, data_gen.synth_text),
    or with `--from FILE` the problems of a GSM8K/MATH-style file (data_gen.import_text)."""
    import time

    if kind == "text":
        video_opts = {"--videos": videos, "--minutes": minutes, "--fps": fps, "--size": size, "--codec": codec}
        if given := [k for k, v in video_opts.items() if v is not None]:
            fail(f"{', '.join(given)}: options of --kind video, not of --kind text", 2)
        _text(out, problems, seed, from_file, config, print_config, overrides)
        return
    if kind != "video":
        fail(f"--kind {kind!r} is not video or text", 2)
    if from_file is not None or problems is not None:
        fail("--from and --problems are options of --kind text", 2)

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


def _text(out: Path, problems: int | None, seed: int | None, from_file: Path | None, config: Path | None,
          print_config: bool, overrides: list[str] | None) -> None:
    """`--kind text`: generate word problems, or import a user's file (bad rows named, kept out)."""
    if from_file is not None:
        from data_gen.import_text import import_text, write_import

        try:
            result = import_text(from_file)
        except ValueError as exc:
            fail(str(exc), 2)
        for err in result.errors:
            console.print(f"[yellow]skipped[/yellow] {err}", soft_wrap=True, highlight=False, markup=False)
        if not result.records:
            fail(f"{from_file}: no usable problems ({len(result.errors)} rows skipped)", 1)
        m = write_import(result, out, from_file)
        console.print(f"imported {m['records']} problems ({m['numeric']} numeric) from {from_file} to {out}; "
                      f"{m['errors']} rows skipped (import_errors.jsonl)")
        return
    from data_gen.synth_text import TextSynthConfig, generate_text

    cfg = resolve_config(TextSynthConfig, config, overrides, print_config, problems=problems, seed=seed)
    try:
        cfg.check()
    except ValueError as exc:
        fail(str(exc), 2)
    m = generate_text(cfg, out)
    c = m["counts"]
    console.print(f"wrote {c['problems']} text problems to {out} (sft {c['split/sft']}, rl {c['split/rl']}, "
                  f"eval {c['split/eval']})")
