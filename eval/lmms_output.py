"""Outputs lmms-eval users can read, written beside ours: OUT/lmms_eval/<model>/ holds, per
command, `<date>_results.json` (lmms-eval's aggregated-results layout: results / configs /
versions / n-shot / higher_is_better / n-samples / config / git_hash / date / task_hashes and
the model fields) and, per benchmark, `<date>_samples_<task>.jsonl` (one line per question in
lmms-eval's per-sample log layout: doc_id, target, filtered_resps (+ resps when they differ),
doc_hash / prompt_hash / target_hash (sha256), input, and the task's metric).

lmms-eval task names and metric names are used where lmms-eval has the benchmark (Video-MME
`videomme` / `videomme_w_subtitle`, LongVideoBench `longvideobench_val_v` / `_val_i`, MLVU
`mlvu_dev`, NExT-QA `nextqa_mc_test`, Perception Test `perceptiontest_val_mc`,
ActivityNet-QA `activitynetqa`), at lmms-eval's scale (Video-MME and MLVU in percent). The
value is *our* headline score (eval.metrics: errors excluded, MLVU's mean over the tasks
present); `n-samples.effective` is the number of questions it covers. Each sample line keeps
our own verdict under `longrl`. The layout was read from lmms-eval's
loggers/evaluation_tracker.py and evaluator.py; no code is shared.

`harness()` - the longrl version and git commit - goes into metrics.json and the results file.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

LMMS_DIR = "lmms_eval"


# our benchmark -> (lmms-eval task, task with subtitles, metric, scale, dataset_path, split)
LMMS_TASKS: dict[str, tuple[str, str, str, float, str, str]] = {
    "videomme": ("videomme", "videomme_w_subtitle", "videomme_perception_score", 100.0,
                 "lmms-lab/Video-MME", "test"),
    "longvideobench": ("longvideobench_val_v", "longvideobench_val_i", "lvb_acc", 1.0,
                       "longvideobench/LongVideoBench", "validation"),
    "mlvu": ("mlvu_dev", "mlvu_dev", "mlvu_percetion_score", 100.0, "sy1998/MLVU_dev", "test"),
    "nextqa": ("nextqa_mc_test", "nextqa_mc_test", "exact_match", 1.0, "lmms-lab/NExTQA", "test"),
    "perceptiontest": ("perceptiontest_val_mc", "perceptiontest_val_mc", "accuracy", 1.0,
                       "lmms-lab/PerceptionTest_Val", "validation"),
    "activitynetqa": ("activitynetqa", "activitynetqa", "gpt_eval_accuracy", 1.0,
                      "lmms-lab/ActivityNetQA", "test"),
}  # fmt: skip


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sanitize_model_name(name: str) -> str:
    """lmms-eval's folder name for a model: path separators and shell-special characters -> __."""
    return re.sub(r"[\"<>:/\\|?*\[\]]+", "__", str(name))


def date_id(t: float | None = None) -> str:
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(t if t is not None else time.time()))


_HARNESS: dict[str, Any] = {}


def harness() -> dict[str, Any]:
    """{"name", "version", "git_commit", "git_dirty"} of the code that ran (commit None when
    longrl does not run from a git checkout)."""
    if _HARNESS:
        return dict(_HARNESS)
    import importlib.metadata

    try:
        version = importlib.metadata.version("longrl")
    except importlib.metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parent.parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    _HARNESS.update(name="longrl", version=version, git_commit=commit, git_dirty=dirty)
    return dict(_HARNESS)


def lmms_task(benchmark: str, subtitles: bool) -> tuple[str, str, float]:
    """(lmms-eval task name, metric name, scale) for one of our benchmarks."""
    if benchmark in LMMS_TASKS:
        plain, with_subs, metric, scale, _, _ = LMMS_TASKS[benchmark]
        return (with_subs if subtitles else plain), metric, scale
    return benchmark + ("_subtitles" if subtitles else ""), "accuracy", 1.0


def _sample_metric(rec: dict[str, Any], metric: str, scale: float) -> Any:
    """The per-sample value under the task's metric: a number for mean-aggregated metrics
    (exact_match, accuracy), a dict (id, prediction, answer, breakdown) for the tasks whose
    lmms-eval aggregator reads dicts."""
    correct = rec.get("correct")
    value = None if correct is None else float(bool(correct))
    if metric in ("exact_match", "accuracy"):
        return value
    return {"question_id": rec["qid"], "pred_answer": rec.get("extracted"),
            "answer": rec.get("answer"), "correct": value, **(rec.get("breakdown") or {})}


def sample_line(doc_id: int, rec: dict[str, Any], metric: str, scale: float) -> dict[str, Any]:
    raw = rec.get("raw_output")
    filtered = rec.get("extracted") if rec.get("extracted") is not None else raw
    doc = {k: rec.get(k) for k in ("qid", "video", "answer_type", "answer", "options",
                                   "breakdown")}
    line: dict[str, Any] = {
        "doc_id": doc_id,
        "target": str(rec.get("answer")),
        "filtered_resps": [filtered],
        "doc_hash": sha256(json.dumps(doc, indent=2, ensure_ascii=False, default=str)),
        "prompt_hash": sha256(rec.get("prompt") or ""),
        "target_hash": sha256(str(rec.get("answer"))),
        metric: _sample_metric(rec, metric, scale),
        "input": rec.get("prompt"),
        "longrl": {k: rec[k] for k in ("qid", "status", "correct", "extraction_rule", "error")
                   if k in rec},
    }
    if filtered != raw:  # lmms-eval drops resps when they equal filtered_resps
        line["resps"] = [[raw]]
    return line


