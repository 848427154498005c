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
from common.short_answers import exact_open, short_answer_matches
from eval import lmms_output, report, shards
from eval.config import (  # noqa: F401 - EvalConfig and SettingsMismatch are part of this API
    PREDICTIONS,
    REASONING_MAX_NEW_TOKENS,
    EvalConfig,
    SettingsMismatch,
    benchmark_dir_name,
    check_resume,
    resolved_dtype,
    run_settings,
    served_entry,
)
from eval.engines import Engine, Generation, Prompt
from eval.engines.openai_engine import EndpointUnavailable
from eval.filters import FilterContext, apply_chain
from eval.judge import NO_JUDGE, judge_metrics, judge_open_ended, judges_used  # noqa: F401
from eval.metrics import compute_metrics
from eval.store import PredictionStore
from eval.task import (
    EvalItem,
    TaskError,
    TaskSpec,
    get_task,
    grade_answer,
    limit_items,
    subtitle_text,
    system_for,
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
    elif task.grader:  # the task's own exact grader (GSM8K, MATH: eval.filters.GRADERS)
        rec.update(status="answered", correct=grade_answer(task, ext.answer, item), grader="exact",
                   grade_rule=task.grader)
    elif item.answer_type == "multiple_choice":
        rec.update(status="answered", correct=ext.answer == item.answer)
    elif item.answer_type == "numeric":
        rec.update(
            status="answered",
            correct=numbers_match(ext.answer, item.answer, rel_tol=cfg.numeric_rel_tol),
        )
    elif exact_open(str(item.meta.get("source", ""))):  # a ground-truth name: graded exactly
        rec.update(status="answered", correct=short_answer_matches(ext.answer, item.answer),
                   grader="exact")
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
        Prompt(task.render_prompt(p.item, sub[0] if sub else None, style), system_for(system, p.item))
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
                **generation_options(cfg),
            )
        except EndpointUnavailable:
            raise  # the server is down: stop, keep what is written, resume later
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
            if gen.error:  # this question's request failed for good (openai engine)
                rec = error_record(task, p.item, f"generation: {gen.error}")
                records.append({**rec, "prompt": prompts[i].user, **(
                    {"retry": True} if gen.retryable else {})})
                continue
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


def generation_options(cfg: EvalConfig) -> dict[str, Any]:
    """Decoding options beyond temperature, passed only when set (engines default to off)."""
    opts: dict[str, Any] = {}
    if cfg.top_p != 1.0:
        opts["top_p"] = cfg.top_p
    if cfg.num_beams != 1:
        opts["num_beams"] = cfg.num_beams
    return opts


def drop_retryable(store: PredictionStore) -> int:
    """Remove the error records of requests that failed transiently (`retry`), so this run
    asks those questions again; returns how many were removed."""
    recs = store.load()
    keep = [r for r in recs.values() if not (r.get("status") == "error" and r.get("retry"))]
    if len(keep) < len(recs):
        store.rewrite(keep)
    return len(recs) - len(keep)


def _system_prompt(style: str) -> str | None:
    if style != "reasoning":
        return None
    from training.prompts import SYSTEM_PROMPT

    return SYSTEM_PROMPT


def grade_exact_open(records: list[dict[str, Any]], items: dict[str, EvalItem]) -> int:
    """Grade the open-ended answers of ground-truth records exactly (common.short_answers),
    also in predictions resumed from before that rule; returns the records changed."""
    changed = 0
    for r in records:
        item = items.get(r["qid"])
        if (r["answer_type"] != "open_ended" or r.get("grader") == "exact" or item is None
                or r["status"] not in ("answered", "ungraded", "judge_error")
                or not exact_open(str(item.meta.get("source", "")))):
            continue
        r.update(status="answered", correct=short_answer_matches(r.get("extracted"), item.answer),
                 grader="exact", judge=None)
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
        check_resume(bench_dir, run_settings(cfg, task, *prompt_settings(cfg, task)), cfg.overwrite,
                     record=False)


