"""What a build leaves besides the splits: rejects.jsonl, summary.json, a summary table on the
console, summary.png (questions per category, generated vs kept) and config.yaml."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_gen.schema import CATEGORIES, QARecord
from data_gen.sources import Reject, VideoItem

if TYPE_CHECKING:
    from data_gen.build import Build

def write_reports(out: Path, rejects: list[Reject]) -> None:
    tmp = out / ".rejects.jsonl.tmp"
    with tmp.open("w") as f:
        for r in rejects:
            f.write(json.dumps(r.to_dict()) + "\n")
    os.replace(tmp, out / "rejects.jsonl")


def write_failed_summary(build: Build, error: BaseException) -> None:
    """summary.json of a build that failed: the error, request counters per endpoint, cache
    counters and times, so a failed run can be diagnosed (how many requests, which errors)."""
    summary = {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "videos": {"found": build.counts.get("videos_found", 0)},
        "clips": build.counts.get("clips", 0),
        "rejects": len(build.rejects),
        "requests": {name: asdict(ep.stats) for name, ep in build.endpoints.items()},
        "cache": asdict(build.cache.stats),
        "seconds": build.times,
    }
    build.out.mkdir(parents=True, exist_ok=True)
    tmp = build.out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, build.out / "summary.json")


def summarise(build: Build, items: list[VideoItem], generated: list[QARecord], kept: list[QARecord],
              counts: dict[str, int]) -> dict[str, Any]:
    from common.config import save_config

    rejects = build.rejects
    by_stage = Counter(r.stage for r in rejects)
    video_rejects = sum(1 for r in rejects if r.kind == "video")
    per_cat: dict[str, dict[str, int]] = {}
    for cat in CATEGORIES:
        per_cat[cat] = {
            "generated": sum(r.category == cat for r in generated),
            "dedup": sum(r.stage == "dedup" and r.category == cat for r in rejects),
            "filter": sum(r.stage == "filter" and r.category == cat for r in rejects),
            "kept": sum(r.category == cat for r in kept),
        }
    summary = {
        "status": "ok",
        "videos": {"found": build.counts.get("videos_found", 0), "usable": len(items),
                   "rejected": video_rejects, "with_questions": len({r.video_id for r in kept})},
        "clips": build.counts.get("clips", 0),
        "questions": {"generated": len(generated),
                      "invalid": sum(r.stage == "qa" and r.kind == "question" for r in rejects),
                      "kept": len(kept), "rejected_by_stage": dict(by_stage)},
        "by_category": per_cat,
        "answer_types": dict(Counter(r.answer_type for r in kept)),
        "splits": counts,
        "filter": build.counts.get("filter", "off"),
        "requests": build.merged.get("requests") or {name: asdict(ep.stats) for name, ep in build.endpoints.items()},
        "cache": build.merged.get("cache") or asdict(build.cache.stats),
        "pipeline": build.counts.get("pipeline", {}),
        "seconds": build.merged.get("seconds") or build.times,
    }
    (build.out / "summary.json").write_text(json.dumps(summary, indent=1))
    save_config(build.cfg, build.out)
    _plot(per_cat, build.out / "summary.png")
    if build.cfg.progress:
        print_table(summary)
    return summary


def _plot(per_cat: dict[str, dict[str, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(per_cat)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(cats))
    ax.bar([x - 0.2 for x in xs], [per_cat[c]["generated"] for c in cats], 0.4, label="generated")
    ax.bar([x + 0.2 for x in xs], [per_cat[c]["kept"] for c in cats], 0.4, label="kept")
    ax.set_xticks(list(xs), cats)
    ax.set_ylabel("questions")
    ax.set_title("LongVideo-Reason build: questions per category")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data build")
    for col in ("category", "generated", "dedup", "filter", "kept"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, row in summary["by_category"].items():
        table.add_row(cat, *(str(row[k]) for k in ("generated", "dedup", "filter", "kept")))
    q = summary["questions"]
    table.add_row("all", str(q["generated"]), str(q["rejected_by_stage"].get("dedup", 0)),
                  str(q["rejected_by_stage"].get("filter", 0)), str(q["kept"]), style="bold")
    console = Console(stderr=True)
    console.print(table)
    v = summary["videos"]
    console.print(f"videos: {v['found']} found, {v['usable']} usable, {v['rejected']} rejected, "
                  f"{v['with_questions']} with questions; clips: {summary['clips']}; "
                  f"invalid QA items: {q['invalid']}; splits: {summary['splits']}; filter: {summary['filter']}")
    for name, st in summary["requests"].items():
        console.print(f"requests [{name}]: {st['requests']} sent, {st['ok']} ok, {st['retries']} retries, "
                      f"{st['failed']} failed {st['errors'] or ''}")
    p = summary.get("pipeline") or {}
    if p.get("clips_decoded"):
        console.print(f"captions pipeline: {p['clips_decoded']} clips of {p['videos_decoded']} videos decoded, "
                      f"at most {p['max_alive']} alive (bound {p['bound']}), {p['decode_s']} s decoding")
    c = summary["cache"]
    console.print(f"cache: {c['hits']} hits, {c['misses']} misses, {c['writes']} written; "
                  f"time: {summary['seconds']}")
