"""Probe, sample and decode video frames - frame-accurately, and never with a substitute.

An unreadable video raises VideoError naming the file and the reason; callers record it and skip
the item. Nothing here returns black frames or another video's frames.

Decoding (see bench/bench_decode.py for the measured reasons):
- "pyav" (default): the container's packet index gives every frame's timestamp and the
  keyframes. For each wanted frame we seek to the keyframe before it only when that is cheaper
  than decoding forward from where the decoder already is, then decode until the frame whose
  timestamp is exactly the wanted one. Frame i is therefore the i-th frame in presentation
  order, whatever the GOP or B-frame layout.
- "pyav-seq": decode everything from the start, keep the wanted frames (the plain path the
  others are tested against).
- "opencv": opencv's CAP_PROP_POS_FRAMES seeking; "opencv-seq": opencv grab() through the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

MAX_SIDE = 16384  # a side longer than this is corrupt metadata, not a video to decode
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FPS = 1000.0
MAX_DURATION_S = 48 * 3600.0
BACKENDS = ("pyav", "pyav-seq", "opencv", "opencv-seq")
DEFAULT_BACKEND = "pyav"
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

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps


@dataclass(frozen=True)
class _Index:
    """Presentation timestamps of all frames (sorted) and of the keyframes, in stream units."""

    pts: np.ndarray
    key_pts: np.ndarray
    declared: int  # frame count the container header claims (0 if unknown)


def _open(path: Path):
    import av

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    is_mp4 = head[4:8] == b"ftyp"
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        if is_mp4:  # an MP4 whose index (moov box, written last) is missing: cut short
            raise VideoError(path, f"truncated or damaged MP4/MOV: no readable index ({exc})") from exc
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
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    if packet.size and packet.pts is None:
                        raise VideoError(p, "packets without timestamps (raw stream); remux to mp4/mkv")
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise VideoError(p, f"container is damaged after {len(pts)} frames ({exc})") from exc
        return _Index(np.array(sorted(pts), dtype=np.int64), np.array(sorted(keys), dtype=np.int64),
                      int(stream.frames or 0))
    finally:
        container.close()


def _index(path: str | os.PathLike[str]) -> _Index:
    p = Path(path)
    _check_file(p)
    st = p.stat()
    return _index_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's geometry and length, checking that it is a real, complete, decodable video
    (first and last frame decode; the container's frame count is all there)."""
    import av

    p = Path(path)
    _check_file(p)
    idx = _index(p)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError(p, f"no usable video stream (size {width}x{height})")
        if max(width, height) > MAX_SIDE or width * height > MAX_FRAME_PIXELS:
            raise VideoError(p, f"absurd frame size {width}x{height}")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if not math.isfinite(fps) or fps <= 0 or fps > MAX_FPS:
            raise VideoError(p, f"invalid frame rate {fps}")
        count = len(idx.pts)
        if count == 0:
            raise VideoError(p, "no frames")
        if idx.declared and count < idx.declared:
            raise VideoError(p, f"truncated: {count} of {idx.declared} frames are in the file")
        if count / fps > MAX_DURATION_S:
            raise VideoError(p, f"absurd duration {count / fps:.0f} s")
        codec = cc.name
    finally:
        container.close()
    info = VideoInfo(str(p), fps, count, width, height, codec, len(idx.key_pts))
    try:  # truncated data hides behind a complete index: the last frame must really decode
        _read_pyav(p, np.array([0, count - 1]), idx)
    except VideoError as exc:
        raise VideoError(p, f"truncated or damaged: {exc.reason}") from exc
    except av.error.FFmpegError as exc:
        raise VideoError(p, f"truncated or damaged: {exc}") from exc
    return info


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


