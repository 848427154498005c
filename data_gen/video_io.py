"""Probe, sample and decode video frames - frame-accurately, and never with a substitute.

An unreadable video raises VideoError naming the file and the reason; callers record it and skip
the item. Nothing here returns black frames or another video's frames. This module holds the
probe and the decoders; the packet index, display matrix, timing and sampling are in
data_gen.video_index (re-exported here, so `from data_gen.video_io import ...` is the one import).

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
from pathlib import Path

import numpy as np

# The file's index, orientation and timing (and the sampling that uses them) live in
# data_gen.video_index; re-exported so every `from data_gen.video_io import ...` keeps working.
from data_gen.video_index import (  # noqa: F401 - re-exported
    UPRIGHT,
    VideoError,
    VideoInfo,
    _check_file,
    _Index,
    _index,
    _index_cached,
    _open,
    _Orientation,
    _orientation,
    frame_times,
    orient,
    orientation_from_matrix,
    sample_indices,
)

MAX_SIDE = 16384  # a side longer than this is corrupt metadata, not a video to decode
MAX_FRAME_PIXELS = 8192 * 8192
MAX_FPS = 1000.0
MAX_DURATION_S = 48 * 3600.0
BACKENDS = ("pyav", "pyav-seq", "opencv", "opencv-seq")
DEFAULT_BACKEND = "pyav"


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
