"""Grading open-ended answers in `longrl eval`: which judge prompt a benchmark is graded with,
asking the judge (training.grpo.judge.LLMJudge: cached, concurrent, retried), recording what
each verdict means, and the judge-protocol metrics.

Each verdict records the judge model and the prompt's name and version. A re-run re-grades,
without regenerating, every open-ended answer graded by another model *or another prompt
version* than the one configured now; the same judge and prompt ask nothing.

`judge.prompt` (EvalConfig.judge.prompt): `auto` (default) grades each benchmark by its own
protocol - ActivityNet-QA by lmms-eval's / Video-ChatGPT's "meaningful match" yes/no + 0-5
score (`activitynet_qa_lmms`), every other benchmark by longrl's `default` yes/no prompt; a
prompt name forces that prompt on every benchmark.

Judge failures (no reply, or a reply the prompt cannot read) are `judge_error`: excluded from
our accuracy and counted. lmms-eval instead counts a failed review as "no" with score 0, so
`judge_metrics` reports yes-rate and mean score under both conventions.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from eval.task import EvalItem
from training.grpo.judge import JudgeConfig, JudgeItem, LLMJudge
from training.grpo.judge_prompts import AUTO, DEFAULT, JudgePrompt, get_prompt

NO_JUDGE = (
    "no LLM judge configured for open-ended answers: --set judge.base_url=http://HOST/v1 "
    "--set judge.model=NAME (key from $OPENAI_API_KEY)"
)
# The published grading protocol of a benchmark, used when judge.prompt is "auto".
TASK_PROMPTS = {"activitynetqa": "activitynet_qa_lmms"}


def prompt_for(judge: JudgeConfig, task_name: str = "") -> JudgePrompt:
    """The prompt that grades `task_name` under `judge.prompt` (raises ValueError, naming the
    known prompts, for an unknown name)."""
    name = (judge.prompt or AUTO).strip().lower()
    if name == AUTO:
        name = TASK_PROMPTS.get(task_name, DEFAULT.name)
    return get_prompt(name)


def judge_config(judge: JudgeConfig, task_name: str, bench_dir: Path) -> JudgeConfig:
    """`judge` with its prompt resolved for the task and the cache in the benchmark's folder
    (unless a cache path is set)."""
    return dataclasses.replace(
        judge,
        prompt=prompt_for(judge, task_name).name,
        cache_path=judge.cache_path or str(bench_dir / "judge_cache.jsonl"),
    )


def _version(j: dict[str, Any]) -> str:
    return j.get("prompt_version") or DEFAULT.version  # verdicts from before prompts were named


def judges_used(records: list[dict[str, Any]]) -> dict[str, int]:
    """{"model (prompt version)": open-ended verdicts it gave} - which judge graded this run."""
    out: Counter[str] = Counter()
    for r in records:
        j = r.get("judge") or {}
        if r["answer_type"] == "open_ended" and j.get("model") and j.get("verdict") is not None:
            out[f"{j['model']} ({_version(j)})"] += 1
    return dict(out)


def judge_open_ended(
    records: list[dict[str, Any]],
    items: dict[str, EvalItem],
    cfg: Any,
    bench_dir: Path,
    task_name: str = "",
) -> int:
    """Ask the judge about every open-ended answer without a verdict (new, failed before,
    ungraded because no judge was configured then) or graded by another judge model or prompt
    version. With no judge configured they are "ungraded" (or "judge_error" with
    `cfg.require_judge`). `cfg` is an EvalConfig. Returns the number of records changed;
    records are updated in place."""
    jcfg = judge_config(cfg.judge, task_name, bench_dir)
    prompt = get_prompt(jcfg.prompt)
    configured = bool(jcfg.base_url and jcfg.model)

    def stale(r: dict[str, Any]) -> bool:
        j = r.get("judge") or {}
        return (
            configured
            and r.get("correct") is not None
            and (j.get("model"), _version(j)) != (jcfg.model, prompt.version)
        )

    todo = [
        r
        for r in records
        if r["answer_type"] == "open_ended"
        and r.get("grader") != "exact"  # graded exactly against a ground-truth name, no judge
        and r["status"] in ("answered", "judge_error", "ungraded")
        and (r.get("correct") is None or stale(r))
    ]
    if not todo:
        return 0
    if not configured:
        changed = 0
        for r in todo:
            error = NO_JUDGE if cfg.require_judge else None
            judge = {"model": None, "verdict": None, "error": error, "cached": False,
                     "reply": None, "note": NO_JUDGE}  # fmt: skip
            status = "judge_error" if error else "ungraded"
            changed += (r["status"], r.get("judge")) != (status, judge)
            r["judge"], r["status"], r["correct"] = judge, status, None
        return changed  # unchanged records need no rewrite of predictions.jsonl
    verdicts = LLMJudge(jcfg).judge(
        [JudgeItem(items[r["qid"]].question, r["answer"], r["extracted"]) for r in todo]
    )
    for r, v in zip(todo, verdicts, strict=True):
        r["judge"] = {
            "model": jcfg.model,
            "prompt": prompt.name,
            "prompt_version": prompt.version,
            "verdict": v.correct,
            "score": v.score,
            "error": v.error,
            "cached": v.cached,
            "reply": v.reply,
        }
        r["status"], r["correct"] = (
            ("answered", v.correct) if v.correct is not None else ("judge_error", None)
        )
    return len(todo)


def _rates(yes: int, scores: list[float] | None, n: int) -> dict[str, Any]:
    return {
        "n": n,
        "yes_rate": yes / n if n else None,
        "mean_score": (sum(scores) / n if n else None) if scores is not None else None,
    }


def judge_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Judge-protocol metrics of the open-ended answers: yes-rate (the judge's "accuracy") and,
    when the prompt gives one, the mean 0-5 score, under both conventions for judge failures:
    `excluding_failures` (ours: a failure leaves the denominator) and `failures_as_no`
    (lmms-eval: a failure is "no" with score 0). Unanswered outputs (nothing to send to the
    judge) are "no" with score 0 in both. Records without a judge (ungraded) and video errors
    (and answers graded exactly, `grader: exact`) are left out of both. Empty when the run has no
    open-ended answer."""
    open_ended = [
        r for r in records if r.get("answer_type") == "open_ended" and r.get("grader") != "exact"
    ]
    judged = [r for r in open_ended if r["status"] == "answered" and r.get("correct") is not None]
    failed = sum(r["status"] == "judge_error" for r in open_ended)
    unanswered = sum(r["status"] == "unanswered" for r in open_ended)
    if not judged and not failed and not unanswered:
        return {}
    yes = sum(bool(r["correct"]) for r in judged)
    raw = [(r.get("judge") or {}).get("score") for r in judged]
    # A mean score exists only if every verdict has one (one scoring prompt graded them all).
    scores = [float(s) for s in raw] if raw and all(s is not None for s in raw) else None
    versions = Counter(
        f"{(r.get('judge') or {}).get('prompt') or DEFAULT.name} ({_version(r.get('judge') or {})})"
        for r in judged
    )
    scored = len(judged) + unanswered
    return {
        "prompts": dict(versions),
        "judged": len(judged),
        "judge_failures": failed,
        "unanswered": unanswered,
        "excluding_failures": _rates(yes, scores, scored),
        "failures_as_no": _rates(yes, scores, scored + failed),
        "note": "excluding_failures: judge failures left out (longrl); failures_as_no: a failure "
        "counts as 'no' with score 0 (lmms-eval). Unanswered outputs are 'no'/0 in both.",
    }
