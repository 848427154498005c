"""Decode a video once and hand out the frames of its clips in order (issue 18.7).

The caption phase wants a few frames from each 10 s clip of a video. Reading each clip with
`video_io.read_frames` opens the file again and seeks to the keyframe before the clip's first
frame; on long-GOP files (x264's default GOP 250) that re-decodes the frames between that
keyframe and the clip start, which the previous clip had already decoded past (~1.4x the work
of one pass, measured in bench/bench_decode.py). Here one container stays open per video and one
decoder walks forward through every wanted frame of every clip: it seeks only when a keyframe
lies between its position and the next wanted frame (skipping GOPs nobody wants), never back.

Frame i is the i-th frame in presentation order (the timestamps of the container's packets,
sorted), as in video_io, and the pixels are the same as `read_frames` returns for the clip's
indices (tests/test_data_clips.py checks both on several GOP / B-frame layouts). Only the frames
of the clip being assembled are held: memory is one clip, whatever the video's length.

Anything unexpected mid-stream (a decoder that lands past its target, a frame that does not
decode) hands the remaining clips to `read_frames`, the reference path, so a damaged video
fails with exactly the reason the plain path gives, naming the same clip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen.video_io import VideoError, orient, read_frames


@dataclass
class ReaderStats:
    """Work done by one reader (summed by the build for its summary)."""

    opens: int = 0  # containers opened
    seeks: int = 0
    decoded: int = 0  # frames out of the decoder
    kept: int = 0  # of which wanted by a clip
    fallbacks: int = 0  # clips handed to read_frames after a mid-stream surprise

    def add(self, other: ReaderStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Packets:
    pts: np.ndarray  # every frame's presentation timestamp, sorted
    key_pts: np.ndarray  # keyframes' timestamps, sorted


def _packets(container, stream, path: Path) -> _Packets:
    """The packet index (one demux pass: no decoding, ~1 % of a decode pass)."""
    import av

    pts, keys = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"container is damaged after {len(pts)} frames ({exc})") from exc
    return _Packets(np.array(sorted(pts), dtype=np.int64), np.array(sorted(keys), dtype=np.int64))


def iter_clips(path: str | os.PathLike[str], clips: list[np.ndarray],
               stats: ReaderStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (j, frames of clips[j] as uint8 RGB [T, H, W, 3]) for every clip, each as soon as
    its last frame is decoded, in the order of the clips' last frames. Indices may repeat and
    clips may overlap. Raises VideoError like read_frames (for the first clip that fails)."""
    import av

    p = Path(path)
    stats = stats if stats is not None else ReaderStats()
    wants = [np.asarray(c, dtype=np.int64).reshape(-1) for c in clips]
    if not wants:
        return
    if any(w.size == 0 for w in wants):
        raise VideoError(p, "no frame indices requested")
    order = sorted(range(len(wants)), key=lambda j: (int(wants[j].max()), j))
    done: set[int] = set()
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError):
        container = None  # read_frames below says why, in its own words
    if container is None or not container.streams.video:
        if container is not None:
            container.close()
        yield from _fallback(p, wants, order, done, stats)
        return
    stats.opens += 1
    try:
        stream = container.streams.video[0]
        index = _packets(container, stream, p)
        n = len(index.pts)
        for j in order:
            bad = wants[j][(wants[j] < 0) | (wants[j] >= n)]
            if bad.size:  # the plain path's error, for the first clip that has one
                yield from _fallback(p, wants, [k for k in order if k not in done], done, stats)
                return
        stream.thread_type = "AUTO"
        needed_by: dict[int, int] = {}  # frame -> clips still waiting for it
        for w in wants:
            for i in np.unique(w).tolist():
                needed_by[i] = needed_by.get(i, 0) + 1
        frames: dict[int, np.ndarray] = {}
        decoder, last_pts = None, None
        for j in order:
            for i in np.unique(wants[j]).tolist():
                if i in frames:
                    continue
                target = int(index.pts[i])
                k = int(np.searchsorted(index.key_pts, target, side="right")) - 1
                key = int(index.key_pts[max(k, 0)]) if len(index.key_pts) else int(index.pts[0])
                if decoder is None or last_pts is None or target <= last_pts or key > last_pts:
                    container.seek(key, stream=stream, backward=True, any_frame=False)
                    decoder, last_pts = container.decode(stream), None
                    stats.seeks += 1
                got = None
                try:
                    for frame in decoder:
                        stats.decoded += 1
                        if frame.pts is None:
                            break
                        last_pts = int(frame.pts)
                        if last_pts >= target:
                            got = frame if last_pts == target else None
                            break
                except av.error.FFmpegError:
                    got = None
                if got is None:  # a surprise: the reference path takes over from this clip
                    frames.clear()
                    container.close()
                    container = None
                    yield from _fallback(p, wants, [k for k in order if k not in done], done, stats)
                    return
                frames[i] = orient(p, got.to_ndarray(format="rgb24"))  # display matrix, as read_frames
                stats.kept += 1
            out = np.stack([frames[i] for i in wants[j].tolist()])
            for i in np.unique(wants[j]).tolist():  # free what no later clip wants
                needed_by[i] -= 1
                if needed_by[i] == 0:
                    del frames[i]
            done.add(j)
            yield j, out
    finally:
        if container is not None:
            container.close()


def _fallback(path: Path, wants: list[np.ndarray], todo: list[int], done: set[int],
              stats: ReaderStats) -> Iterator[tuple[int, np.ndarray]]:
    for j in todo:
        stats.fallbacks += 1
        frames = read_frames(path, wants[j])
        done.add(j)
        yield j, frames
