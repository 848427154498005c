"""Step metrics: what the rollouts and rewards say, phase timings, and where they go
(metrics.jsonl in the output folder, MLflow when configured, PNG curves at the end)."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from common.jsonl import read_jsonl
from training.grpo.logprobs import Rollout

PHASES = ("encode", "rollout", "reward", "logprob", "update")
METRICS_FILE = "metrics.jsonl"
STEP_FILES = (METRICS_FILE, "samples.jsonl", "errors.jsonl")  # one or more JSON lines per step
# Curves drawn at the end (each only if logged): name -> (keys or key prefix, y-axis label).
# Quantities of different scales get axes of their own (KL beside entropy: twin y-axes).
PLOTS: dict[str, tuple[list[str] | str, str]] = {
    "reward": (["reward/total", "reward/accuracy", "reward/format"], "mean reward per rollout"),
    "accuracy_by_category": ("accuracy/", "accuracy (share of rollouts)"),
    "kl_entropy": (["actor/kl", "actor/entropy"], "KL to reference (nats/token)"),
    "response_length": (["response/length_mean"], "response length (tokens)"),
    "step_time": ([f"time/{p}" for p in PHASES], "seconds per step"),
    "logprob_mismatch": (["rollout/logprob_diff_max"], "max |rollout - trainer| log-prob"),
}
SECOND_AXIS = {"actor/entropy": "entropy (nats/token)"}  # drawn on the right-hand axis
ZERO_ADVANTAGE_STEPS = 3  # consecutive steps without any learning signal before a warning


def warn(message: str) -> None:
    """A one-line warning on stderr (visible on a terminal and in pod logs alike)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def answer_budget_warning(tokenizer, records, max_new_tokens: int, key: str = "rollout.max_new_tokens") -> str | None:
    """Warn when the response budget is shorter than the data's own replies
    (<think>reasoning</think><answer>answer</answer>): rollouts would stop before the answer tag
    and earn neither format nor accuracy reward - GRPO would see reward 0 on every step."""
    from training.prompts import encode_response, format_response

    lengths = [len(encode_response(tokenizer, format_response(r.reasoning or ".", r.answer)))
               for r in list(records)[:64]]
    if not lengths:
        return None
    minimal = len(encode_response(tokenizer, format_response(".", "A")))
    typical = int(statistics.median(lengths))
    if max_new_tokens < minimal:
        return (f"{key}={max_new_tokens} cannot reach the answer tag: even '<think>.</think><answer>A</answer>' "
                f"takes {minimal} tokens, so every reward is 0; raise it to at least {typical} "
                "(the data's median reply)")
    if max_new_tokens < typical:
        return (f"{key}={max_new_tokens} is below the data's median reply ({typical} tokens of "
                "<think>reasoning</think><answer>answer</answer>): most rollouts will stop before the "
                f"answer tag and earn no reward; raise it to at least {typical}")
    return None


def step_line(step: int, total: int | None, metrics: dict[str, float]) -> str:
    """One plain line per step (pod logs, CI, `tee`: no progress bar there), as TRL/verl print."""
    def g(key: str, fmt: str) -> str:
        v = metrics.get(key)
        return format(v, fmt) if isinstance(v, int | float) and math.isfinite(v) else "-"

    of = f"/{total}" if total else ""
    return (f"grpo step {step}{of} | reward {g('reward/total', '.3f')} (accuracy {g('reward/accuracy', '.3f')}, "
            f"format {g('reward/format', '.3f')}) | advantage {g('advantage/abs_mean', '.3f')} | "
            f"kl {g('actor/kl', '.4f')} | entropy {g('actor/entropy', '.3f')} | "
            f"length {g('response/length_mean', '.1f')} | {g('time/step', '.1f')} s/step")


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{p}": self.seconds.get(p, 0.0) for p in PHASES}


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def rollout_metrics(rows: Sequence[Rollout], rollout_lps: Sequence[torch.Tensor],
                    trainer_lps: Sequence[torch.Tensor] | None) -> dict[str, float]:
    """Reward (total, parts), accuracy by category, lengths, rollout-vs-trainer log-prob gap."""
    out: dict[str, float] = {}
    totals = [r.reward.total for r in rows if r.reward]
    out["reward/total"] = _mean(totals)
    out["reward/std"] = float(torch.tensor(totals).std()) if len(totals) > 1 else 0.0
    parts: dict[str, list[float]] = defaultdict(list)
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if not r.reward:
            continue
        for k, v in r.reward.parts.items():
            parts[k].append(v)
        if "accuracy" in r.reward.parts:
            by_cat[r.record.category].append(r.reward.parts["accuracy"])
        for k, v in r.extras.items():
            parts[k].append(v)
    out.update({f"reward/{k}": _mean(v) for k, v in parts.items()})
    out.update({f"accuracy/{k}": _mean(v) for k, v in sorted(by_cat.items())})
    out["reward/errors"] = float(sum(len(r.reward.errors) for r in rows if r.reward))
    lengths = [len(r.response.token_ids) for r in rows]
    out["response/length_mean"] = _mean(lengths)
    out["response/length_max"] = float(max(lengths, default=0))
    out["response/truncated_share"] = _mean([0.0 if r.response.finished else 1.0 for r in rows])
    diffs = [(torch.tensor(r.response.logprobs) - t).abs() for r, t in
             zip(rows, trainer_lps or [None] * len(rows), strict=True)
             if t is not None and len(r.response.logprobs)]  # None: no trainer pass to compare
    if diffs:
        flat = torch.cat(diffs)
        out["rollout/logprob_diff_max"] = float(flat.max())
        out["rollout/logprob_diff_mean"] = float(flat.mean())
    out["rows"] = float(len(rows))
    return out


