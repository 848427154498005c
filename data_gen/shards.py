"""`longrl data build` over many workers (issue 12, data generation at LongVideo-Reason scale).

Everything a build does up to the splits is per video: probe, captions, QA, rewrite, near-
duplicate removal (within a video) and the difficulty filter. Only two steps look across
videos: dropping files with the same bytes (the later one in discovery order is rejected) and
assigning videos to splits. So a build is cut into N shards by discovery order (video n goes to
shard n mod N); each shard runs the per-video phases and leaves OUT/shards/I-of-N.json (its
probed videos, records and rejects); one merge step applies the two global steps and writes
the splits. A single-process build is the merge of one shard in memory (data_gen/build.py), so
the merged output is the same by construction, and tests/test_data_shards.py checks it
(records, rejects.jsonl, splits.json, summary counts).

Resume: every unit goes through the shared content-addressed cache (OUT/cache, or cache_dir on
shared storage), so a killed shard redoes only its unfinished units; a finished shard's file is
written atomically and `workers=N` skips shards whose file matches the settings. Engines:
`shard=I/N` is one shard per process (a KFP ParallelFor or any job array, then one step with
`merge_shards=N`); `workers=N` runs the shards as Ray tasks on RAY_ADDRESS (or a local Ray).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from data_gen.build_config import BuildConfig, shard_of
from data_gen.schema import QARecord
from data_gen.sources import Reject, VideoItem
from data_gen.video_io import VideoInfo

STAGES = ("manifest", "probe", "caption", "qa", "rewrite", "dedup", "filter")
# Settings that do not change what a shard produces (where it runs, how it reports).
_NOT_OUTPUT = ("out", "cache_dir", "progress", "shard", "merge_shards", "workers", "decode_workers",
               "caption_decode", "caption_prefetch", "client")


class ShardError(RuntimeError):
    """Shards missing or built with other settings: the merge names them."""


@dataclass
class Part:
    """What one shard produced (JSON in OUT/shards/I-of-N.json)."""

    shard: tuple[int, int]
    fingerprint: str
    videos: list[str]  # the shard's candidates (video ids), discovery order
    probed: list[VideoItem]  # every video that probed, duplicates included
    clips: dict[str, int]  # clips per captioned video
    generated: list[QARecord]
    kept: list[QARecord]
    rejects: list[Reject]  # per-video rejects (manifest and same-bytes rejects: the merge's)
    filter: str = "off"
    requests: dict[str, dict] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["probed"] = [asdict(it) for it in self.probed]
        d["generated"] = [r.to_dict() for r in self.generated]
        d["kept"] = [r.to_dict() for r in self.kept]
        d["rejects"] = [asdict(r) for r in self.rejects]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Part:
        d = json.loads(text)
        d["shard"] = tuple(d["shard"])
        d["probed"] = [VideoItem(**{**it, "info": VideoInfo(**it["info"])}) for it in d["probed"]]
        d["generated"] = [QARecord.from_dict(r) for r in d["generated"]]
        d["kept"] = [QARecord.from_dict(r) for r in d["kept"]]
        d["rejects"] = [Reject(**r) for r in d["rejects"]]
        return cls(**d)


def fingerprint(cfg: BuildConfig, videos: list[str]) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_OUTPUT}
    text = json.dumps({"settings": settings, "videos": videos}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_videos(candidates: list[tuple[str, Path]], shard: str) -> list[tuple[str, Path]]:
    if not shard:
        return candidates
    i, n = shard_of(shard)
    return candidates[i::n]


def part_path(out: Path, i: int, n: int) -> Path:
    return Path(out) / "shards" / f"{i}-of-{n}.json"


def write_part(out: Path, part: Part) -> Path:
    path = part_path(out, *part.shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(part.to_json())
    os.replace(tmp, path)  # a shard killed while writing leaves no half file
    return path


def done_part(cfg: BuildConfig, i: int, n: int, candidates: list[tuple[str, Path]]) -> Part | None:
    """The shard's finished part if its file exists and was built with these settings."""
    path = part_path(Path(cfg.out), i, n)
    if not path.is_file():
        return None
    part = Part.from_json(path.read_text())
    vids = [v for v, _ in candidates[i::n]]
    return part if part.fingerprint == fingerprint(cfg, vids) else None


