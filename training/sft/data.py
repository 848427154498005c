"""SFT examples: records -> a scan that finds every example's length (and every bad example)
before training -> (tokens, video patches) for the examples a batch needs.

The scan decodes each video once (`scan_decode`; or only reads its header) in a thread pool,
split over the workers, and tokenises prompt + target. Bad examples - a missing or undecodable
video (data_gen.video_io.VideoError), a prompt + response longer than `max_seq_len`, an empty
answer or reasoning, a record that breaks the schema - are reported with their reason and
skipped, never replaced by something else. More bad examples than `max_bad_fraction` of the
records fails the run with `SFTDataError`. The scan result is cached in OUT/scan.json so a
resumed run does not scan again.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from data_gen.schema import QARecord
from data_gen.video_io import VideoError
from training.distributed import DistContext, all_gather_objects
from training.models.qwen3_vl import video_groups
from training.prompts import EncodedExample, encode_example, format_response
from training.sft.config import SFTConfig
from training.video_inputs import (
    VideoPatches,
    VideoSampling,
    VisionSpec,
    load_video_patches,
    no_video,
    planned_grid,
)

SCAN_FILE = "scan.json"
SKIPPED_FILE = "skipped.jsonl"


class SFTDataError(ValueError):
    """The data cannot be trained on (too many bad examples, nothing left)."""


@dataclass
class ScanEntry:
    """One record after the scan: usable (`reason` empty) with its lengths, or bad and why."""

    index: int  # position in the record list
    id: str
    video_path: str
    reason: str = ""  # why the example is skipped; empty when usable
    video_tokens: int = 0  # merged video tokens in the prompt
    frames: int = 0  # frames sampled from the video
    seq_len: int = 0  # prompt + response tokens
    loss_tokens: int = 0  # response tokens (the ones the loss is taken on)

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclass
class BadExample:
    """A skipped example, as written to OUT/skipped.jsonl."""

    id: str
    video_path: str
    reason: str
    stage: str  # "load" (schema), "scan" or "train" (failed when its batch was built)
    step: int = -1  # optimizer step when found during training


def sampling_for(record: QARecord, cfg: SFTConfig) -> VideoSampling:
    """The configured sampling, or the record's own frame spec when `use_record_frames`."""
    sampling = cfg.video.sampling
    if not cfg.use_record_frames:
        return sampling
    if record.num_frames > 0:
        return replace(sampling, num_frames=record.num_frames, fps=0.0)
    if record.sample_fps > 0:
        return replace(sampling, fps=record.sample_fps)
    return sampling


def clip_span(record: QARecord) -> tuple[float, float | None]:
    """The part of the video the question is about (whole video when no span is set)."""
    if record.clip_end_s > record.clip_start_s:
        return record.clip_start_s, record.clip_end_s
    return 0.0, None


def target_text(record: QARecord) -> str:
    return format_response(record.reasoning, record.answer)


def load_patches(record: QARecord, cfg: SFTConfig, spec: VisionSpec) -> VideoPatches:
    start, end = clip_span(record)
    return load_video_patches(record.video_path, sampling_for(record, cfg), spec, start, end)


def _video_plan(record: QARecord, cfg: SFTConfig, spec: VisionSpec) -> tuple[int, int, list | None] | str:
    """(video tokens, frames, Qwen3-VL frame groups or None) or the reason the video cannot be
    used. Qwen3-VL prompts hold each group's timestamp, so its videos are decoded in the scan."""
    if not record.has_video:
        return 0, 0, None  # a text-only record
    try:
        if cfg.scan_decode or spec.clip_budget:
            p = load_patches(record, cfg, spec)
            return p.num_tokens, p.grid_thw[0] * spec.temporal_patch_size, video_groups(p)
        start, end = clip_span(record)
        t, h, w = planned_grid(record.video_path, sampling_for(record, cfg), spec, start, end)
        return t * h * w // spec.merge_size**2, t * spec.temporal_patch_size, None
    except VideoError as exc:
        return f"video: {exc.reason}"
    except (ValueError, OSError) as exc:  # e.g. a span outside the video, unreadable file
        return f"video: {type(exc).__name__}: {exc}"