def write_samples(out_dir: Path, model: str, stamp: str, benchmark: str, subtitles: bool,
                  records: list[dict[str, Any]]) -> Path:
    """OUT/lmms_eval/<model>/<stamp>_samples_<task>.jsonl for one benchmark's records (in the
    benchmark's question order); earlier commands' sample files of that task are replaced."""
    task, metric, scale = lmms_task(benchmark, subtitles)
    folder = Path(out_dir) / LMMS_DIR / sanitize_model_name(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_samples_{task}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for i, rec in enumerate(records):
            fh.write(json.dumps(sample_line(i, rec, metric, scale), ensure_ascii=False,
                                default=str) + "\n")
    tmp.replace(path)
    for old in folder.glob(f"*_samples_{task}.jsonl"):
        if old != path:
            old.unlink()
    return path


def task_value(metrics: dict[str, Any], benchmark: str, scale: float) -> float | None:
    if benchmark == "activitynetqa":  # lmms-eval: yes-rate with failures counted as "no"
        proto = (metrics.get("judge_protocol") or {}).get("failures_as_no") or {}
        if proto.get("yes_rate") is not None:
            return float(proto["yes_rate"])
    score = metrics.get("score")
    return None if score is None else float(score) * scale


def results_entry(benchmark: str, subtitles: bool, metrics: dict[str, Any],
                  samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What one benchmark contributes to the results file (kept in metrics.json too)."""
    task, metric, scale = lmms_task(benchmark, subtitles)
    results = {"alias": task, f"{metric},none": task_value(metrics, benchmark, scale),
               f"{metric}_stderr,none": "N/A"}
    if benchmark == "activitynetqa":
        proto = (metrics.get("judge_protocol") or {}).get("failures_as_no") or {}
        results["gpt_eval_score,none"] = proto.get("mean_score")
        results["gpt_eval_score_stderr,none"] = "N/A"
    hashes = "".join(f"sample_{i}" + s["doc_hash"] for i, s in enumerate(samples))
    overall = metrics.get("overall") or {}
    return {
        "task": task, "metric": metric, "results": results,
        "n_samples": {"original": metrics.get("questions"), "effective": overall.get("scored")},
        "task_hash": sha256(hashes),
        "ours": {"score": metrics.get("score"), "score_ci95": metrics.get("score_ci95"),
                 "headline": metrics.get("headline")},
    }  # fmt: skip


def write_results(out_dir: Path, cfg: Any, stamp: str, entries: dict[str, dict[str, Any]],
                  start: float, dataset_paths: dict[str, str] | None = None) -> Path:
    """OUT/lmms_eval/<model>/<stamp>_results.json for the benchmarks of one command."""
    h = harness()
    gen = {"max_new_tokens": cfg.max_new_tokens or None, "temperature": cfg.temperature,
           "top_p": cfg.top_p, "num_beams": cfg.num_beams, "do_sample": cfg.temperature > 0}
    configs = {}
    for bench, e in entries.items():
        spec = LMMS_TASKS.get(bench)
        configs[e["task"]] = {
            "task": e["task"], "dataset_path": spec[4] if spec else (dataset_paths or {}).get(
                bench, cfg.data), "test_split": spec[5] if spec else None,
            "output_type": "generate_until", "generation_kwargs": gen, "num_fewshot": 0,
            "metric_list": [{"metric": e["metric"], "aggregation": "longrl headline",
                             "higher_is_better": True}],
            "metadata": {"version": h["version"], "harness": "longrl", "benchmark": bench},
        }  # fmt: skip
    end = time.time()
    data = {
        "results": {e["task"]: e["results"] for e in entries.values()},
        "group_subtasks": {e["task"]: [] for e in entries.values()},
        "configs": configs,
        "versions": {e["task"]: h["version"] for e in entries.values()},
        "n-shot": {e["task"]: 0 for e in entries.values()},
        "higher_is_better": {e["task"]: {e["metric"]: True} for e in entries.values()},
        "n-samples": {e["task"]: e["n_samples"] for e in entries.values()},
        "config": {
            "model": f"longrl-{cfg.engine}", "model_args": f"pretrained={cfg.model}",
            "batch_size": cfg.batch_size, "batch_sizes": [], "device": cfg.device,
            "use_cache": None, "limit": cfg.limit or None, "bootstrap_iters": cfg.bootstrap,
            "gen_kwargs": gen, "random_seed": cfg.seed, "numpy_seed": cfg.seed,
            "torch_seed": cfg.seed, "fewshot_seed": cfg.seed,
        },
        "git_hash": (h["git_commit"] or "")[:7] or None,
        "date": end,
        "task_hashes": {e["task"]: e["task_hash"] for e in entries.values()},
        "model_source": f"longrl-{cfg.engine}",
        "model_name": cfg.model,
        "model_name_sanitized": sanitize_model_name(cfg.model),
        "system_instruction": None, "system_instruction_sha": None,
        "fewshot_as_multiturn": False, "chat_template": None, "chat_template_sha": None,
        "start_time": start, "end_time": end,
        "total_evaluation_time_seconds": str(end - start),
        "longrl": {"harness": h, "ours": {b: e["ours"] for b, e in entries.items()}},
    }  # fmt: skip
    folder = Path(out_dir) / LMMS_DIR / sanitize_model_name(cfg.model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    return path
