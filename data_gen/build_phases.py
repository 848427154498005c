"""The per-video phases of `longrl data build` (probe, caption, QA, rewrite, filter), as a base
class of data_gen.build.Build, which adds the run, the sharding and the merge. Split from
data_gen/build.py; BuildError and DATA_GEN_VERSION are re-exported there.

Each phase works on this build's videos (all of them, or its shard's), caches every finished
unit in the UnitCache before using it, and records what it rejects with the stage and reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from data_gen import annotate
from data_gen.build_config import BuildConfig
from data_gen.clip_pipeline import PipelineStats, run_clips
from data_gen.difficulty import (
    Answerer,
    EndpointAnswerer,
    NoisyOracleAnswerer,
    apply_verdicts,
    judge,
    near_duplicates,
    verdict_key,
)
from data_gen.llm_client import ChatEndpoint
from data_gen.prompt_templates import load_prompt
from data_gen.qa_format import QA_SCHEMA_FILE, generator_json, qa_schema
from data_gen.schema import QARecord
from data_gen.shards import shard_videos
from data_gen.sources import Reject, VideoItem, clip_spans, discover, drop_duplicates, probe
from data_gen.unit_cache import UnitCache
from data_gen.video_io import VideoError

DATA_GEN_VERSION = "1"


class BuildError(RuntimeError):
    """The build produced nothing usable (every video or every question was rejected)."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BuildPhases:
    """State and phases of one build; data_gen.build.Build sets the attributes in __init__."""

    cfg: BuildConfig
    cache: UnitCache
    rejects: list[Reject]
    answerer: Answerer | None
    endpoints: dict[str, ChatEndpoint]
    counts: dict[str, Any]
    pipeline: PipelineStats
    candidates: list
    probed: list[VideoItem]

    # -- helpers -------------------------------------------------------------------------
    def _endpoint(self, name: str) -> ChatEndpoint:
        if name not in self.endpoints:
            ep_cfg = self.cfg.filter.endpoint if name == "filter" else getattr(self.cfg, name)
            self.endpoints[name] = ChatEndpoint(
                ep_cfg.url,
                ep_cfg.model,
                ep_cfg.api_key_env,
                self.cfg.client,
                name=name,
                seed=self.cfg.splits.seed,
            )
        return self.endpoints[name]

    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="unit", disable=not self.cfg.progress, leave=True)

    async def _each(self, desc: str, fn, items: list, limit: int = 0) -> list:
        """fn(item) for every item, at most `limit` at once (default 2 x client.concurrency: the
        endpoint's semaphore bounds the requests, this bounds the started work, e.g. decoded
        frames waiting for a request slot); results (or exceptions) in order."""
        bar = self._bar(len(items), desc)
        results: list = [None] * len(items)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for n, item in queue:
                try:
                    results[n] = await fn(item)
                except Exception as exc:  # recorded by the caller as a reject with its reason
                    results[n] = exc
                finally:
                    bar.update(1)

        limit = limit or 2 * max(1, self.cfg.client.concurrency)
        try:
            await asyncio.gather(*[worker() for _ in range(min(limit, len(items)))])
            return results
        finally:
            bar.close()

    def _generator(self) -> str:
        c = self.cfg
        if c.annotator == "groundtruth":
            return generator_json(
                annotator="groundtruth", data_gen=DATA_GEN_VERSION, qa_schema=QA_SCHEMA_FILE
            )
        return generator_json(
            annotator="llm",
            data_gen=DATA_GEN_VERSION,
            captioner=c.captioner.model,
            caption_prompt=load_prompt(c.caption_prompt).version,
            reasoner=c.reasoner.model,
            qa_prompt=load_prompt(c.qa_prompt).version,
            qa_schema=QA_SCHEMA_FILE,
        )

    # -- phases --------------------------------------------------------------------------
    async def videos(self) -> list[VideoItem]:
        """Probe this build's (or shard's) candidates; same-bytes duplicates dropped."""
        candidates, manifest_rejects = discover(self.cfg.videos)
        self.candidates = candidates
        mine = shard_videos(candidates, self.cfg.shard)
        if not self.cfg.shard:
            self.rejects += manifest_rejects  # (the merge takes them from discover again)
        results = await self._each(
            "probe videos",
            lambda vp: asyncio.to_thread(probe, *vp),
            mine,
            limit=self.cfg.decode_workers,
        )
        items = []
        for (vid, path), res in zip(mine, results, strict=True):
            if isinstance(res, VideoError):
                self.rejects.append(Reject("probe", str(path), res.reason, vid))
            elif isinstance(res, Exception):
                self.rejects.append(Reject("probe", str(path), f"{type(res).__name__}: {res}", vid))
            else:
                items.append(res)
        self.probed = list(items)
        items, _ = drop_duplicates(items)  # recorded by the merge, which sees every shard
        self.counts["videos_found"] = len(candidates)
        if not items and not self.cfg.shard:
            reasons = "; ".join(f"{r.item}: {r.reason}" for r in self.rejects[:5])
            raise BuildError(
                f"all {len(candidates)} videos were rejected ({reasons})"
                if candidates
                else f"no video files found in {self.cfg.videos}"
            )
        return items

    async def captions(self, items: list[VideoItem]) -> dict[str, list[dict]]:
        c = self.cfg
        spans = {it.video_id: clip_spans(it.duration_s, c.clip_s, c.min_tail_s) for it in items}
        self.counts["clips"] = sum(len(s) for s in spans.values())
        out: dict[str, list[dict]] = {}
        if c.annotator == "groundtruth":
            for it in items:
                try:
                    texts = annotate.groundtruth_captions(
                        annotate.groundtruth_log(it), spans[it.video_id]
                    )
                except (ValueError, OSError, KeyError) as exc:
                    self.rejects.append(Reject("caption", it.path, str(exc), it.video_id))
                    continue
                out[it.video_id] = [
                    {"start": a, "end": b, "text": t}
                    for (a, b), t in zip(spans[it.video_id], texts, strict=True)
                ]
            return out
        ep, prompt = self._endpoint("captioner"), load_prompt(c.caption_prompt)

        def frames_for(span: tuple[float, float]) -> int:
            if c.caption_fps <= 0:
                return c.frames_per_clip
            return max(1, min(c.frames_per_clip, round((span[1] - span[0]) * c.caption_fps)))

        def parts(it: VideoItem, span: tuple[float, float]) -> dict:
            return {
                "video": it.digest,
                "span": list(span),
                "frames": frames_for(span),
                "max_pixels": c.frame_max_pixels,
                "quality": c.jpeg_quality,
                "prompt": prompt.version,
                "model": c.captioner.model,
                "temperature": c.captioner.temperature,
            }

        texts: dict[tuple[str, int], str | BaseException] = {}
        jobs = []
        for it in items:
            todo = []
            for j, span in enumerate(spans[it.video_id]):
                cached = self.cache.get("caption", parts(it, span))
                if cached is not None:
                    texts[(it.video_id, j)] = cached["text"]
                else:
                    todo.append((j, (span[0], span[1], frames_for(span))))
            jobs.append((it, todo))

        async def ask(it: VideoItem, j: int, images: list[str]) -> str:
            span = spans[it.video_id][j]
            text = await annotate.caption_images(
                ep, prompt, it, span, images, c.captioner.temperature, c.captioner.max_tokens
            )
            self.cache.put("caption", parts(it, span), {"text": text})
            return text

        bar = self._bar(sum(len(t) for _, t in jobs), "caption clips")
        prefetch = c.caption_prefetch if c.caption_prefetch >= 0 else 2 * c.decode_workers
        try:
            texts.update(
                await run_clips(
                    jobs,
                    ask,
                    workers=c.decode_workers,
                    bound=c.client.concurrency + prefetch,
                    mode=c.caption_decode,
                    max_pixels=c.frame_max_pixels,
                    quality=c.jpeg_quality,
                    stats=self.pipeline,
                    on_done=lambda: bar.update(1),
                )
            )
        finally:
            bar.close()
        self.counts["pipeline"] = self.pipeline.summary()
        for it in items:
            caps, reason = [], None
            for j, span in enumerate(spans[it.video_id]):
                res = texts.get((it.video_id, j))
                if isinstance(res, BaseException):
                    why = (
                        res.reason
                        if isinstance(res, VideoError)
                        else f"{type(res).__name__}: {res}"
                    )
                    reason = f"clip {span[0]:.1f}-{span[1]:.1f} s: {why}"
                    break
                if res is None:  # cannot happen: a clip after a failed one ends the loop first
                    reason = f"clip {span[0]:.1f}-{span[1]:.1f} s: not captioned"
                    break
                caps.append({"start": span[0], "end": span[1], "text": res})
            if reason:  # a video with a hole in its captions gets no questions
                self.rejects.append(Reject("caption", it.path, reason, it.video_id))
            else:
                out[it.video_id] = caps
        return out

    async def questions(
        self, items: list[VideoItem], captions: dict[str, list[dict]]
    ) -> list[QARecord]:
        c = self.cfg
        generator = self._generator()
        todo = [it for it in items if it.video_id in captions]

        async def unit(it: VideoItem) -> dict:
            caps = captions[it.video_id]
            if c.annotator == "groundtruth":
                log_text = it.events_path.read_text()
                parts = {
                    "video": it.digest,
                    "log": _sha(log_text),
                    "count": c.groundtruth_questions,
                    "generator": generator,
                }
            else:
                parts = {
                    "video": it.digest,
                    "captions": _sha(annotate.format_captions(caps)),
                    "prompt": load_prompt(c.qa_prompt).version,
                    "model": c.reasoner.model,
                    "categories": c.categories,
                    "per_category": c.questions_per_category,
                    "attempts": c.max_qa_attempts,
                    "temperature": c.reasoner.temperature,
                    "schema": _sha(json.dumps(qa_schema(), sort_keys=True)),
                    "generator": generator,
                }
            cached = self.cache.get("qa", parts)
            if cached is not None:
                return cached
            if c.annotator == "groundtruth":
                unit_value = annotate.groundtruth_qa(
                    json.loads(log_text), c.groundtruth_questions, it, generator
                )
            else:
                unit_value = await annotate.generate_qa(
                    self._endpoint("reasoner"),
                    load_prompt(c.qa_prompt),
                    it,
                    caps,
                    c.categories,
                    c.questions_per_category,
                    c.max_qa_attempts,
                    c.reasoner.temperature,
                    c.reasoner.max_tokens,
                    generator,
                )
            self.cache.put("qa", parts, unit_value)
            return unit_value

        results = await self._each("generate QA", unit, todo)
        records = []
        for it, res in zip(todo, results, strict=True):
            if isinstance(res, Exception):
                self.rejects.append(
                    Reject("qa", it.path, f"{type(res).__name__}: {res}", it.video_id)
                )
                continue
            if not res["records"]:  # nothing usable came back for this video
                reason = "; ".join(res["rejected"]) or "the reply held no questions"
                self.rejects.append(
                    Reject("qa", it.path, f"no valid questions: {reason}", it.video_id)
                )
                continue
            records += [QARecord.from_dict(r) for r in res["records"]]
            self.rejects += [
                Reject("qa", it.video_id, reason, it.video_id, kind="question")
                for reason in res["rejected"]
            ]
        return records

    async def rewrite(self, records: list[QARecord]) -> list[QARecord]:
        c, prompt = self.cfg, load_prompt(self.cfg.rewrite_prompt)

        async def unit(rec: QARecord) -> str:
            parts = {
                "record": rec.id,
                "reasoning": _sha(rec.reasoning),
                "prompt": prompt.version,
                "model": c.rewriter.model,
                "temperature": c.rewriter.temperature,
            }
            cached = self.cache.get("rewrite", parts)
            if cached is not None:
                return cached["reasoning"]
            text = await annotate.rewrite_reasoning(
                self._endpoint("rewriter"),
                prompt,
                rec.to_dict(),
                c.rewriter.temperature,
                c.rewriter.max_tokens,
            )
            self.cache.put("rewrite", parts, {"reasoning": text})
            return text

        results = await self._each("rewrite reasoning", unit, records)
        for rec, res in zip(records, results, strict=True):
            gen = json.loads(rec.generator)
            if isinstance(res, Exception):  # explicit: the record keeps its original reasoning
                self.rejects.append(
                    Reject(
                        "rewrite",
                        rec.id,
                        f"original reasoning kept: {res}",
                        rec.video_id,
                        rec.category,
                        kind="question",
                    )
                )
                gen["rewritten"] = False
            else:
                rec.reasoning = res
                gen.update(rewritten=True, rewriter=c.rewriter.model, rewrite_prompt=prompt.version)
            rec.generator = generator_json(**gen)
        return records

    def _make_answerer(self) -> Answerer | None:
        f = self.cfg.filter
        if self.answerer is not None or f.answerer == "none":
            return self.answerer
        if f.answerer == "noisy-oracle":
            return NoisyOracleAnswerer(f.oracle_seed)
        if f.answerer == "endpoint":
            return EndpointAnswerer(
                self._endpoint("filter"),
                load_prompt(self.cfg.answer_prompt),
                f.num_frames,
                self.cfg.frame_max_pixels,
                self.cfg.jpeg_quality,
                f.endpoint.temperature,
                f.endpoint.max_tokens,
                asyncio.Semaphore(self.cfg.decode_workers),
            )
        raise ValueError(
            "filter.answerer local needs an answerer object (the CLI builds it from --filter-model)"
        )

    async def filter(self, records: list[QARecord]) -> list[QARecord]:
        f = self.cfg.filter
        records, dups = near_duplicates(records, f.dedup_threshold)
        self.rejects += dups
        answerer = self._make_answerer()
        self.counts["filter"] = answerer.identity if answerer else "off"
        if answerer is None:
            return records

        async def unit(rec: QARecord) -> dict:
            parts = verdict_key(rec, answerer, f.k)
            cached = self.cache.get("verdict", parts)
            if cached is not None:
                return cached
            verdict = await judge(rec, answerer, f.k)
            self.cache.put("verdict", parts, verdict)
            return verdict

        results = await self._each(f"filter (k={f.k})", unit, records)
        judged, verdicts = [], {}
        for rec, res in zip(records, results, strict=True):
            if isinstance(res, Exception):
                reason = (
                    res.reason if isinstance(res, VideoError) else f"{type(res).__name__}: {res}"
                )
                self.rejects.append(
                    Reject(
                        "filter",
                        rec.id,
                        f"answerer failed: {reason}",
                        rec.video_id,
                        rec.category,
                        kind="question",
                    )
                )
            else:
                judged.append(rec)
                verdicts[rec.id] = res
        kept, dropped = apply_verdicts(judged, verdicts, f.drop_always_right, f.drop_always_wrong)
        self.rejects += dropped
        for rec in kept:
            rec.generator = generator_json(
                **json.loads(rec.generator), filter=answerer.identity, filter_k=f.k
            )
        return kept