def scan_records(records: list[QARecord], indices: list[int], tokenizer, spec: VisionSpec,
                 cfg: SFTConfig) -> list[ScanEntry]:
    """Scan `records[i]` for i in `indices`: videos in threads, tokenising in this thread (a
    fast tokenizer must not be shared between threads)."""
    with ThreadPoolExecutor(max_workers=cfg.scan_threads) as pool:
        plans = list(pool.map(lambda i: _video_plan(records[i], cfg, spec), indices))
    out = []
    for i, plan in zip(indices, plans, strict=True):
        rec = records[i]
        entry = ScanEntry(index=i, id=rec.id, video_path=rec.video_path)
        if not str(rec.answer).strip():
            entry.reason = "empty answer"
        elif cfg.require_reasoning and not rec.reasoning.strip():
            entry.reason = "empty reasoning (the CoT-SFT target needs it)"
        elif isinstance(plan, str):
            entry.reason = plan
        else:
            entry.video_tokens, entry.frames, groups = plan
            enc = encode_example(tokenizer, rec, entry.video_tokens, response=target_text(rec),
                                 system_prompt=cfg.system_prompt, video_groups=groups)
            entry.seq_len, entry.loss_tokens = len(enc.input_ids), enc.response_len
            if entry.seq_len > cfg.max_seq_len:
                entry.reason = f"{entry.seq_len} tokens (prompt + response) > max_seq_len {cfg.max_seq_len}"
        out.append(entry)
    return out


def scan_key(records: list[QARecord], cfg: SFTConfig, spec: VisionSpec, tokenizer) -> str:
    """Everything the scan result depends on; a cached scan is reused only when it matches."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.video_path, r.video_digest, r.answer, r.reasoning, r.question,
                             r.options, r.clip_start_s, r.clip_end_s, r.num_frames, r.sample_fps]).encode())
    h.update(json.dumps([asdict(cfg.video.sampling), cfg.use_record_frames, cfg.system_prompt, cfg.max_seq_len,
                         cfg.require_reasoning, cfg.scan_decode, asdict(spec), len(tokenizer),
                         tokenizer.name_or_path]).encode())
    return h.hexdigest()


def scan_all(records: list[QARecord], tokenizer, spec: VisionSpec, cfg: SFTConfig, ctx: DistContext,
             cache_dir: Path | None = None) -> list[ScanEntry]:
    """Scan every record, each worker taking every world_size-th one; cached in cache_dir."""
    key = scan_key(records, cfg, spec, tokenizer)
    cache = cache_dir / SCAN_FILE if cache_dir else None
    if cache and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return [ScanEntry(**e) for e in data["entries"]]
    mine = scan_records(records, list(range(ctx.rank, len(records), ctx.world_size)), tokenizer, spec, cfg)
    entries = sorted((e for part in all_gather_objects(mine, ctx) for e in part), key=lambda e: e.index)
    if cache and ctx.is_main:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "entries": [asdict(e) for e in entries]}))
        tmp.replace(cache)
    return entries


def bad_from_scan(entries: list[ScanEntry]) -> list[BadExample]:
    return [BadExample(e.id, e.video_path, e.reason, "scan") for e in entries if not e.ok]


def check_bad_share(bad: list[BadExample], total: int, max_fraction: float) -> None:
    """Raise SFTDataError when more than `max_fraction` of `total` examples are bad."""
    if total and len(bad) / total > max_fraction:
        shown = "; ".join(f"{b.id} ({b.video_path}): {b.reason}" if b.video_path else f"{b.id}: {b.reason}"
                          for b in bad[:5])
        raise SFTDataError(
            f"{len(bad)} of {total} examples are bad ({len(bad) / total:.1%} > max_bad_fraction "
            f"{max_fraction:.1%}); first: {shown}. See {SKIPPED_FILE} in the output folder."
        )


def write_skipped(bad: list[BadExample], out_dir: Path) -> Path:
    path = out_dir / SKIPPED_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(b)) + "\n" for b in bad))
    tmp.replace(path)
    return path


@dataclass
class LoadedExample:
    """A batch row: its tokens, its video, and the scan entry it came from."""

    entry: ScanEntry
    encoded: EncodedExample
    video: VideoPatches


def load_video(record: QARecord, cfg: SFTConfig, spec: VisionSpec) -> VideoPatches:
    """The example's video input (what the step decodes, or a prefetch worker ahead of it)."""
    return load_patches(record, cfg, spec) if record.has_video else no_video()


def load_example(record: QARecord, entry: ScanEntry, tokenizer, spec: VisionSpec, cfg: SFTConfig,
                 video: VideoPatches | None = None) -> LoadedExample:
    """Decode the video (unless `video` was decoded ahead) and tokenise; VideoError when the
    video fails or no longer matches the scan (a file changed under the run)."""
    if video is None:
        video = load_video(record, cfg, spec)
    if video.num_tokens != entry.video_tokens:
        raise VideoError(record.video_path, f"now gives {video.num_tokens} video tokens, the scan found "
                                            f"{entry.video_tokens} (the file changed during the run)")
    enc = encode_example(tokenizer, record, video.num_tokens, response=target_text(record),
                         system_prompt=cfg.system_prompt, video_groups=video_groups(video))
    return LoadedExample(entry, enc, video)