def evaluate_benchmark(
    cfg: EvalConfig,
    name: str,
    get_engine: Callable[[], Engine],
    out: Path,
    progress: Any = None,
    stamp: str | None = None,
) -> dict[str, Any]:
    task = get_task(name)
    style, max_new = prompt_settings(cfg, task)
    data = Path(cfg.data).resolve()
    items, evaluated = limit_items(task, task.load(data), cfg.limit)
    coverage = task.coverage(data)
    bench_name = benchmark_dir_name(task, cfg.subtitles)
    bench_dir = out / bench_name
    settings = run_settings(cfg, task, style, max_new)
    check_resume(bench_dir, settings, cfg.overwrite)
    merged = PredictionStore(bench_dir / PREDICTIONS)
    shard = shards.parse_shard(cfg.shard)
    if shard is None:  # predictions.jsonl, with whatever shard processes have answered
        store, mine, absorbed = merged, items, shards.absorb(bench_dir, merged)
    else:  # this process's share, into its own file (see eval/shards.py)
        store, absorbed = PredictionStore(shards.shard_path(bench_dir, *shard)), 0
        mine = shards.shard_items(task, items, *shard)
    retried = drop_retryable(store)
    done = set(store.load())
    if shard is not None:  # answered by an earlier merge already
        done |= {q for q, r in merged.load(repair=False).items() if shards.final(r)}
    todo = [it for it in mine if it.qid not in done]
    resumed = len(mine) - len(todo)
    store.append(error_record(task, it, it.error) for it in todo if it.error)
    runnable = [it for it in todo if not it.error]
    t0 = time.perf_counter()
    label = bench_name + (f" (shard {cfg.shard})" if shard else "")
    bar = (
        progress.add_task(label, total=len(mine), completed=len(mine) - len(runnable))
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
    if shard is not None:
        info = {"benchmark": bench_name, "shard": cfg.shard, "questions": len(items),
                "shard_questions": len(mine), "resumed": resumed, "generated": len(runnable),
                "retried": retried, "generation_seconds": round(gen_s, 3),
                "engine": engine.describe() if engine else None}  # fmt: skip
        if shards.complete(bench_dir, merged, items):
            with shards.MergeLock(bench_dir) as lock:
                if lock.held:  # the last shard to finish: merge and score the whole benchmark
                    whole = dataclasses.replace(cfg, shard="", overwrite=False)
                    m = evaluate_benchmark(whole, name, get_engine, out, None, stamp)
                    m["merged_by_shard"] = info
                    report.write_json(bench_dir / "metrics.json", m)
                    return m
            info["note"] = f"complete; another process holds {lock.path} and merges"
        else:
            info["note"] = ("other shards still to answer; the last shard to finish merges "
                            "(or run without --shard to merge and answer what is left)")
        return info
    by_qid = {it.qid: it for it in items}
    records = [r for q, r in store.load().items() if q in by_qid]
    by_record = {r["qid"]: r for r in records}  # the same dicts: judging updates them in place
    records_in_order = [by_record[it.qid] for it in items if it.qid in by_record]
    regraded = grade_exact_open(records, by_qid)
    if judge_open_ended(records, by_qid, cfg, bench_dir, task.name) or regraded:
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
        retried=retried,
        absorbed_from_shards=absorbed,
        generation_seconds=round(gen_s, 3),
        judges=judges_used(records),
        judge_protocol=judge_metrics(records),
        extraction_rules=dict(
            Counter(r.get("extraction_rule") for r in records if r.get("extraction_rule"))
        ),
        error_examples=[
            {"qid": r["qid"], "error": r.get("error") or (r.get("judge") or {}).get("error")}
            for r in errors[:20]
        ],
    )
    # lmms-eval's per-sample log beside ours, in the benchmark's question order
    subs = bool(cfg.subtitles and task.supports_subtitles)
    samples_path = lmms_output.write_samples(
        out, cfg.model, stamp or lmms_output.date_id(), task.name, subs, records_in_order
    )
    lines = [lmms_output.sample_line(i, r, "", 1.0) for i, r in enumerate(records_in_order)]
    metrics["lmms_eval"] = {
        **lmms_output.results_entry(task.name, subs, metrics, lines),
        "samples": str(samples_path.relative_to(out)),
    }
    metrics["harness"] = lmms_output.harness()
    report.write_json(bench_dir / "metrics.json", metrics)
    report.plot_benchmark(metrics, bench_dir / report.PLOT)
    return metrics


def engine_options(cfg: EvalConfig) -> dict[str, Any]:
    """make_engine's keyword options from the config (dtype resolved, as run_info.json has it)."""
    opts: dict[str, Any] = {"dtype": resolved_dtype(cfg)}
    if cfg.engine == "openai":
        return {"endpoint": cfg.endpoint, "served": served_entry(cfg)}
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
    check_all_resumable(cfg, out)  # a refused resume leaves eval_config.yaml as it was
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
    shard_infos: list[dict[str, Any]] = []
    started = time.time()
    stamp = lmms_output.date_id(started)
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
                m = evaluate_benchmark(cfg, name, get_engine, out, progress, stamp)
                if "score" not in m:  # a shard's share, not yet merged (eval/shards.py)
                    shard_infos.append(m)
                    if console is not None:
                        console.print(
                            f"{m['benchmark']}: shard {m['shard']} answered "
                            f"{m['generated']} (resumed {m['resumed']}) of its "
                            f"{m['shard_questions']} questions; {m['note']}", markup=False
                        )
                    continue
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
        lmms_files: list[Path] = []
        if per_benchmark:
            report.write_summary(out, summary)  # merged with earlier commands' benchmarks
            lmms_files.append(lmms_output.write_results(
                out, cfg, stamp, {m["task"]: m["lmms_eval"] for m in per_benchmark.values()},
                started,
            ))  # fmt: skip
            lmms_files += [out / m["lmms_eval"]["samples"] for m in per_benchmark.values()]
        if shard_infos:
            summary["shards"] = shard_infos
        report.log_to_mlflow(run, out, summary, per_benchmark)
        if getattr(run, "active", False) and per_benchmark:  # the lmms-eval files, the commit
            commit = lmms_output.harness()["git_commit"]
            run.set_tags({"eval.git_commit": commit or "unknown"})
            for f in lmms_files:
                run.log_artifact(f, str(Path("eval") / f.parent.relative_to(out)))
    return summary