def load_parts(cfg: BuildConfig, n: int, candidates: list[tuple[str, Path]]) -> list[Part]:
    missing, stale, parts = [], [], []
    for i in range(n):
        path = part_path(Path(cfg.out), i, n)
        if not path.is_file():
            missing.append(path.name)
            continue
        part = done_part(cfg, i, n, candidates)
        if part is None:
            stale.append(path.name)
        else:
            parts.append(part)
    if missing or stale:
        raise ShardError(f"cannot merge {n} shards in {Path(cfg.out) / 'shards'}: "
                         + "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                                 f"built from other settings or videos: {', '.join(stale)}"
                                                 if stale else "") if x))
    filters = {p.filter for p in parts}
    if len(filters) > 1:
        raise ShardError(f"shards were filtered by different answerers: {sorted(filters)}")
    return parts


def sort_rejects(rejects: list[Reject], order: dict[str, int]) -> list[Reject]:
    """One order whatever the sharding: by video (discovery order), then stage, stable within."""
    rank = {s: n for n, s in enumerate(STAGES)}
    return sorted(rejects, key=lambda r: (order.get(r.video_id, -1), rank.get(r.stage, len(rank))))


def sum_stats(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up counters (nested dicts of numbers) from several shards."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = sum_stats([out.get(k, {}), v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = round(out.get(k, 0) + v, 3) if isinstance(v, float) else out.get(k, 0) + v
    return out


@dataclass
class Merged:
    items: list[VideoItem]
    generated: list[QARecord]
    kept: list[QARecord]
    rejects: list[Reject]
    clips: int
    pipeline: dict
    counters: dict  # requests / cache summed, seconds the slowest shard's


def merge_parts(parts: list[Part], candidates: list[tuple[str, Path]], manifest_rejects: list[Reject]) -> Merged:
    """Same-bytes duplicates across all shards (the later one in discovery order is rejected and
    its records and rejects dropped, as a single process never works on it), one reject order."""
    from data_gen.sources import drop_duplicates

    order = {vid: n for n, (vid, _) in enumerate(candidates)}
    probed = sorted((it for p in parts for it in p.probed), key=lambda it: order.get(it.video_id, -1))
    items, dups = drop_duplicates(probed)
    gone = {d.video_id for d in dups}
    rejects = manifest_rejects + dups + [r for p in parts for r in p.rejects if r.video_id not in gone]

    def records(kind: str) -> list[QARecord]:
        recs = [r for p in parts for r in getattr(p, kind) if r.video_id not in gone]
        return sorted(recs, key=lambda r: order.get(r.video_id, -1))

    requests: dict[str, dict] = {}
    for p in parts:
        for name, st in p.requests.items():
            requests[name] = sum_stats([requests.get(name, {}), st])
    seconds = {k: max(p.seconds.get(k, 0.0) for p in parts) for k in {k for p in parts for k in p.seconds}}
    return Merged(items, records("generated"), records("kept"), sort_rejects(rejects, order),
                  sum(n for p in parts for v, n in p.clips.items() if v not in gone),
                  sum_stats([p.pipeline for p in parts]),
                  {"requests": requests, "cache": sum_stats([p.cache for p in parts]), "seconds": seconds})


def run_workers(cfg: BuildConfig) -> Any:
    """Run `cfg.workers` shards as Ray tasks (skipping finished ones), then merge them."""
    import ray

    from data_gen.build import run_build
    from data_gen.sources import discover

    n = cfg.workers  # (cfg.check refuses the local-model answerer: it lives in the CLI process)
    candidates, _ = discover(cfg.videos)
    todo = [i for i in range(n) if done_part(cfg, i, n, candidates) is None]
    if todo:
        started = not ray.is_initialized()
        if started:
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=cfg.progress)
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(_shard_task)
            ray.get([task.remote(replace(cfg, workers=0, shard=f"{i}/{n}", progress=False)) for i in todo])
        finally:
            if started:
                ray.shutdown()
    return run_build(replace(cfg, workers=0, merge_shards=n))


def _shard_task(cfg: BuildConfig) -> str:
    from data_gen.build import run_build

    return str(run_build(cfg).out)