class MetricsLogger:
    """One JSON line per step in out/metrics.jsonl (rewritten up to the resumed step on resume,
    so nothing is lost or duplicated), the same numbers to MLflow, curves at the end."""

    def __init__(self, out_dir: str | Path, run=None, resume_step: int = 0, total_steps: int | None = None,
                 plain_lines: bool | None = None) -> None:
        self.out = Path(out_dir)
        self.path = self.out / METRICS_FILE
        self.run = run
        self.total = total_steps
        # Plain per-step lines where no progress bar is drawn (stdout is not a terminal).
        self.plain_lines = (not sys.stdout.isatty()) if plain_lines is None else plain_lines
        self.flat_steps = 0
        for name in STEP_FILES:  # lines of steps after the checkpoint are redone, not repeated
            path = self.out / name
            if path.is_file():
                kept = [r for r in read_jsonl(path, repair=True) if r.get("step", 0) <= resume_step]
                path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log_metrics({k.replace("&", "and"): v for k, v in metrics.items()
                                  if math.isfinite(v)}, step=step)
        if self.plain_lines:
            print(step_line(step, self.total, metrics), flush=True)
        self._watch_signal(metrics)

    def _watch_signal(self, metrics: dict[str, float]) -> None:
        """Warn once per stretch of ZERO_ADVANTAGE_STEPS steps in which every group's rollouts
        got the same reward: GRPO's advantages are all 0, the policy learns nothing."""
        flat = metrics.get("skipped", 0.0) > 0 or abs(metrics.get("advantage/abs_mean", 1.0)) < 1e-9
        self.flat_steps = self.flat_steps + 1 if flat else 0
        if self.flat_steps == ZERO_ADVANTAGE_STEPS:
            warn(f"every group had zero advantage (all rollouts of a prompt scored the same) for "
                 f"{ZERO_ADVANTAGE_STEPS} steps in a row: nothing is being learned; check samples.jsonl, "
                 "raise rollout.max_new_tokens if replies stop before <answer>, raise rollout.temperature "
                 "or rollout.group_size for diversity, or set algorithm.dynamic_sampling=true")

    def history(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return read_jsonl(self.path)  # a torn last line is left out with a warning, as on resume

    def plot(self) -> list[Path]:
        """PNG curves in out/plots/ (matplotlib, Agg); logged to MLflow when a run is active."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hist = self.history()
        if not hist:
            return []
        (self.out / "plots").mkdir(exist_ok=True)
        written = []
        for name, (keys, ylabel) in PLOTS.items():
            if isinstance(keys, str):
                keys = sorted({k for row in hist for k in row if k.startswith(keys)})
            keys = [k for k in keys if any(row.get(k) is not None for row in hist)]
            if not keys:
                continue
            fig = plot_figure(hist, keys, ylabel, name.replace("_", " "))
            fig.tight_layout()
            path = self.out / "plots" / f"{name}.png"
            fig.savefig(path, dpi=100)
            if self.run is not None:
                self.run.log_figure(fig, f"plots/{name}.png")
            plt.close(fig)
            written.append(path)
        return written


def plot_figure(hist: list[dict], keys: list[str], ylabel: str, title: str):
    """One curve figure: every axis labelled, whole-number step ticks, and keys of another
    scale (SECOND_AXIS, e.g. entropy beside KL) on a right-hand axis of their own."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = []
    for k in keys:
        axis = ax
        if k in SECOND_AXIS and k != keys[0]:
            axis = ax.twinx()
            axis.set_ylabel(SECOND_AXIS[k])
        pts = [(row["step"], row[k]) for row in hist if row.get(k) is not None]
        lines += axis.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k,
                           color=f"C{len(lines)}")
    ax.set_xlabel("step")
    ax.set_ylabel(SECOND_AXIS.get(keys[0], ylabel))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_title(title)
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
    ax.grid(alpha=0.3)
    return fig
