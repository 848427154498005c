"""Paired comparison of two evaluation runs on the same questions (`longrl eval compare A B`).

Questions are matched by id within each benchmark both runs evaluated. Only units scored in both
runs count (an error or judge failure in either run removes the question from the pair, and the
number removed is reported). For each benchmark: A's and B's accuracy on the shared units, wins
(A right, B wrong), losses, ties, the exact McNemar test on the discordant pairs, and a paired
cluster bootstrap interval of the accuracy difference A - B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import SCORED, to_units

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of wins vs losses at p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_bootstrap_ci(
    diff: np.ndarray, clusters: list[str], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of mean(diff) resampling clusters (videos) with replacement."""
    if len(diff) == 0:
        return float("nan"), float("nan")
    _, cl = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    sums = np.bincount(cl, weights=diff.astype(float))
    counts = np.bincount(cl).astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def read_predictions(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the run's own resume drops it too
    return rows


def benchmark_dirs(run: Path) -> dict[str, Path]:
    """{benchmark run name: folder} for a run folder (--out) or one benchmark's folder."""
    if (run / PREDICTIONS).is_file():
        return {run.name: run}
    found = {p.parent.name: p.parent for p in sorted(run.glob(f"*/{PREDICTIONS}"))}
    if not found:
        raise FileNotFoundError(
            f"{run}: no {PREDICTIONS} here or in its sub-folders (not an eval output)"
        )
    return found


def compare_benchmark(
    a_dir: Path, b_dir: Path, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    group_all = False
    for d in (a_dir, b_dir):
        if (d / METRICS).is_file():
            group_all = group_all or json.loads((d / METRICS).read_text()).get("unit") == "group"
    ua = {u.uid: u for u in to_units(read_predictions(a_dir / PREDICTIONS), group_all)}
    ub = {u.uid: u for u in to_units(read_predictions(b_dir / PREDICTIONS), group_all)}
    shared = sorted(set(ua) & set(ub))
    both = [k for k in shared if ua[k].status in SCORED and ub[k].status in SCORED]
    a = np.array([ua[k].correct for k in both], dtype=bool)
    b = np.array([ub[k].correct for k in both], dtype=bool)
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    lo, hi = paired_bootstrap_ci(
        a.astype(float) - b.astype(float), [ua[k].cluster for k in both], n_boot, seed
    )
    return {
        "unit": "group" if group_all else "question",
        "only_in_a": len(set(ua) - set(ub)),
        "only_in_b": len(set(ub) - set(ua)),
        "excluded": len(shared) - len(both),  # error / judge failure in either run
        "n": len(both),
        "accuracy_a": float(a.mean()) if len(both) else None,
        "accuracy_b": float(b.mean()) if len(both) else None,
        "difference": float(a.mean() - b.mean()) if len(both) else None,
        "difference_ci95": [lo, hi] if len(both) else None,
        "wins": wins,
        "losses": losses,
        "ties_right": int((a & b).sum()),
        "ties_wrong": int((~a & ~b).sum()),
        "mcnemar_p": mcnemar_exact(wins, losses),
        "win_ids": [k for k, x, y in zip(both, a, b, strict=True) if x and not y],
        "loss_ids": [k for k, x, y in zip(both, a, b, strict=True) if y and not x],
    }


def compare_runs(a: str | Path, b: str | Path, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Compare every benchmark present in both runs; raises if they share none."""
    da, db = benchmark_dirs(Path(a)), benchmark_dirs(Path(b))
    common = sorted(set(da) & set(db))
    if not common:
        if len(da) == 1 and len(db) == 1:  # two single-benchmark folders with different names
            common_pairs = {next(iter(da)): (next(iter(da.values())), next(iter(db.values())))}
        else:
            raise ValueError(f"runs share no benchmark: A has {sorted(da)}, B has {sorted(db)}")
    else:
        common_pairs = {k: (da[k], db[k]) for k in common}
    return {
        "a": str(a),
        "b": str(b),
        "benchmarks": {
            k: compare_benchmark(x, y, n_boot, seed) for k, (x, y) in common_pairs.items()
        },
    }
