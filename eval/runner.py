"""`longrl eval`: run benchmarks on a model folder, resumably.

For each benchmark: load its questions (eval.tasks), skip those already in
OUT/<benchmark>/predictions.jsonl, answer the rest in batches (decode video -> prompt -> engine
-> extraction filters -> score), append each batch's predictions as it completes, then judge
open-ended answers (LLM judge, cached; failures recorded and retried on the next run), and write
metrics.json and accuracy.png. OUT/summary.json and summary.png cover all benchmarks; an MLflow
run is logged when MLFLOW_TRACKING_URI is set.

A run folder remembers the settings that change answers (model, engine, frames/fps, pixel budget,
prompt style, subtitles, decoding) in run_info.json; resuming with different settings is refused
(use --overwrite or another --out) so one predictions file never mixes two configurations.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.answers import numbers_match
from eval import report
from eval.config import (  # noqa: F401 - EvalConfig and SettingsMismatch are part of this API
    PREDICTIONS,
    REASONING_MAX_NEW_TOKENS,
    EvalConfig,
    SettingsMismatch,
    benchmark_dir_name,
    check_resume,
    resolved_dtype,
    run_settings,
)
from eval.engines import Engine, Generation, Prompt
from eval.filters import FilterContext, apply_chain
from eval.metrics import compute_metrics
from eval.store import PredictionStore
from eval.task import EvalItem, TaskError, TaskSpec, get_task, limit_items, subtitle_text
from training.grpo.judge import PROMPT_VERSION as JUDGE_PROMPT_VERSION
from training.grpo.judge import JudgeItem, LLMJudge

NO_JUDGE = (
    "no LLM judge configured for open-ended answers: --set judge.base_url=http://HOST/v1 "
    "--set judge.model=NAME (key from $OPENAI_API_KEY)"
)


def score(task: TaskSpec, item: EvalItem, gen: Generation, cfg: EvalConfig) -> dict[str, Any]:
    ext = apply_chain(task.filter_chain(item.answer_type), gen.text, FilterContext(item.options))
    rec: dict[str, Any] = {
        "raw_output": gen.text,
        "extracted": ext.answer,
        "extraction_rule": ext.rule,
        "output_tokens": gen.num_tokens,
        "finished": gen.finished,
    }
    if not ext.answered:
        rec.update(status="unanswered", correct=False)
    elif item.answer_type == "multiple_choice":
        rec.update(status="answered", correct=ext.answer == item.answer)
    elif item.answer_type == "numeric":
        rec.update(
            status="answered",
            correct=numbers_match(ext.answer, item.answer, rel_tol=cfg.numeric_rel_tol),
        )
    else:  # open-ended: the judge decides after generation
        rec.update(status="answered", correct=None, judge=None)
    return rec


def base_record(task: TaskSpec, item: EvalItem) -> dict[str, Any]:
    return {
        "qid": item.qid,
        "benchmark": task.name,
        "video": item.video_path,
        "answer_type": item.answer_type,
        "answer": item.answer,
        "options": item.options,
        "breakdown": item.breakdown,
        "cluster": item.cluster,
        "group": item.group,
    }


def error_record(task: TaskSpec, item: EvalItem, error: str) -> dict[str, Any]:
    return {
        **base_record(task, item),
        "status": "error",
        "correct": None,
        "error": error,
        "prompt": None,
        "raw_output": None,
        "extracted": None,
    }


def answer_batch(
    engine: Engine,
    task: TaskSpec,
    batch: list[EvalItem],
    cfg: EvalConfig,
    style: str,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Predictions for one batch: video errors are recorded per question; a generation failure
    is retried question by question so one bad item cannot take its batch down."""
    from data_gen.video_io import VideoError

    records, prepared = [], []
    show_subs = bool(cfg.subtitles and task.supports_subtitles)
    for item in batch:
        try:
            if show_subs:  # read here, not at load: a malformed file fails only its questions
                item.subtitle_lines()
            prepared.append(engine.prepare(item))
        except TaskError as exc:
            records.append(error_record(task, item, f"subtitles: {exc}"))
        except (VideoError, OSError) as exc:
            records.append(error_record(task, item, f"video: {exc}"))
    system = _system_prompt(style)
    subs = [
        subtitle_text(p.item.subtitle_lines(), p.timestamps_s) if show_subs else None
        for p in prepared
    ]
    prompts = [
        Prompt(task.render_prompt(p.item, sub[0] if sub else None, style), system)
        for p, sub in zip(prepared, subs, strict=True)
    ]
    groups: list[list[int]] = [list(range(len(prepared)))] if prepared else []
    while groups:
        idx = groups.pop(0)
        t0 = time.perf_counter()
        try:
            gens = engine.generate(
                [prepared[i] for i in idx],
                [prompts[i] for i in idx],
                max_new_tokens,
                cfg.temperature,
            )
        except Exception as exc:  # noqa: BLE001 - recorded per question below, never swallowed silently
            if len(idx) > 1:
                groups = [[i] for i in idx] + groups
                continue
            p = prepared[idx[0]]
            records.append(error_record(task, p.item, f"generation: {type(exc).__name__}: {exc}"))
            continue
        share = (time.perf_counter() - t0) / len(idx)
        for i, gen in zip(idx, gens, strict=True):
            p = prepared[i]
            records.append(
                {
                    **base_record(task, p.item),
                    "prompt": prompts[i].user,
                    "system": prompts[i].system,
                    **score(task, p.item, gen, cfg),
                    "latency_s": round(p.decode_s + share, 4),
                    "decode_s": round(p.decode_s, 4),
                    "batch_size": len(idx),
                    "num_frames": len(p.timestamps_s),
                    "num_video_tokens": p.num_video_tokens,
                    **({"subtitles": subs[i][1]} if subs[i] else {}),
                }
            )
    return records


