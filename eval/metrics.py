"""Accuracy with honest uncertainty: overall, by each breakdown key, bootstrap 95 % intervals.

Each prediction has a status:
- "answered": an answer was extracted; `correct` is True/False;
- "unanswered": no answer could be read from the output - scored wrong, and counted;
- "error": the question could not be run (undecodable or missing video) - excluded, counted;
- "judge_error": the LLM judge gave no verdict (open-ended) - excluded, counted;
- "ungraded": open-ended, and no judge was configured (by design: the run has no grader for
  it, nothing failed) - excluded, counted apart from the errors.
`accuracy` is correct / (answered + unanswered), i.e. over the graded questions;
`accuracy_answered` leaves the unanswered out. `errors` + `judge_errors` are the failures.

Questions about the same video are correlated, so intervals come from a cluster bootstrap that
resamples videos (the `cluster` field), not questions. Tasks that score groups (VNBench: a
question is right only if all its shuffled tries are) are first reduced to one unit per group.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCORED = ("answered", "unanswered")
FAILED = ("error", "judge_error")
EXCLUDED = (*FAILED, "ungraded")
STATUSES = SCORED + EXCLUDED


@dataclass
class Unit:
    """One scored unit (a question, or a VNBench group of tries)."""

    uid: str
    status: str
    correct: bool
    cluster: str
    breakdown: dict[str, str] = field(default_factory=dict)


def to_units(preds: Sequence[dict[str, Any]], group_all: bool = False) -> list[Unit]:
    """Predictions -> units. With `group_all`, a group is an error if any try is, right only if
    every try is right, ungraded if any try is, and unanswered if any try is (and none errored)."""
    for p in preds:
        if p["status"] not in STATUSES:
            raise ValueError(f"prediction {p.get('qid')}: status {p['status']!r} not in {STATUSES}")
    if not group_all:
        return [
            Unit(
                p["qid"],
                p["status"],
                bool(p.get("correct")),
                p.get("cluster") or p["qid"],
                dict(p.get("breakdown") or {}),
            )
            for p in preds
        ]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in preds:
        groups[p.get("group") or p["qid"]].append(p)
    units = []
    for gid, members in groups.items():
        statuses = {m["status"] for m in members}
        status = next(
            (s for s in ("error", "judge_error", "ungraded", "unanswered") if s in statuses),
            "answered",
        )
        correct = status == "answered" and all(bool(m.get("correct")) for m in members)
        units.append(
            Unit(
                gid,
                status,
                correct,
                members[0].get("cluster") or gid,
                dict(members[0].get("breakdown") or {}),
            )
        )
    return units


def bootstrap_ci(
    correct: np.ndarray,
    clusters: Sequence[str],
    categories: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of accuracy under a cluster bootstrap. With `categories`, of the macro
    accuracy (mean over categories present in each resample)."""
    if len(correct) == 0 or n_boot <= 0:
        return float("nan"), float("nan")
    _, cl = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    cats = np.zeros(len(correct), dtype=np.int64)
    if categories is not None:
        _, cats = np.unique(np.asarray(categories, dtype=object).astype(str), return_inverse=True)
    n_cl, n_cat = int(cl.max()) + 1, int(cats.max()) + 1
    hits = np.zeros((n_cl, n_cat))
    counts = np.zeros((n_cl, n_cat))
    np.add.at(hits, (cl, cats), np.asarray(correct, dtype=float))
    np.add.at(counts, (cl, cats), 1.0)
    rng = np.random.default_rng(seed)
    stats = []
    chunk = max(1, min(n_boot, 2_000_000 // max(1, n_cl)))  # bound memory for large benchmarks
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n_cl, size=(min(chunk, n_boot - start), n_cl))
        h, n = hits[idx].sum(axis=1), counts[idx].sum(axis=1)  # [B, n_cat]
        if categories is None:
            stats.append(h[:, 0] / n[:, 0])
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                stats.append(np.nanmean(np.where(n > 0, h / n, np.nan), axis=1))
    values = np.concatenate(stats)
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(units: Sequence[Unit], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Counts, accuracy and its clustered bootstrap interval for a set of units."""
    scored = [u for u in units if u.status in SCORED]
    answered = [u for u in scored if u.status == "answered"]
    correct = np.array([u.correct for u in scored], dtype=bool)
    out: dict[str, Any] = {
        "n": len(units),
        "scored": len(scored),
        "correct": int(correct.sum()),
        "unanswered": sum(u.status == "unanswered" for u in units),
        "errors": sum(u.status == "error" for u in units),
        "judge_errors": sum(u.status == "judge_error" for u in units),
        "ungraded": sum(u.status == "ungraded" for u in units),
        "accuracy": float(correct.mean()) if len(scored) else None,
        "accuracy_answered": (sum(u.correct for u in answered) / len(answered))
        if answered
        else None,
        "ci95": None,
    }
    if scored:
        out["ci95"] = list(
            bootstrap_ci(correct, [u.cluster for u in scored], n_boot=n_boot, seed=seed)
        )
    return out


def compute_metrics(
    preds: Sequence[dict[str, Any]],
    breakdown_keys: Sequence[str] = (),
    group_all: bool = False,
    headline: str = "micro",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """metrics.json's numbers: overall, per breakdown value, and the headline score (micro
    accuracy, or the macro mean over the first breakdown key's values)."""
    units = to_units(preds, group_all)
    result: dict[str, Any] = {
        "unit": "group" if group_all else "question",
        "overall": summarize(units, n_boot, seed),
    }
    breakdown: dict[str, dict[str, Any]] = {}
    for key in breakdown_keys:
        # numeric values in numeric order (duration 15, 60, 600, 3600 - not as text)
        values = sorted_values(
            {u.breakdown.get(key) for u in units if u.breakdown.get(key) is not None}
        )
        if values:
            breakdown[key] = {
                v: summarize([u for u in units if u.breakdown.get(key) == v], n_boot, seed)
                for v in values
            }
    result["breakdown"] = breakdown
    score, ci = result["overall"]["accuracy"], result["overall"]["ci95"]
    if headline == "macro" and breakdown_keys and breakdown_keys[0] in breakdown:
        key = breakdown_keys[0]
        accs = [s["accuracy"] for s in breakdown[key].values() if s["accuracy"] is not None]
        scored = [u for u in units if u.status in SCORED and u.breakdown.get(key) is not None]
        score = float(np.mean(accs)) if accs else None
        ci = (
            list(
                bootstrap_ci(
                    np.array([u.correct for u in scored]),
                    [u.cluster for u in scored],
                    [u.breakdown[key] for u in scored],
                    n_boot,
                    seed,
                )
            )
            if scored
            else None
        )
        result["macro"] = {"key": key, "accuracy": score, "ci95": ci}
    result["headline"] = headline
    result["score"] = score
    result["score_ci95"] = ci
    return result


def sorted_values(values: Iterable[str]) -> list[str]:
    """Breakdown values in reading order: numerically when every one is a number (duration
    groups "15", "60", "600", "3600"), as text otherwise."""
    values = list(values)

    def number(v: str) -> float | None:
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) else None

    nums = [number(v) for v in values]
    if values and all(n is not None for n in nums):
        return [v for _, v in sorted(zip(nums, values, strict=True), key=lambda t: (t[0], t[1]))]
    return sorted(values, key=str)
