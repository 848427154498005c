"""Paired comparison of two evaluation runs on the same questions (`longrl eval compare A B`).

Questions are matched by id within each benchmark both runs evaluated. Only units scored in both
runs count (an error or judge failure in either run removes the unit from the pair, and the
number removed is reported). Each benchmark is compared on its own headline (the TaskSpec's
`group_all`, `headline`, `breakdown_keys[0]`, as eval.metrics scores it): units are questions,
or VNBench's groups of tries (a group right only if every try is); the headline is the micro
accuracy over units, tested with the exact McNemar test over units, or the macro mean over the
headline key's values (MLVU's M-Avg, VNBench's needle types), tested with a paired sign-flip
randomization test over videos and given a bootstrap interval resampling videos within each
value. `metric` and `test` say which. Wins (A right, B wrong), losses, ties and McNemar over the
paired units, the unit-level (micro) numbers and, for a macro, each value's comparison are
reported too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import SCORED, sorted_values, to_units

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
    """A run's predictions: a last line cut by a kill is left out with a warning (the run's own
    resume asks it again); a broken line before it is damage, named file:line (was skipped
    silently, so a comparison could run on fewer questions than the run holds)."""
    from common.jsonl import read_jsonl

    return read_jsonl(path)


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


def _registered_spec(task_name: str) -> dict[str, Any] | None:
    from eval.task import get_task

    try:
        task = get_task(task_name)
    except KeyError:
        return None
    macro = task.headline == "macro" and bool(task.breakdown_keys)
    return {
        "unit": "group" if task.group_all else "question",
        "headline": "macro" if macro else "micro",
        "key": task.breakdown_keys[0] if macro else None,
    }


def headline_spec(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    """How the benchmark scores itself: {"unit": "question"|"group", "headline": "micro"|"macro",
    "key": the macro's breakdown key or None}. From the task's registered definition (named by
    metrics.json's `task` or the predictions' `benchmark`), the same TaskSpec fields
    (`group_all`, `headline`, `breakdown_keys[0]`) eval.metrics.compute_metrics scores with;
    for a benchmark not registered here, from what the runs' metrics.json say; micro accuracy
    over questions when nothing says otherwise."""
    recorded = []
    for d in (a_dir, b_dir):
        names = []
        if (d / METRICS).is_file():
            m = json.loads((d / METRICS).read_text())
            names.append(str(m.get("task") or ""))
            key = (m.get("macro") or {}).get("key")
            headline = "macro" if m.get("headline") == "macro" and key else "micro"
            recorded.append({"unit": m.get("unit") or "question", "headline": headline, "key": key})
        names += [str(r.get("benchmark") or "") for r in read_predictions(d / PREDICTIONS)[:1]]
        for name in names:
            spec = _registered_spec(name) if name else None
            if spec is not None:
                return spec
    if len(recorded) == 2 and recorded[0] != recorded[1]:
        raise ValueError(
            f"{a_dir} and {b_dir} score {a_dir.name} differently ({recorded[0]} vs "
            f"{recorded[1]}): not comparable"
        )
    return recorded[0] if recorded else {"unit": "question", "headline": "micro", "key": None}


def _cluster_weights(
    diff: np.ndarray, clusters: list[str], categories: list[str] | None
) -> np.ndarray:
    """w with headline difference = sum(w): per-cluster share of the (micro or macro) mean of
    `diff`. Macro: each category's mean weighs 1/#categories."""
    _, cl = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    if categories is None:
        per_unit = diff / len(diff)
    else:
        _, cat = np.unique(np.asarray(categories, dtype=str), return_inverse=True)
        n_cat = np.bincount(cat).astype(float)
        per_unit = diff / (n_cat[cat] * len(n_cat))
    return np.bincount(cl, weights=per_unit)


def sign_flip_p(
    diff: np.ndarray,
    clusters: list[str],
    categories: list[str] | None = None,
    n_perm: int = 2000,
    seed: int = 0,
) -> float:
    """Two-sided paired randomization test of the (macro) mean difference A - B: under the null
    A and B are exchangeable within each video, so every cluster's sign is flipped at random
    (all of its units together). Exact when at most 16 clusters differ, else `n_perm` draws
    (p = (1 + hits) / (1 + n_perm))."""
    if len(diff) == 0:
        return 1.0
    w = _cluster_weights(diff.astype(float), clusters, categories)
    w = w[np.abs(w) > 1e-15]
    if len(w) == 0:
        return 1.0
    observed = abs(w.sum()) - 1e-12
    if len(w) <= 16:
        signs = 1 - 2 * ((np.arange(2 ** len(w))[:, None] >> np.arange(len(w))) & 1)
        return float(np.mean(np.abs(signs @ w) >= observed))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 500):
        signs = rng.choice([-1.0, 1.0], size=(min(500, n_perm - start), len(w)))
        hits += int((np.abs(signs @ w) >= observed).sum())
    return (1 + hits) / (1 + n_perm)