def _system_prompt(style: str) -> str | None:
    if style != "reasoning":
        return None
    from training.prompts import SYSTEM_PROMPT

    return SYSTEM_PROMPT


def judges_used(records: list[dict[str, Any]]) -> dict[str, int]:
    """{"model (prompt version)": open-ended verdicts it gave} - which judge graded this run."""
    out: Counter[str] = Counter()
    for r in records:
        j = r.get("judge") or {}
        if r["answer_type"] == "open_ended" and j.get("model") and j.get("verdict") is not None:
            out[f"{j['model']} ({j.get('prompt_version', JUDGE_PROMPT_VERSION)})"] += 1
    return dict(out)


def judge_open_ended(
    records: list[dict[str, Any]], items: dict[str, EvalItem], cfg: EvalConfig, bench_dir: Path
) -> int:
    """Ask the judge about every open-ended answer without a verdict (new, failed before, or
    ungraded because no judge was configured then). With no judge configured they are
    "ungraded" (or "judge_error" with `cfg.require_judge`). Returns the number of records
    changed; records are updated in place."""
    jcfg = dataclasses.replace(
        cfg.judge, cache_path=cfg.judge.cache_path or str(bench_dir / "judge_cache.jsonl")
    )
    configured = bool(jcfg.base_url and jcfg.model)

    def stale(r: dict[str, Any]) -> bool:  # graded by another judge (model or prompt) than now
        j = r.get("judge") or {}
        return (
            configured
            and r.get("correct") is not None
            and (j.get("model"), j.get("prompt_version", JUDGE_PROMPT_VERSION))
            != (jcfg.model, JUDGE_PROMPT_VERSION)
        )

    todo = [
        r
        for r in records
        if r["answer_type"] == "open_ended"
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
            "prompt_version": JUDGE_PROMPT_VERSION,
            "verdict": v.correct,
            "error": v.error,
            "cached": v.cached,
            "reply": v.reply,
        }
        r["status"], r["correct"] = (
            ("answered", v.correct) if v.correct is not None else ("judge_error", None)
        )
    return len(todo)


