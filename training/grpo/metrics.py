"""Step metrics: what the rollouts and rewards say, phase timings, and where they go
(metrics.jsonl in the output folder, MLflow when configured, PNG curves at the end)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from training.grpo.logprobs import Rollout

PHASES = ("encode", "rollout", "reward", "logprob", "update")
METRICS_FILE = "metrics.jsonl"
STEP_FILES = (METRICS_FILE, "samples.jsonl", "errors.jsonl")  # one or more JSON lines per step
# Curves drawn at the end (each only if logged).
PLOTS = {
    "reward": ["reward/total", "reward/accuracy", "reward/format"],
    "accuracy_by_category": "accuracy/",
    "kl_entropy": ["actor/kl", "actor/entropy"],
    "response_length": ["response/length_mean"],
    "step_time": [f"time/{p}" for p in PHASES],
    "logprob_mismatch": ["rollout/logprob_diff_max"],
}


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
                    trainer_lps: Sequence[torch.Tensor]) -> dict[str, float]:
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
             zip(rows, trainer_lps, strict=True) if len(r.response.logprobs)]
    if diffs:
        flat = torch.cat(diffs)
        out["rollout/logprob_diff_max"] = float(flat.max())
        out["rollout/logprob_diff_mean"] = float(flat.mean())
    out["rows"] = float(len(rows))
    return out


class MetricsLogger:
    """One JSON line per step in out/metrics.jsonl (rewritten up to the resumed step on resume,
    so nothing is lost or duplicated), the same numbers to MLflow, curves at the end."""

    def __init__(self, out_dir: str | Path, run=None, resume_step: int = 0) -> None:
        self.out = Path(out_dir)
        self.path = self.out / METRICS_FILE
        self.run = run
        for name in STEP_FILES:  # lines of steps after the checkpoint are redone, not repeated
            path = self.out / name
            if path.is_file():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= resume_step]
                path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log_metrics({k.replace("&", "and"): v for k, v in metrics.items()
                                  if math.isfinite(v)}, step=step)

    def history(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

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
        for name, keys in PLOTS.items():
            if isinstance(keys, str):
                keys = sorted({k for row in hist for k in row if k.startswith(keys)})
            keys = [k for k in keys if any(row.get(k) is not None for row in hist)]
            if not keys:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for k in keys:
                pts = [(row["step"], row[k]) for row in hist if row.get(k) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
            ax.set_xlabel("step")
            ax.set_title(name.replace("_", " "))
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = self.out / "plots" / f"{name}.png"
            fig.savefig(path, dpi=100)
            if self.run is not None:
                self.run.log_figure(fig, f"plots/{name}.png")
            plt.close(fig)
            written.append(path)
        return written
