"""`--limit`: which benchmark items an evaluation keeps (split from eval/task.py).

Scoring units stay whole and macro headlines keep every value of their key; see `limit_items`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eval.task import EvalItem, TaskSpec


def check_limit(limit: float) -> None:
    if limit < 0 or (limit >= 1 and limit != int(limit)):
        raise ValueError(
            f"limit {limit:g}: give a whole number of questions (N >= 1), a fraction 0 < x < 1, "
            "or 0 for all"
        )


def limit_target(limit: float, total: int) -> int:
    """Questions --limit asks for: 0 -> all; 0 < x < 1 -> that fraction (rounded up); N -> N."""
    check_limit(limit)
    if not limit:
        return total
    return min(total, math.ceil(limit * total) if limit < 1 else int(limit))


def limit_items(
    task: TaskSpec, items: list[EvalItem], limit: float
) -> tuple[list[EvalItem], dict[str, Any]]:
    """The items --limit keeps, and what was evaluated. Scoring units stay whole: a VNBench
    4-try group is kept with all its tries or not at all (a cut group would score as a full
    question). A macro headline (MLVU's mean over tasks, VNBench's over needle types) gets
    units from every value of its key, taken in turn, so the mean is over all of them, never
    over the first one only. Units are added in file order until at least the target number of
    questions is reached; a larger limit keeps a superset (resuming with it adds questions)."""
    target = limit_target(limit, len(items))
    units: dict[str, list[EvalItem]] = {}
    for it in items:
        units.setdefault(it.group if task.group_all and it.group else it.qid, []).append(it)
    key = task.breakdown_keys[0] if task.headline == "macro" else None
    strata: dict[str, list[list[EvalItem]]] = {}
    for unit in units.values():
        strata.setdefault(unit[0].breakdown.get(key, "") if key else "", []).append(unit)
    taken = dict.fromkeys(strata, 0)
    count, first_round = 0, True
    while count < target or first_round:
        progressed = False
        for s, su in strata.items():
            if count >= target and not first_round:
                break
            if taken[s] < len(su):
                count += len(su[taken[s]])
                taken[s] += 1
                progressed = True
        first_round = False
        if not progressed:
            break
    keep = {it.qid for s, su in strata.items() for unit in su[: taken[s]] for it in unit}
    kept = [it for it in items if it.qid in keep]
    info: dict[str, Any] = {
        "limit": limit or None,
        "questions": len(kept),
        "of_questions": len(items),
        "unit": "group" if task.group_all else "question",
        "units": sum(taken.values()),
        "of_units": len(units),
    }
    if key:
        info["by"] = key
        info["per_value"] = {
            s: {"questions": sum(len(u) for u in su[: taken[s]]), "of": sum(len(u) for u in su)}
            for s, su in strata.items()
        }
    return kept, info
