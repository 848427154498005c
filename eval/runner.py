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

The batch loop (eval.answering) and the resume checks (eval.resume) are their own modules; this
one runs a benchmark and the whole evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval import lmms_output, report, shards

# The generation loop (eval.answering) and the resume checks (eval.resume) live in their own
# modules; re-exported so `from eval.runner import score, base_record, ...` keeps working.
from eval.answering import (  # noqa: F401 - re-exported
    _system_prompt,
    answer_batch,
    base_record,
    error_record,
    generation_options,
    score,
)
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
from eval.engines import Engine
from eval.judge import NO_JUDGE, judge_metrics, judge_open_ended, judges_used  # noqa: F401
from eval.limits import limit_items
from eval.metrics import compute_metrics
from eval.resume import (  # noqa: F401 - re-exported
    check_all_resumable,
    drop_retryable,
    grade_exact_open,
    prompt_settings,
)
from eval.store import PredictionStore
from eval.task import get_task


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
