"""`longrl eval`: benchmark a model folder; `longrl eval compare A B`: compare two runs;
`longrl eval list`: the registered benchmarks and the files each expects."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from typer.core import TyperGroup

from pipelines.cli_common import CONFIG_HELP, PRINT_CONFIG_HELP, console, fail, resolve_config

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
# The frame/pixel keys every other command spells under video.*: the same spelling works here.
VIDEO_KEYS = {"video.num_frames": "frames", "video.fps": "fps", "video.min_frames": "min_frames",
              "video.max_frames": "max_frames", "video.min_pixels": "min_pixels",
              "video.max_pixels": "max_pixels", "video.total_pixels": "total_pixels"}


class _EvalGroup(TyperGroup):
    """`longrl eval` is a group (compare, list) whose own callback runs the evaluation: take its
    positional `key=value` overrides out before click looks for a sub-command among them, so
    eval reads settings like every other command (`--config`, then `key.sub=value`)."""

    def parse_args(self, ctx, args):
        value_opts = {o for p in self.params if not getattr(p, "is_flag", False) and not getattr(p, "count", False)
                      for o in getattr(p, "opts", [])}
        kept, found, skip = [], [], False
        for i, arg in enumerate(args):
            if skip:
                kept.append(arg)
                skip = False
            elif arg in self.commands:  # a sub-command: everything after is its own
                kept.extend(args[i:])
                break
            elif arg in value_opts:
                kept.append(arg)
                skip = True
            elif not arg.startswith("-") and OVERRIDE.match(arg):
                found.append(arg)
            else:
                kept.append(arg)
        ctx.meta["eval_overrides"] = found
        return super().parse_args(ctx, kept)


def _eval_key(item: str) -> str:
    key, _, value = item.partition("=")
    return f"{VIDEO_KEYS.get(key, key)}={value}"


app = typer.Typer(
    cls=_EvalGroup,
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def run(
    ctx: typer.Context,
    model: Path = typer.Option(
        None,
        "--model",
        help="Model folder (Hugging Face format, e.g. Qwen2.5-VL-7B-Instruct or a longrl checkpoint).",
    ),
    benchmark: str = typer.Option(
        None, "--benchmark", "--tasks",
        help="Benchmark name(s), comma separated (see `longrl eval list`); --tasks is the same.",
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="Folder with the benchmark's released files, or with one sub-folder per benchmark.",
    ),
    out: Path = typer.Option(
        None, "--out", help="Output folder; an interrupted run resumes from it."
    ),
    frames: int = typer.Option(
        None, "--frames", help="Frames per video, uniformly spaced (default 16)."
    ),
    fps: float = typer.Option(
        None,
        "--fps",
        help="Sample this many frames per second instead (bounded by min/max_frames).",
    ),
    subtitles: bool = typer.Option(
        False,
        "--subtitles",
        help="Show subtitles at the sampled frame times (benchmarks that have them).",
    ),
    limit: float = typer.Option(
        None,
        "--limit",
        help="Only N questions of each benchmark, or a fraction 0 < x < 1 of them: whole 4-try "
        "groups (VNBench), spread over every task of a mean-over-tasks headline (MLVU); "
        "metrics.json says what was evaluated.",
    ),
    shard: str = typer.Option(
        None,
        "--shard",
        help="i/n: answer only shard i of n of each benchmark (one process or GPU per shard, "
        "same --out); the last shard to finish merges and scores, as one run would.",
    ),
    tensor_parallel_size: int = typer.Option(
        None,
        "--tensor-parallel-size",
        help="vLLM engine: GPUs to shard the model over (default 1; vllm_tensor_parallel_size).",
    ),
    engine: str = typer.Option(
        None,
        "--engine",
        help="hf (transformers, CPU/GPU), vllm (GPU) or openai (a model served behind an "
        "OpenAI-compatible endpoint: --model is then the served name, see --base-url) (default hf).",
    ),
    base_url: str = typer.Option(
        None,
        "--base-url",
        help="--engine openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (endpoint.base_url; "
        "key from $OPENAI_API_KEY).",
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Questions per generation batch (default 4)."
    ),
    prompt_style: str = typer.Option(
        None,
        "--prompt-style",
        help="benchmark (official prompts), reasoning (think then answer, as trained), lmms (lmms-eval's exact prompt text) or auto (default: each benchmark's own).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard predictions already in --out instead of resuming."
    ),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    overrides: list[str] = typer.Option(
        None,
        "--set",
        help="Same as a positional key.sub=value override (kept for old scripts), e.g. --set judge.base_url=http://127.0.0.1:8000/v1.",
    ),
) -> None:
    """Evaluate a model on long-video benchmarks; `longrl eval compare A B` compares two runs.

    Answers every question of the chosen benchmarks (Video-MME, LongVideoBench, MLVU, NExT-QA,
    Perception Test, VNBench, ActivityNet-QA, LongVideo-Reason eval, synth) with the model,
    reads the answers with the benchmark's extraction filters, and write OUT/<benchmark>/predictions.jsonl, metrics.json
    (accuracy overall and by category with bootstrap 95 % intervals) and accuracy.png, plus
    OUT/summary.json. Open-ended answers are graded by an LLM judge (--set judge.base_url=...,
    judge.model=...; key from $OPENAI_API_KEY). Frame count / fps / pixel budget are recorded
    with the results. A killed run continues where it stopped when started again.

    Settings as in every command: --config FILE, then positional key.sub=value overrides (e.g.
    max_pixels=50176 judge.model=NAME; video.num_frames / video.max_pixels also work), then the
    options above; --print-config lists the keys."""
    if ctx.invoked_subcommand is not None:
        return
    if frames is not None and fps is not None:
        fail("give --frames or --fps, not both", 2)
    overrides = [_eval_key(o) for o in [*ctx.meta.get("eval_overrides", []), *(overrides or [])]]
    if model is None and config is None and not print_config and not overrides:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    from eval.engines.openai_engine import EndpointUnavailable
    from eval.runner import EvalConfig, SettingsMismatch, evaluate
    from eval.task import TaskError

    values = {
        "model": str(model) if model else None,
        "data": str(data) if data else None,
        "out": str(out) if out else None,
        "benchmarks": [b.strip() for b in benchmark.split(",") if b.strip()] if benchmark else None,
        "frames": frames,
        "fps": fps,
        "limit": limit,
        "shard": shard,
        "vllm_tensor_parallel_size": tensor_parallel_size,
        "engine": engine,
        "endpoint.base_url": base_url,
        "batch_size": batch_size,
        "prompt_style": prompt_style,
        "subtitles": True if subtitles else None,
        "overwrite": True if overwrite else None,
    }
    if fps is not None:
        values["frames"] = 0
    cfg = resolve_config(EvalConfig, config, overrides, print_config, **values)
    try:
        cfg.check()
        if cfg.engine in ("hf", "vllm"):  # a local folder: refuse a broken one before loading weights
            from training.model_folder import validate_model_folder

            validate_model_folder(cfg.model)
        summary = evaluate(cfg, console=console)
    except (ValueError, KeyError, TaskError, SettingsMismatch, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""), 2)
    except EndpointUnavailable as exc:
        fail(f"endpoint unavailable: {exc}", 1)
    from eval.report import console_table

    if not summary["benchmarks"] and summary.get("shards"):  # shard runs, merged later
        console.print(f"shard {cfg.shard}: predictions in {cfg.out}/<benchmark>/shards/")
        return
    console.print(console_table(summary))
    console.print(
        f"results in {cfg.out} (summary.json, <benchmark>/metrics.json, accuracy.png, predictions.jsonl)"
    )
    scored = sum(b["overall"]["scored"] for b in summary["benchmarks"].values())
    if scored == 0:
        fail("no question could be scored (see the error counts above)", 1)


@app.command("compare")
def compare(
    a: Path = typer.Argument(..., help="Run A: an eval --out folder (or one benchmark's folder)."),
    b: Path = typer.Argument(..., help="Run B, on the same questions."),
    out: Path = typer.Option(None, "--out", help="Write the comparison as JSON here."),
    plot: Path = typer.Option(
        None, "--plot", help="Write a PNG: both runs' headline scores per benchmark and A - B with its interval."
    ),
    bootstrap: int = typer.Option(
        2000, "--bootstrap", help="Bootstrap resamples for the difference's interval."
    ),
) -> None:
    """Paired comparison of two runs, question by question: accuracy of each on the shared
    questions, wins (A right, B wrong) and losses, the exact McNemar test, and a bootstrap 95 %
    interval of the accuracy difference A - B (resampling videos)."""
    from rich.table import Table

    from eval.compare import compare_runs

    try:
        result = compare_runs(a, b, n_boot=bootstrap)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    # the runs on their own lines, whole (as a table title, long paths were wrapped or cut)
    console.print(f"A = {a}\nB = {b}", soft_wrap=True, highlight=False)
    table = Table()
    for col in (
        "benchmark",
        "n",
        "acc A",
        "acc B",
        "A - B (95% CI)",
        "wins",
        "losses",
        "p (headline test)",
        "excluded",
    ):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for name, r in result["benchmarks"].items():
        if not r["n"]:
            table.add_row(name, "0", "-", "-", "-", "0", "0", "-", str(r["excluded"]))
            continue
        lo, hi = r["difference_ci95"]
        table.add_row(
            name,
            str(r["n"]),
            f"{100 * r['accuracy_a']:.1f}",
            f"{100 * r['accuracy_b']:.1f}",
            f"{100 * r['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            str(r["wins"]),
            str(r["losses"]),
            f"{r['p_value']:.3g} {r.get('test', '')}".strip(),
            str(r["excluded"]),
        )
    console.print(table)
    if out:
        import json

        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        console.print(f"wrote {out}")
    if plot:
        from eval.report import model_label, plot_comparison

        plot_comparison(result, plot, f"A: {model_label(str(a))}", f"B: {model_label(str(b))}")
        console.print(f"wrote {plot}")


@app.command("list")
def list_benchmarks(
    layout: bool = typer.Option(
        False, "--layout", help="Also show the files each benchmark expects under --data."
    ),
) -> None:
    """The registered benchmarks: answer type, metric, breakdowns (and expected files)."""
    from rich.markup import escape

    from eval.task import list_tasks

    # escape: layouts and descriptions hold brackets ("timestamp": [start_s, end_s]) that rich
    # would otherwise take for markup tags and drop
    for t in list_tasks():
        console.print(
            f"[bold]{escape(t.name)}[/bold]  "
            + escape(
                f"{t.answer_type}, {t.metric}, by {', '.join(t.breakdown_keys) or '-'}"
                f"{', subtitles' if t.supports_subtitles else ''}\n    {t.description}"
            )
        )
        if layout:
            console.print(escape(t.layout.rstrip()))
