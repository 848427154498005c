"""Probe, sample and decode video frames - frame-accurately, and never with a substitute.

An unreadable video raises VideoError naming the file and the reason; callers record it and skip
the item. Nothing here returns black frames or another video's frames.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# A frame larger than this (pixels) is treated as corrupt metadata rather than decoded.
MAX_FRAME_PIXELS = 8192 * 8192


class VideoError(ValueError):
    """A video that cannot be used; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's geometry and length, checking that it is a real, decodable video."""
    p = Path(path)
    if not p.exists():
        raise VideoError(p, "file does not exist")
    if not p.is_file():
        raise VideoError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(p, "file is empty (0 bytes)")
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise VideoError(p, "not a video container opencv can open")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width <= 0 or height <= 0:
            raise VideoError(p, f"no video stream (size {width}x{height})")
        if width * height > MAX_FRAME_PIXELS:
            raise VideoError(p, f"absurd frame size {width}x{height}")
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            raise VideoError(p, f"invalid frame rate {fps}")
        if count <= 0:
            raise VideoError(p, "no frames")
        ok, _ = cap.read()
        if not ok:
            raise VideoError(p, "first frame cannot be decoded")
        # Containers of truncated files often still claim the original frame count: check that
        # the last claimed frame decodes, and shrink the count to what really decodes.
        count = _decodable_count(cap, count, p)
    finally:
        cap.release()
    return VideoInfo(str(p), fps, count, width, height)


def _decodable_count(cap: cv2.VideoCapture, claimed: int, path: Path) -> int:
    cap.set(cv2.CAP_PROP_POS_FRAMES, claimed - 1)
    ok, _ = cap.read()
    if ok:
        return claimed
    lo, hi = 0, claimed - 1  # frame lo decodes, frame hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cap.set(cv2.CAP_PROP_POS_FRAMES, mid)
        ok, _ = cap.read()
        lo, hi = (mid, hi) if ok else (lo, mid)
    if lo + 1 < max(2, claimed // 2):
        raise VideoError(path, f"truncated: only {lo + 1} of {claimed} frames decode")
    return lo + 1


def sample_indices(
    info: VideoInfo,
    num_frames: int = 0,
    fps: float = 0.0,
    min_frames: int = 1,
    max_frames: int = 100_000,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """Frame indices to decode: `num_frames` uniformly spaced, or `fps` frames per second bounded
    by [min_frames, max_frames], inside [start_s, end_s). Uses segment centres so the first and
    last frames of a span are not over-represented."""
    end = info.duration_s if end_s is None else min(end_s, info.duration_s)
    start = max(0.0, start_s)
    if end <= start:
        raise VideoError(info.path, f"empty time span [{start_s}, {end_s}) (duration {info.duration_s:.2f} s)")
    first = int(math.floor(start * info.fps))
    last = max(first, min(info.frame_count - 1, int(math.ceil(end * info.fps)) - 1))
    available = last - first + 1
    if num_frames > 0:
        n = num_frames
    elif fps > 0:
        n = int(round((end - start) * fps))
        n = max(min_frames, min(max_frames, n))
    else:
        raise ValueError("give num_frames > 0 or fps > 0")
    # Sampling more frames than exist repeats frames (a 2 s clip at 8 frames from a 2 fps video):
    # allowed, because the repetition is of the same video and is visible in the indices.
    centres = first + (np.arange(n) + 0.5) * available / n
    return np.clip(np.floor(centres).astype(np.int64), first, last)


def read_frames(path: str | os.PathLike[str], indices: np.ndarray | list[int]) -> np.ndarray:
    """Decode exactly the frames at `indices` (any order, repeats allowed) as uint8 RGB
    [T, H, W, 3]. Seeks for sparse indices, reads sequentially for dense ones."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise VideoError(path, "no frame indices requested")
    wanted = np.unique(idx)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(path, "not a video container opencv can open")
    frames: dict[int, np.ndarray] = {}
    try:
        pos = -1
        for i in wanted.tolist():
            if i != pos + 1 and (i - pos > 8 or pos < 0):
                cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                pos = i - 1
            while pos < i:
                ok = cap.grab()
                if not ok:
                    raise VideoError(path, f"frame {i} cannot be decoded")
                pos += 1
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                raise VideoError(path, f"frame {i} cannot be decoded")
            frames[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return np.stack([frames[i] for i in idx.tolist()])
