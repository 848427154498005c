"""`longrl data build`: videos -> clip captions -> reasoning QA -> dedup -> difficulty filter ->
splits, resumable and concurrent.

Phases run in one asyncio loop; requests within a phase run concurrently (bounded per
endpoint), frame decoding in a few threads. Every finished unit goes to the UnitCache first, so
a killed run redoes only unfinished units. Final files (splits, rejects.jsonl, summary) are
rebuilt from the cached units at the end of every run: nothing is lost or written twice.
Rejected videos and questions are recorded with their stage and reason and never stop the rest;
a run where nothing survives fails with the reasons.

The phases themselves are data_gen.build_phases.BuildPhases; this module runs them for the whole
build or one shard, writes or merges the shards (data_gen.shards), and finishes the splits.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_gen.build_config import BuildConfig, shard_of
from data_gen.build_phases import DATA_GEN_VERSION, BuildError, BuildPhases  # noqa: F401 - re-exported
from data_gen.clip_pipeline import PipelineStats
from data_gen.difficulty import Answerer
from data_gen.llm_client import ChatEndpoint, RequestFailed
from data_gen.schema import QARecord
from data_gen.shards import (
    Part,
    fingerprint,
    load_parts,
    merge_parts,
    run_workers,
    shard_videos,
    write_part,
)
from data_gen.sources import Reject, VideoItem, clip_spans, discover
from data_gen.splits import assign_videos, save_splits
from data_gen.unit_cache import UnitCache


@dataclass
class BuildResult:
    out: Path
    counts: dict[str, int]
    summary: dict[str, Any]
    rejects: list[Reject] = field(default_factory=list)


class Build(BuildPhases):
    def __init__(self, cfg: BuildConfig, answerer: Answerer | None = None):
        cfg.check()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = UnitCache(cfg.cache_dir or self.out / "cache")
        self.rejects: list[Reject] = []
        self.answerer = answerer
        self.endpoints: dict[str, ChatEndpoint] = {}
        self.times: dict[str, float] = {}
        self.counts: dict[str, Any] = {}
        self.pipeline = PipelineStats()
        self.candidates: list = []
        self.probed: list[VideoItem] = []
        self.merged: dict[str, Any] = {}  # counters added up over shards (merge of several)

    # -- run -----------------------------------------------------------------------------
    async def _timed(self, name: str, coro):
        t0 = time.perf_counter()
        try:
            return await coro
        finally:
            self.times[name] = round(time.perf_counter() - t0, 3)

    async def run_part(self) -> Part:
        """The per-video phases for this build's videos (all of them, or its shard's)."""
        t0 = time.perf_counter()
        try:
            items = await self._timed("probe", self.videos())
            caps = await self._timed("caption", self.captions(items))
            generated = await self._timed("qa", self.questions(items, caps))
            records = [QARecord.from_dict(r.to_dict()) for r in generated]
            if self.cfg.rewrite:
                records = await self._timed("rewrite", self.rewrite(records))
            kept = await self._timed("filter", self.filter(records))
        except Exception as exc:
            from data_gen.build_report import write_failed_summary, write_reports

            self.times["total"] = round(time.perf_counter() - t0, 3)
            write_reports(self.out, self.rejects)  # the reasons are the useful part of a failure
            write_failed_summary(self, exc)  # and the request counters
            raise
        finally:
            for ep in self.endpoints.values():
                await ep.aclose()
        self.times["total"] = round(time.perf_counter() - t0, 3)
        c = self.cfg
        spans = {it.video_id: len(clip_spans(it.duration_s, c.clip_s, c.min_tail_s)) for it in items}
        vids = [v for v, _ in shard_videos(self.candidates, c.shard)]
        return Part(shard_of(c.shard) if c.shard else (0, 1), fingerprint(c, vids), vids, self.probed, spans,
                    generated, kept, [r for r in self.rejects if r.stage != "manifest"],
                    self.counts.get("filter", "off"), {n: asdict(ep.stats) for n, ep in self.endpoints.items()},
                    asdict(self.cache.stats), self.counts.get("pipeline", {}), dict(self.times))

    async def run_async(self) -> BuildResult:
        c = self.cfg
        if c.merge_shards:
            candidates, _ = discover(c.videos)
            return self.merge(load_parts(c, c.merge_shards, candidates))
        part = await self.run_part()
        if c.shard:
            write_part(self.out, part)
            return BuildResult(self.out, {}, {"shard": c.shard, "videos": len(part.videos),
                                              "questions": {"generated": len(part.generated),
                                                            "kept": len(part.kept)}}, part.rejects)
        return self.merge([part])

    def merge(self, parts: list[Part]) -> BuildResult:
        """The global steps over all shards (data_gen.shards.merge_parts), then splits and reports."""
        candidates, manifest_rejects = discover(self.cfg.videos)
        m = merge_parts(parts, candidates, manifest_rejects)
        self.rejects = m.rejects
        self.counts.update(videos_found=len(candidates), filter=parts[0].filter, clips=m.clips)
        if len(parts) > 1 or self.cfg.merge_shards:  # counters added up over the shards
            self.counts["pipeline"], self.merged = m.pipeline, m.counters
        try:
            if not m.items:
                from data_gen.build_report import write_reports

                write_reports(self.out, self.rejects)
                reasons = "; ".join(f"{r.item}: {r.reason}" for r in self.rejects[:5])
                raise BuildError(f"all {len(candidates)} videos were rejected ({reasons})" if candidates
                                 else f"no video files found in {self.cfg.videos}")
            return self.finish(m.items, m.generated, m.kept)
        except Exception as exc:
            from data_gen.build_report import write_failed_summary

            write_failed_summary(self, exc)
            raise

    def finish(self, items: list[VideoItem], generated: list[QARecord], kept: list[QARecord]) -> BuildResult:
        from data_gen.build_report import summarise, write_reports

        kept.sort(key=lambda r: (r.video_id, r.id))
        write_reports(self.out, self.rejects)  # written even when the build fails below
        usable = {r.video_id for r in kept}
        if not kept:
            reasons = "; ".join(f"[{r.stage}] {r.item}: {r.reason}" for r in self.rejects[:5])
            raise BuildError(f"no question survived ({len(generated)} generated; {len(self.rejects)} "
                             f"rejects, see {self.out / 'rejects.jsonl'}): {reasons}")
        digests = {it.video_id: it.digest for it in items if it.video_id in usable}
        s = self.cfg.splits
        assignment = assign_videos(digests, {"sft": s.sft, "rl": s.rl, "eval": s.eval}, s.seed)
        counts = save_splits(kept, assignment, self.out)
        summary = summarise(self, items, generated, kept, counts)
        return BuildResult(self.out, counts, summary, self.rejects)


def run_build(cfg: BuildConfig, answerer: Answerer | None = None) -> BuildResult:
    """Run a whole build, one shard of it (`shard=I/N`), the merge of N finished shards
    (`merge_shards=N`) or N shards on Ray then their merge (`workers=N`). Sync entry point for
    the CLI and the KFP component."""
    if cfg.workers > 1:
        cfg.check()
        return run_workers(cfg)
    return asyncio.run(Build(cfg, answerer).run_async())


__all__ = ["Build", "BuildError", "BuildResult", "RequestFailed", "run_build"]
