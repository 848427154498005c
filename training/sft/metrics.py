"""SFT metrics: a progress bar on the console, OUT/metrics.jsonl, MLflow (when a tracking URI is
set), a loss-curve PNG and a short summary at the end. Only the main worker writes.

One metrics.jsonl line per logged step: {"step", "loss", "lr", "grad_norm", "tokens_per_s",
"frames_per_s", "pad_fraction", "peak_mem_gb", "step_time_s", "examples", "bad_examples", ...};
evaluation lines carry "eval/..." keys. After a resume, lines past the checkpoint's step (written
by the interrupted run after its last checkpoint) are dropped so no step appears twice.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from common.jsonl import read_jsonl

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return []
    return read_jsonl(path, repair=True)  # a torn last line (killed mid-write) is dropped


def truncate_metrics(out_dir: Path, last_step: int) -> None:
    """Keep only lines with step <= last_step (resuming from the checkpoint of last_step)."""
    rows = [r for r in read_metrics(out_dir) if r.get("step", 0) <= last_step]
    (out_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


class SFTMetrics:
    """Writes metrics on the main worker; a no-op elsewhere."""

    def __init__(self, out_dir: Path, run, total_steps: int, first_step: int, active: bool,
                 progress: bool, plain_lines: bool | None = None) -> None:
        self.out_dir, self.run, self.active = out_dir, run, active
        self.total = total_steps
        self._progress = None
        # Where no progress bar is drawn (stdout not a terminal: pod logs, CI, `tee`), one plain
        # line per logged step instead, as TRL/verl print.
        self.plain_lines = (not sys.stdout.isatty()) if plain_lines is None else plain_lines
        if active and progress and not self.plain_lines:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("sft"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._task = self._progress.add_task("sft", total=total_steps, completed=first_step, info="")
            self._progress.start()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        # 7 significant digits: readable, and a 1e-8 learning rate does not round to 0.
        row = {"step": step, **{k: (float(f"{v:.7g}") if isinstance(v, float) else v) for k, v in metrics.items()}}
        with (self.out_dir / METRICS_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)
        if self.plain_lines:
            print(step_line(step, self.total, metrics), flush=True)
        if self._progress is not None:
            if "loss" in metrics:
                info = (f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                        f"{metrics['tokens_per_s']:.0f} tok/s")
                self._progress.update(self._task, completed=step, info=info)
            else:
                self._progress.update(self._task, completed=step)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def step_line(step: int, total: int, metrics: dict[str, Any]) -> str:
    """One plain line for a logged step (training or evaluation metrics)."""
    def g(key: str, fmt: str) -> str:
        v = metrics.get(key)
        return format(v, fmt) if isinstance(v, int | float) and math.isfinite(v) else "-"

    if "loss" not in metrics:  # an evaluation line
        evals = "  ".join(f"{k[5:]} {g(k, '.4f')}" for k in sorted(metrics) if k.startswith("eval/"))
        return f"sft step {step}/{total} | eval {evals}"
    return (f"sft step {step}/{total} | loss {g('loss', '.4f')} | lr {g('lr', '.2e')} | "
            f"grad_norm {g('grad_norm', '.3f')} | {g('tokens_per_s', '.0f')} tokens/s | "
            f"{g('step_time_s', '.2f')} s/step")


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss (and evaluation loss when present) per step, with the learning rate."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train, strict=True), label="train loss", lw=1.2)
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token NLL")
    if all(v > 0 for _, v in train):
        ax.set_yscale("log")
    lrs = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs, strict=True), color="grey", ls=":", label="lr")
        ax2.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.set_title("CoT-SFT")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize(rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """First/last loss (mean of up to 5 steps), mean throughput, peak memory, last eval."""
    train = [r for r in rows if "loss" in r]
    k = max(1, min(5, len(train) // 2)) if train else 1

    def mean(key: str, part: list[dict]) -> float | None:
        vals = [r[key] for r in part if key in r and math.isfinite(r[key])]
        return sum(vals) / len(vals) if vals else None

    out: dict[str, Any] = {
        "steps": train[-1]["step"] if train else 0,
        "loss_first": mean("loss", train[:k]),
        "loss_last": mean("loss", train[-k:]),
        "tokens_per_s": mean("tokens_per_s", train),
        "frames_per_s": mean("frames_per_s", train),
        "pad_fraction": mean("pad_fraction", train),
        "peak_mem_gb": max((r.get("peak_mem_gb", 0.0) for r in train), default=0.0),
    }
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    if evals:
        out["eval"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
    out.update(extra)
    return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    def f(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, int | float) else "-"

    lines = [
        f"steps {summary['steps']}  loss {f(summary['loss_first'], '.4f')} -> {f(summary['loss_last'], '.4f')}",
        f"throughput {f(summary['tokens_per_s'], '.0f')} tokens/s, {f(summary['frames_per_s'], '.1f')} frames/s, "
        f"padding {f(summary['pad_fraction'], '.1%')}, peak memory {f(summary['peak_mem_gb'], '.2f')} GB",
        f"examples used {summary.get('examples_used', '-')}, skipped {summary.get('examples_skipped', '-')}",
    ]
    if "eval" in summary:
        lines.append("eval " + "  ".join(f"{k[5:]} {f(v, '.4f')}" for k, v in summary["eval"].items()))
    lines.append(f"model {summary.get('model', '-')}")
    return lines
