"""What a resumed `longrl eval` checks and re-does before answering: every benchmark's resume
guard (settings must match), the prompt settings the guard compares, transient errors dropped
to be asked again, and open-ended answers re-graded under the exact rule. Split from
eval.runner, which re-exports these names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.short_answers import exact_open, short_answer_matches
from eval.config import (
    REASONING_MAX_NEW_TOKENS,
    EvalConfig,
    benchmark_dir_name,
    check_resume,
    run_settings,
)
from eval.store import PredictionStore
from eval.task import EvalItem, TaskSpec, get_task


def drop_retryable(store: PredictionStore) -> int:
    """Remove the error records of requests that failed transiently (`retry`), so this run
    asks those questions again; returns how many were removed."""
    recs = store.load()
    keep = [r for r in recs.values() if not (r.get("status") == "error" and r.get("retry"))]
    if len(keep) < len(recs):
        store.rewrite(keep)
    return len(recs) - len(keep)


def grade_exact_open(records: list[dict[str, Any]], items: dict[str, EvalItem]) -> int:
    """Grade the open-ended answers of ground-truth records exactly (common.short_answers),
    also in predictions resumed from before that rule; returns the records changed."""
    changed = 0
    for r in records:
        item = items.get(r["qid"])
        if (
            r["answer_type"] != "open_ended"
            or r.get("grader") == "exact"
            or item is None
            or r["status"] not in ("answered", "ungraded", "judge_error")
            or not exact_open(str(item.meta.get("source", "")))
        ):
            continue
        r.update(
            status="answered",
            correct=short_answer_matches(r.get("extracted"), item.answer),
            grader="exact",
            judge=None,
        )
        changed += 1
    return changed


def prompt_settings(cfg: EvalConfig, task: TaskSpec) -> tuple[str, int]:
    """(prompt style, max new tokens) a benchmark runs with."""
    style = task.native_style if cfg.prompt_style == "auto" else cfg.prompt_style
    max_new = cfg.max_new_tokens or (
        max(task.max_new_tokens, REASONING_MAX_NEW_TOKENS)
        if style == "reasoning"
        else task.max_new_tokens
    )
    return style, max_new


def check_all_resumable(cfg: EvalConfig, out: Path) -> None:
    """Every benchmark's resume guard, before anything is written (issue 16.11)."""
    for name in cfg.benchmarks:
        task = get_task(name)
        bench_dir = out / benchmark_dir_name(task, cfg.subtitles)
        check_resume(
            bench_dir,
            run_settings(cfg, task, *prompt_settings(cfg, task)),
            cfg.overwrite,
            record=False,
        )
