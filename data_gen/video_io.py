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
  On a variable-frame-rate file opencv's seek lands on the wrong frame (it converts the index to
  a time with the average rate), so there "opencv" reads forward with grab() as "opencv-seq".

Display orientation: a display matrix in the container (portrait phone videos: "rotate 90") is
applied by every backend the same way (`_Orientation`, from the matrix PyAV reads off the first
frame; opencv's own autorotation is switched off because it ignores mirroring), so frames come
out as a player shows them and `VideoInfo.width/height` are the displayed sides.

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
        raise VideoError(path, f"display matrix {list(m[:2]) + list(m[3:5])} is not a right-angle "
                               "rotation; re-encode the video upright (ffmpeg -i IN OUT applies it)")
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
        last = self.last_duration * self.time_base if self.last_duration > 0 else (
            float(np.median(np.diff(t))) if len(t) > 1 else 0.0)
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
        last_pts, last_duration = None, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    if packet.size and packet.pts is None:
                        raise VideoError(p, "packets without timestamps (raw stream); remux to mp4/mkv")
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
        return _Index(np.array(sorted(pts), dtype=np.int64), np.array(sorted(keys), dtype=np.int64),
                      int(stream.frames or 0), tb, last_duration, _orientation(container, stream, p),
                      float(rate) if rate else 0.0)
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
        if idx.orientation.swap:  # the displayed sides: a portrait phone video is taller than wide
            width, height = height, width
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
    vfr = idx.variable_rate(fps)
    info = VideoInfo(str(p), fps, count, width, height, codec, len(idx.key_pts), idx.orientation.rotation,
                     idx.orientation.mirrored, vfr, idx.span_s() if vfr else 0.0)
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
            frames = _read_pyav(p, idx, index)
        elif backend == "pyav-seq":
            frames = _read_pyav_sequential(p, idx, index)
        else:  # opencv's index seek is by average rate: wrong frames on a variable-rate file
            vfr = index.variable_rate(index.fps)
            frames = _read_opencv(p, idx, seek=backend == "opencv" and not vfr)
        return _oriented(frames, index.orientation)
    except av.error.FFmpegError as exc:
        raise VideoError(p, f"decoding failed ({exc})") from exc


def _rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _oriented(frames: np.ndarray, o: _Orientation) -> np.ndarray:
    if o == UPRIGHT:
        return frames
    return np.stack([o.apply(f) for f in frames])


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

    # raw pixels: the display matrix is applied by the caller, as for PyAV (opencv's own
    # autorotation knows only the angle and would turn a mirrored video the wrong way)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(path, "not a video container opencv can open")
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)
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