def read_frames(path: str | os.PathLike[str], indices: np.ndarray | list[int],
                backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """Decode exactly the frames at `indices` (any order, repeats allowed) as uint8 RGB
    [T, H, W, 3]. Frame i is the i-th frame in presentation order."""
    import av

    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise VideoError(path, "no frame indices requested")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {BACKENDS}")
    p = Path(path)
    index = _index(p)
    n = len(index.pts)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise VideoError(p, f"frame {int(bad[0])} out of range (video has {n} frames)")
    try:
        if backend == "pyav":
            return _read_pyav(p, idx, index)
        if backend == "pyav-seq":
            return _read_pyav_sequential(p, idx, index)
        return _read_opencv(p, idx, seek=backend == "opencv")
    except av.error.FFmpegError as exc:
        raise VideoError(p, f"decoding failed ({exc})") from exc


def _rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _gather(path: Path, idx: np.ndarray, frames: dict[int, np.ndarray]) -> np.ndarray:
    missing = [i for i in np.unique(idx).tolist() if i not in frames]
    if missing:
        raise VideoError(path, f"frame {missing[0]} cannot be decoded")
    return np.stack([frames[i] for i in idx.tolist()])


def _read_pyav(path: Path, idx: np.ndarray, index: _Index) -> np.ndarray:
    """Keyframe-aware seeking: decode the fewest frames that reach every wanted frame."""
    container = _open(path)
    frames: dict[int, np.ndarray] = {}
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoder = None
        last_pts: int | None = None  # timestamp of the last frame the decoder produced
        for i in np.unique(idx).tolist():
            target = int(index.pts[i])
            k = int(np.searchsorted(index.key_pts, target, side="right")) - 1
            key = int(index.key_pts[max(k, 0)]) if len(index.key_pts) else int(index.pts[0])
            # Seek when going backwards or when a keyframe lies between us and the target.
            if decoder is None or last_pts is None or target <= last_pts or key > last_pts:
                decoder, last_pts = _seek(container, stream, index, k), None
            for frame in decoder:
                if frame.pts is None:
                    raise VideoError(path, "decoded frame without a timestamp")
                last_pts = int(frame.pts)
                if last_pts == target:
                    frames[i] = _rgb(frame)
                    break
                if last_pts > target:  # landed past it (decoder started late): go further back
                    decoder, last_pts = _refind(container, stream, index, k, target, path, frames, i)
                    break
            else:
                raise VideoError(path, f"frame {i} cannot be decoded (stream ended at pts {last_pts})")
    finally:
        container.close()
    return _gather(path, idx, frames)


def _seek(container, stream, index: _Index, k: int):
    key = int(index.key_pts[k]) if k >= 0 and len(index.key_pts) else int(index.pts[0])
    container.seek(key, stream=stream, backward=True, any_frame=False)
    return container.decode(stream)


def _refind(container, stream, index, k, target, path, frames, i):
    for kk in range(k - 1, -2, -1):
        decoder = _seek(container, stream, index, kk)
        for frame in decoder:
            if frame.pts is not None and int(frame.pts) == target:
                frames[i] = _rgb(frame)
                return decoder, int(frame.pts)
            if frame.pts is not None and int(frame.pts) > target:
                break
        if kk < 0:
            break
    raise VideoError(path, f"frame {i} cannot be reached by seeking")


def _read_pyav_sequential(path: Path, idx: np.ndarray, index: _Index) -> np.ndarray:
    container = _open(path)
    frames: dict[int, np.ndarray] = {}
    wanted = {int(index.pts[i]): i for i in np.unique(idx).tolist()}
    stop = max(wanted)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.pts in wanted:
                frames[wanted[frame.pts]] = _rgb(frame)
            if frame.pts is not None and frame.pts >= stop:
                break
    finally:
        container.close()
    return _gather(path, idx, frames)


def _read_opencv(path: Path, idx: np.ndarray, seek: bool) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(path, "not a video container opencv can open")
    frames: dict[int, np.ndarray] = {}
    try:
        pos = -1  # index of the last frame grabbed
        for i in np.unique(idx).tolist():
            if seek and i > pos + 1:
                cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                pos = i - 1
            while pos < i:
                if not cap.grab():
                    raise VideoError(path, f"frame {i} cannot be decoded")
                pos += 1
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                raise VideoError(path, f"frame {i} cannot be decoded")
            frames[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return _gather(path, idx, frames)