def evaluate_benchmark(
    cfg: EvalConfig, name: str, get_engine: Callable[[], Engine], out: Path, progress: Any = None
) -> dict[str, Any]:
    task = get_task(name)
    style = task.native_style if cfg.prompt_style == "auto" else cfg.prompt_style
    max_new = cfg.max_new_tokens or (
        max(task.max_new_tokens, REASONING_MAX_NEW_TOKENS)
        if style == "reasoning"
        else task.max_new_tokens
    )
    data = Path(cfg.data).resolve()
    items, evaluated = limit_items(task, task.load(data), cfg.limit)
    coverage = task.coverage(data)
    bench_name = benchmark_dir_name(task, cfg.subtitles)
    bench_dir = out / bench_name
    settings = run_settings(cfg, task, style, max_new)
    check_resume(bench_dir, settings, cfg.overwrite)
    store = PredictionStore(bench_dir / PREDICTIONS)
    done = store.load()
    todo = [it for it in items if it.qid not in done]
    resumed = len(items) - len(todo)
    store.append(error_record(task, it, it.error) for it in todo if it.error)
    runnable = [it for it in todo if not it.error]
    t0 = time.perf_counter()
    bar = (
        progress.add_task(bench_name, total=len(items), completed=len(items) - len(runnable))
        if progress
        else None
    )
    engine = get_engine() if runnable else None
    for start in range(0, len(runnable), cfg.batch_size):
        batch = runnable[start : start + cfg.batch_size]
        store.append(answer_batch(engine, task, batch, cfg, style, max_new))
        if progress:
            progress.advance(bar, len(batch))
    gen_s = time.perf_counter() - t0
    by_qid = {it.qid: it for it in items}
    records = [r for q, r in store.load().items() if q in by_qid]
    if judge_open_ended(records, by_qid, cfg, bench_dir):
        all_recs = store.load()
        all_recs.update({r["qid"]: r for r in records})
        store.rewrite(all_recs.values())
    metrics = compute_metrics(
        records, task.breakdown_keys, task.group_all, task.headline, cfg.bootstrap, cfg.seed
    )
    errors = [r for r in records if r["status"] in ("error", "judge_error")]
    metrics.update(
        benchmark=bench_name,
        task=task.name,
        description=task.description,
        settings=settings,
        engine=engine.describe() if engine else None,
        questions=len(items),
        evaluated=evaluated,
        coverage=coverage,
        notes=report.evaluation_notes(evaluated, coverage),
        resumed=resumed,
        generated=len(runnable),
        generation_seconds=round(gen_s, 3),
        judges=judges_used(records),
        extraction_rules=dict(
            Counter(r.get("extraction_rule") for r in records if r.get("extraction_rule"))
        ),
        error_examples=[
            {"qid": r["qid"], "error": r.get("error") or (r.get("judge") or {}).get("error")}
            for r in errors[:20]
        ],
    )
    report.write_json(bench_dir / "metrics.json", metrics)
    report.plot_benchmark(metrics, bench_dir / report.PLOT)
    return metrics


def engine_options(cfg: EvalConfig) -> dict[str, Any]:
    """make_engine's keyword options from the config (dtype resolved, as run_info.json has it)."""
    opts: dict[str, Any] = {"dtype": resolved_dtype(cfg)}
    if cfg.engine == "vllm":
        opts.update(
            max_model_len=cfg.vllm_max_model_len,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        )
    else:
        opts["device"] = cfg.device
    return opts


def evaluate(cfg: EvalConfig, console: Any = None) -> dict[str, Any]:
    """Run every benchmark of `cfg`; returns the summary (also written to OUT/summary.json)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from common import tracking
    from common.config import save_config
    from eval.engines import make_engine

    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out, "eval_config.yaml")
    holder: dict[str, Engine] = {}

    def get_engine() -> Engine:
        if "engine" not in holder:
            holder["engine"] = make_engine(
                cfg.engine, cfg.model, cfg.sampling(), seed=cfg.seed, **engine_options(cfg)
            )
        return holder["engine"]

    per_benchmark: dict[str, dict[str, Any]] = {}
    with tracking.stage_run("eval", config=cfg, tags={"eval.model": cfg.model}) as run:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(
            *columns, console=console, transient=False, disable=console is None
        ) as progress:
            for name in cfg.benchmarks:
                m = evaluate_benchmark(cfg, name, get_engine, out, progress)
                per_benchmark[m["benchmark"]] = m
                for note in m["notes"] if console is not None else ():
                    console.print(f"{m['benchmark']}: {note}", markup=False)
        summary = {
            "model": cfg.model,
            "benchmarks": {
                k: {
                    "score": m["score"],
                    "score_ci95": m["score_ci95"],
                    "headline": m["headline"],
                    "overall": m["overall"],
                    **({"notes": m["notes"]} if m["notes"] else {}),
                }
                for k, m in per_benchmark.items()
            },
        }
        report.write_summary(out, summary)  # merged with benchmarks of earlier commands into OUT
        report.log_to_mlflow(run, out, summary, per_benchmark)
    return summary