def stratified_bootstrap_ci(
    diff: np.ndarray,
    clusters: list[str],
    categories: list[str],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the macro difference (mean over categories of each category's
    mean of `diff`), resampling videos with replacement within each category."""
    if len(diff) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    cats = np.asarray(categories, dtype=str)
    clus = np.asarray(clusters, dtype=str)
    total = np.zeros(n_boot)
    names = sorted(set(cats.tolist()))
    for c in names:
        sel = cats == c
        _, cl = np.unique(clus[sel], return_inverse=True)
        sums = np.bincount(cl, weights=diff[sel].astype(float))
        counts = np.bincount(cl).astype(float)
        idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
        total += sums[idx].sum(1) / counts[idx].sum(1)
    means = total / len(names)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _paired_counts(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    return {
        "n": len(a),
        "accuracy_a": float(a.mean()) if len(a) else None,
        "accuracy_b": float(b.mean()) if len(a) else None,
        "difference": float(a.mean() - b.mean()) if len(a) else None,
        "wins": wins,
        "losses": losses,
        "mcnemar_p": mcnemar_exact(wins, losses),
    }


def compare_benchmark(
    a_dir: Path, b_dir: Path, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Paired comparison on the benchmark's own headline metric (see `headline_spec`).

    `accuracy_a`/`accuracy_b`/`difference`/`difference_ci95`/`p_value` are the headline's:
    micro accuracy over the paired units (questions, or VNBench's groups of tries, each group
    one unit) tested with the exact McNemar test over those units; or the macro mean over the
    headline key's values, with a bootstrap interval resampling videos within each value and a
    paired sign-flip randomization test of the macro difference. `metric` says which, `test`
    which test gave `p_value`. `wins`/`losses`/`mcnemar_p` always count the paired units, and
    `micro` keeps the unit-level accuracies; `by_<key>` has the per-value comparison."""
    spec = headline_spec(a_dir, b_dir)
    group_all = spec["unit"] == "group"
    ua = {u.uid: u for u in to_units(read_predictions(a_dir / PREDICTIONS), group_all)}
    ub = {u.uid: u for u in to_units(read_predictions(b_dir / PREDICTIONS), group_all)}
    shared = sorted(set(ua) & set(ub))
    both = [k for k in shared if ua[k].status in SCORED and ub[k].status in SCORED]
    key = spec["key"] if spec["headline"] == "macro" else None
    if key is not None:
        keyed = [k for k in both if ua[k].breakdown.get(key) is not None]
        if not keyed:  # as compute_metrics: no value of the key, the headline is micro
            key = None
    a = np.array([ua[k].correct for k in both], dtype=bool)
    b = np.array([ub[k].correct for k in both], dtype=bool)
    diff = a.astype(float) - b.astype(float)
    clusters = [ua[k].cluster for k in both]
    units = "groups of tries" if group_all else "questions"
    micro = _paired_counts(a, b)
    micro["difference_ci95"] = list(paired_bootstrap_ci(diff, clusters, n_boot, seed))
    result: dict[str, Any] = {
        "unit": "group" if group_all else "question",
        "headline": "macro" if key else "micro",
        "only_in_a": len(set(ua) - set(ub)),
        "only_in_b": len(set(ub) - set(ua)),
        "excluded": len(shared) - len(both),  # error / judge failure in either run
        "n": len(both),
    }
    if key is None:
        result.update(
            metric=f"accuracy over {units}",
            test=f"exact McNemar over {units}",
            accuracy_a=micro["accuracy_a"],
            accuracy_b=micro["accuracy_b"],
            difference=micro["difference"],
            difference_ci95=micro["difference_ci95"] if len(both) else None,
            p_value=micro["mcnemar_p"],
        )
    else:
        cats = [ua[k].breakdown[key] for k in keyed]
        sel = np.array([k in set(keyed) for k in both], dtype=bool)
        ka, kb, kd = a[sel], b[sel], diff[sel]
        kcl = [c for c, s in zip(clusters, sel, strict=True) if s]
        by = {}
        for c in sorted_values(set(cats)):
            m = np.array([x == c for x in cats], dtype=bool)
            by[c] = _paired_counts(ka[m], kb[m])
        acc_a = float(np.mean([v["accuracy_a"] for v in by.values()]))
        acc_b = float(np.mean([v["accuracy_b"] for v in by.values()]))
        result.update(
            metric=f"macro accuracy: mean over {len(by)} {key} values of accuracy over {units}",
            macro_key=key,
            test=f"paired sign-flip randomization test over videos ({units})",
            accuracy_a=acc_a,
            accuracy_b=acc_b,
            difference=acc_a - acc_b,
            difference_ci95=list(stratified_bootstrap_ci(kd, kcl, cats, n_boot, seed)),
            p_value=sign_flip_p(kd, kcl, cats, n_boot, seed),
            n_macro=len(keyed),
        )
        result[f"by_{key}"] = by
    result.update(
        wins=micro["wins"],
        losses=micro["losses"],
        ties_right=int((a & b).sum()),
        ties_wrong=int((~a & ~b).sum()),
        mcnemar_p=micro["mcnemar_p"],
        micro={k: v for k, v in micro.items() if k not in ("n",)} if len(both) else None,
        win_ids=[k for k, x, y in zip(both, a, b, strict=True) if x and not y],
        loss_ids=[k for k, x, y in zip(both, a, b, strict=True) if y and not x],
    )
    return result


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
