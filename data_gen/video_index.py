"""Display matrix, packet index and timing of a video (split from data_gen.video_io, which
re-exports every name here): what a file *is* - its frames' timestamps, keyframes, display
orientation, constant or variable rate - and which frames a sample takes and at what times. The
decoders that turn indices into pixels are in data_gen.video_io.

Display orientation: a display matrix in the container (portrait phone videos: "rotate 90") is
applied by every backend the same way (`_Orientation`, from the matrix PyAV reads off the first
frame), so frames come out as a player shows them.

Timing: frame i's time is its presentation timestamp minus the first frame's. A constant-rate
stream (every timestamp within a quarter frame of i / fps) keeps the exact index arithmetic
i / fps; a variable-frame-rate stream samples and reports times from the timestamps
(`sample_indices`, `frame_times`) and its duration runs to the end of its last frame.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

_STILL_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "gif", "bmp_pipe", "tiff_pipe")


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
    codec: str = ""
    keyframes: int = 0  # number of keyframes (GOP length ~ frame_count / keyframes)
    rotation: int = 0  # display rotation applied to the frames, degrees counter-clockwise
    mirrored: bool = False  # the display matrix also mirrors (applied too)
    vfr: bool = False  # variable frame rate: times come from the timestamps, not i / fps
    span_s: float = 0.0  # VFR: first frame's start to last frame's end; 0: frame_count / fps

    @property
    def duration_s(self) -> float:
        return self.span_s if self.span_s > 0 else self.frame_count / self.fps


@dataclass(frozen=True)
class _Orientation:
    """How to turn decoded pixels into displayed ones, from a display matrix (FFmpeg's layout:
    displayed x' = a*x + c*y, y' = b*x + d*y, plus a translation): swap the axes (a quarter
    turn), then flip rows and/or columns."""

    swap: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    rotation: int = 0  # for reporting: degrees counter-clockwise
    mirrored: bool = False

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.swap:
            rgb = rgb.transpose(1, 0, 2)
        if self.flip_rows:
            rgb = rgb[::-1]
        if self.flip_cols:
            rgb = rgb[:, ::-1]
        return np.ascontiguousarray(rgb) if (self.swap or self.flip_rows or self.flip_cols) else rgb


UPRIGHT = _Orientation()


def orientation_from_matrix(path: str | os.PathLike[str], m: tuple[int, ...]) -> _Orientation:
    """The right-angle rotation/mirroring a 3x3 display matrix (9 ints, 16.16 fixed point)
    describes; VideoError for any other (a skew or a 30-degree turn cannot be shown upright)."""
    a, b, c, d = (float(v) for v in (m[0], m[1], m[3], m[4]))
    big = max(abs(a), abs(b), abs(c), abs(d))
    if big == 0:
        return UPRIGHT
    tol = 0.01 * big

    def zero(v: float) -> bool:
        return abs(v) <= tol

    if zero(b) and zero(c) and not zero(a) and not zero(d):
        o = _Orientation(False, d < 0, a < 0)
    elif zero(a) and zero(d) and not zero(b) and not zero(c):
        o = _Orientation(True, b < 0, c < 0)
    else:
        raise VideoError(
            path,
            f"display matrix {list(m[:2]) + list(m[3:5])} is not a right-angle "
            "rotation; re-encode the video upright (ffmpeg -i IN OUT applies it)",
        )
    mirrored = (a * d - b * c) < 0
    # rotation for reporting: the quarter turns k with np.rot90(x, k) (mirrored: then fliplr)
    for k in range(4):
        probe = np.arange(6).reshape(2, 3, 1)
        ref = np.rot90(probe, k)
        if mirrored:
            ref = ref[:, ::-1]
        if np.array_equal(o.apply(probe), ref):
            return _Orientation(o.swap, o.flip_rows, o.flip_cols, 90 * k, mirrored)
    raise AssertionError("unreachable: 8 right-angle cases")


@dataclass(frozen=True)
class _Index:
    """Presentation timestamps of all frames (sorted) and of the keyframes, in stream units."""

    pts: np.ndarray
    key_pts: np.ndarray
    declared: int  # frame count the container header claims (0 if unknown)
    time_base: float = 0.0  # seconds per stream unit
    last_duration: int = 0  # the last frame's duration in stream units (0: unknown)
    orientation: _Orientation = UPRIGHT
    fps: float = 0.0  # the stream's average rate (what index arithmetic i / fps assumes)

    def times(self) -> np.ndarray:
        """Seconds of each frame (presentation order) from the first frame."""
        return (self.pts - self.pts[0]).astype(np.float64) * self.time_base

    def span_s(self) -> float:
        """First frame's start to the last frame's end, from the timestamps."""
        t = self.times()
        last = (
            self.last_duration * self.time_base
            if self.last_duration > 0
            else (float(np.median(np.diff(t))) if len(t) > 1 else 0.0)
        )
        return float(t[-1] + last)

    def variable_rate(self, fps: float) -> bool:
        """Timestamps that i / fps does not reproduce to within a quarter frame."""
        if len(self.pts) < 3 or self.time_base <= 0 or fps <= 0:
            return False
        return bool(np.max(np.abs(self.times() - np.arange(len(self.pts)) / fps)) > 0.25 / fps)


def _open(path: Path):
    import av

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    is_mp4 = head[4:8] == b"ftyp"
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if is_mp4:  # an MP4 whose index (moov box, written last) is missing: cut short
            raise VideoError(
                path, f"truncated or damaged MP4/MOV: no readable index ({exc})"
            ) from exc
        raise VideoError(path, f"not a readable video container ({exc})") from exc
    if container.format.name in _STILL_FORMATS or container.format.name.endswith("_pipe"):
        container.close()
        raise VideoError(path, f"a still image ({container.format.name}), not a video")
    if not container.streams.video:
        container.close()
        if is_mp4 and b"vide" in head:  # ffmpeg hides a video track that holds no samples
            raise VideoError(path, "no frames (the video track is empty)")
        raise VideoError(path, "no video stream in the container")
    return container


def _check_file(p: Path) -> None:
    if not p.exists():
        raise VideoError(p, "file does not exist")
    if not p.is_file():
        raise VideoError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(p, "file is empty (0 bytes)")


@lru_cache(maxsize=128)
def _index_cached(path: str, size: int, mtime_ns: int) -> _Index:
    import av

    p = Path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        pts, keys = [], []
        last_pts, last_duration = None, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    if packet.size and packet.pts is None:
                        raise VideoError(
                            p, "packets without timestamps (raw stream); remux to mp4/mkv"
                        )
                    continue
                pts.append(packet.pts)
                if last_pts is None or packet.pts > last_pts:
                    last_pts, last_duration = packet.pts, int(packet.duration or 0)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise VideoError(p, f"container is damaged after {len(pts)} frames ({exc})") from exc
        tb = float(stream.time_base) if stream.time_base else 0.0
        rate = stream.average_rate or stream.guessed_rate
        return _Index(
            np.array(sorted(pts), dtype=np.int64),
            np.array(sorted(keys), dtype=np.int64),
            int(stream.frames or 0),
            tb,
            last_duration,
            _orientation(container, stream, p),
            float(rate) if rate else 0.0,
        )
    finally:
        container.close()


def _orientation(container, stream, path: Path) -> _Orientation:
    """The display matrix of the stream, as FFmpeg hands it to the first decoded frame."""
    import av

    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        frame = next(iter(container.decode(stream)), None)
    except (av.error.FFmpegError, StopIteration):
        return UPRIGHT  # an undecodable first frame is reported by probe_video's own decode
    if frame is None:
        return UPRIGHT
    for sd in frame.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            raw = bytes(sd)
            if len(raw) >= 36:
                return orientation_from_matrix(path, struct.unpack("<9i", raw[:36]))
    return UPRIGHT


def _index(path: str | os.PathLike[str]) -> _Index:
    p = Path(path)
    _check_file(p)
    st = p.stat()
    return _index_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


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
        raise VideoError(
            info.path, f"empty time span [{start_s}, {end_s}) (duration {info.duration_s:.2f} s)"
        )
    times = _index(info.path).times() if info.vfr else None
    if times is not None:  # the frames shown at start and just before end, by their timestamps
        first = max(0, int(np.searchsorted(times, start, side="right")) - 1)
        last = max(first, int(np.searchsorted(times, end, side="left")) - 1)
    else:
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
    if times is not None:  # the frame on screen at each segment centre's time
        centres_s = start + (np.arange(n) + 0.5) * (end - start) / n
        shown = np.searchsorted(times, centres_s, side="right") - 1
        return np.clip(shown.astype(np.int64), first, last)
    centres = first + (np.arange(n) + 0.5) * available / n
    return np.clip(np.floor(centres).astype(np.int64), first, last)


def frame_times(info: VideoInfo, indices: np.ndarray | list[int]) -> list[float]:
    """Seconds of each frame index from the start (what the model is told): i / fps on a
    constant-rate stream, the frame's own timestamp on a variable-rate one."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if info.vfr:
        return [float(t) for t in _index(info.path).times()[idx]]
    return [float(i) / info.fps for i in idx.tolist()]


def orient(path: str | os.PathLike[str], rgb: np.ndarray) -> np.ndarray:
    """Decoded RGB pixels [H, W, 3] of `path` as displayed (its display matrix applied): for
    readers outside this module that decode the file themselves (data_gen.clip_reader)."""
    return _index(path).orientation.apply(rgb)
