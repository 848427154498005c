"""Which videos a build reads, and what each one is: discovery, probing, digests, clips, frames.

`--videos` is a folder (every video file under it), a JSONL manifest (one {"path", "video_id"?}
per line, relative paths against the manifest's folder) or a `longrl synth` folder (its
manifest.json). A file that cannot be used becomes a Reject with its reason - never a stand-in.
Two files with the same bytes are one video (the second is rejected as a duplicate), so no
video can reach two splits under two names.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen.clip_reader import ReaderStats, iter_clips
from data_gen.synth import MANIFEST, events_path, file_digest
from data_gen.video_io import VideoError, VideoInfo, probe_video, read_frames, sample_indices

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass(frozen=True)
class Reject:
    stage: str  # probe, caption, qa, rewrite, dedup, filter, ...
    item: str  # video id / path, or record id
    reason: str
    video_id: str = ""
    category: str = ""
    kind: str = "video"  # "video" (the whole video is out) or "question"

    def to_dict(self) -> dict:
        return {"stage": self.stage, "kind": self.kind, "item": self.item, "video_id": self.video_id,
                "category": self.category, "reason": self.reason}


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: str  # absolute
    digest: str
    info: VideoInfo

    @property
    def duration_s(self) -> float:
        return self.info.duration_s

    @property
    def events_path(self) -> Path:
        return events_path(self.path)


def discover(videos: str | Path) -> tuple[list[tuple[str, Path]], list[Reject]]:
    """(video_id, path) candidates in a stable order, plus rejects for unusable manifest lines."""
    src = Path(videos)
    rejects: list[Reject] = []
    if src.is_dir() and (src / MANIFEST).is_file():
        manifest = json.loads((src / MANIFEST).read_text())
        return [(v["video_id"], (src / v["path"]).resolve()) for v in manifest["videos"]], rejects
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        stems = [p.stem for p in files]
        out = []
        for p in files:
            vid = p.stem if stems.count(p.stem) == 1 else str(p.relative_to(src).with_suffix("")).replace("/", "__")
            out.append((vid, p.resolve()))
        return out, rejects
    if src.is_file():
        out, seen = [], set()
        for n, line in enumerate(src.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = Path(row["path"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                rejects.append(Reject("manifest", f"{src}:{n}", f"bad manifest line ({exc!r})"))
                continue
            path = (path if path.is_absolute() else src.parent / path).resolve()
            vid = str(row.get("video_id") or path.stem)
            if vid in seen:
                rejects.append(Reject("manifest", f"{src}:{n}", f"video_id {vid} appears twice", vid))
                continue
            seen.add(vid)
            out.append((vid, path))
        return out, rejects
    raise FileNotFoundError(f"--videos {src}: not a folder or a JSONL manifest")


def probe(video_id: str, path: Path) -> VideoItem:
    """Probe and digest one video (VideoError when it cannot be used)."""
    info = probe_video(path)
    return VideoItem(video_id, str(path), file_digest(path), info)


def drop_duplicates(items: list[VideoItem]) -> tuple[list[VideoItem], list[Reject]]:
    seen: dict[str, str] = {}
    kept, rejects = [], []
    for it in items:
        if it.digest in seen:
            rejects.append(Reject("probe", it.path, f"same bytes as video {seen[it.digest]}", it.video_id))
        else:
            seen[it.digest] = it.video_id
            kept.append(it)
    return kept, rejects


def clip_spans(duration_s: float, clip_s: float, min_tail_s: float) -> list[tuple[float, float]]:
    """Consecutive [start, end) clips of `clip_s`; a last clip shorter than `min_tail_s` joins
    the one before it."""
    spans, t = [], 0.0
    while t < duration_s - 1e-9:
        spans.append((round(t, 3), round(min(t + clip_s, duration_s), 3)))
        t += clip_s
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < min_tail_s:
        last = spans.pop()
        spans[-1] = (spans[-1][0], last[1])
    return spans


def shrink(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    if h * w <= max_pixels:
        return frame
    scale = (max_pixels / (h * w)) ** 0.5
    return cv2.resize(frame, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


def jpeg_urls(path: str, frames: np.ndarray, max_pixels: int, quality: int) -> list[str]:
    """uint8 RGB frames -> shrunk JPEG data URLs (VideoError if one cannot be encoded)."""
    import cv2

    urls = []
    for rgb in frames:
        ok, buf = cv2.imencode(".jpg", shrink(rgb, max_pixels)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise VideoError(path, "a frame could not be encoded as JPEG")
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode())
    return urls


def span_images(item: VideoItem, start: float, end: float | None, num_frames: int, max_pixels: int,
                quality: int) -> list[str]:
    """`num_frames` frames of [start, end) (end None: to the end) as JPEG data URLs (VideoError
    if they do not decode)."""
    idx = sample_indices(item.info, num_frames=num_frames, start_s=start, end_s=end)
    return jpeg_urls(item.path, read_frames(item.path, idx), max_pixels, quality)


CLIP_DECODE = ("stream", "per-clip")


def clip_images(item: VideoItem, clips: list[tuple[float, float, int]], max_pixels: int, quality: int,
                mode: str = "stream", stats: ReaderStats | None = None) -> Iterator[tuple[int, list[str]]]:
    """(j, JPEG data URLs) for clips[j] = (start, end, frames), in order. "stream": the video is
    decoded once for all clips (data_gen.clip_reader); "per-clip": each clip opens and seeks
    its file (span_images, the plain path). Same frames, same bytes (tests/test_data_clips.py).
    A generator: the caller pulls one clip at a time, so only one clip's frames are alive."""
    if mode == "per-clip":
        for j, (a, b, n) in enumerate(clips):
            yield j, span_images(item, a, b, n, max_pixels, quality)
        return
    if mode != "stream":
        raise ValueError(f"clip decode {mode!r} not in {CLIP_DECODE}")
    idx = [sample_indices(item.info, num_frames=n, start_s=a, end_s=b) for a, b, n in clips]
    for j, frames in iter_clips(item.path, idx, stats):
        yield j, jpeg_urls(item.path, frames, max_pixels, quality)
