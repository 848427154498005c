"""Draw the synthetic world's event log as video frames and encode them (opencv / PyAV).

Big flat shapes on a plain dark background, one 2x3 grid of named regions: a frame sampled
anywhere in a slot's still part shows every object's region, colour and size unambiguously.
Frames are rendered from the log alone, so the log is the ground truth of what is on screen.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from data_gen.synth_world import BACKGROUND, COLOURS, GRID_COLS, GRID_ROWS, MAX_OBJECTS, REGIONS

CODECS = ("mp4v", "h264")
BIG_SCALE = 1.5
# SynthConfig.object_scale: up to 1.0 every object keeps to its cell of the region's 2x2
# sub-grid (several objects per region never overlap); above it a lone object is drawn at its
# region's centre - up to 2.5 it covers most of its region and stays inside it, beyond that (up
# to 8) it spreads over the frame: the bottom, colour-only rungs of the task ladder.
MAX_OBJECT_SCALE_IN_REGION = 1.0
MAX_OBJECT_SCALE_REGION_KEPT = 2.5
MAX_OBJECT_SCALE = 8.0
BORDER = (72, 72, 72)


def object_center(region: str, obj_index: int, width: int, height: int) -> tuple[float, float]:
    """Pixel centre of object number `obj_index` inside `region` (each object has its own cell
    of a 2x2 sub-grid, so objects sharing a region never cover each other)."""
    r, c = divmod(REGIONS.index(region), GRID_COLS)
    rw, rh = width / GRID_COLS, height / GRID_ROWS
    sr, sc = divmod(obj_index % MAX_OBJECTS, 2)
    return c * rw + (sc + 0.5) * rw / 2, r * rh + (sr + 0.5) * rh / 2


def region_center(region: str, obj_index: int, width: int, height: int) -> tuple[float, float]:
    """Centre of `region` (where a lone, large object is drawn; obj_index is unused)."""
    r, c = divmod(REGIONS.index(region), GRID_COLS)
    return (c + 0.5) * width / GRID_COLS, (r + 0.5) * height / GRID_ROWS


def object_radius(width: int, height: int) -> float:
    return 0.36 * min(width / GRID_COLS / 2, height / GRID_ROWS / 2)


def _polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "square":
        k = r * 0.85
        pts = [(cx - k, cy - k), (cx + k, cy - k), (cx + k, cy + k), (cx - k, cy + k)]
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a))
               for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    elif shape == "hexagon":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a))
               for a in np.arange(6) * math.pi / 3]
    elif shape == "star":
        pts = [(cx + (r if i % 2 == 0 else r * 0.5) * math.cos(-math.pi / 2 + i * math.pi / 5),
                cy + (r if i % 2 == 0 else r * 0.5) * math.sin(-math.pi / 2 + i * math.pi / 5))
               for i in range(10)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.round(np.array(pts)).astype(np.int32)


def draw_shape(frame: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb) -> None:
    bgr = tuple(int(v) for v in rgb[::-1])
    if shape == "circle":
        cv2.circle(frame, (round(cx), round(cy)), round(r), bgr, -1, cv2.LINE_AA)
    else:
        cv2.fillPoly(frame, [_polygon(shape, cx, cy, r)], bgr, cv2.LINE_AA)


def background(width: int, height: int) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND[::-1]
    for c in range(1, GRID_COLS):
        x = round(c * width / GRID_COLS)
        cv2.line(frame, (x, 0), (x, height - 1), BORDER, 1)
    for r in range(1, GRID_ROWS):
        y = round(r * height / GRID_ROWS)
        cv2.line(frame, (0, y), (width - 1, y), BORDER, 1)
    if height >= 144:  # names are a help for real models; unreadable at tiny sizes anyway
        scale = height / 720
        for i, name in enumerate(REGIONS):
            r, c = divmod(i, GRID_COLS)
            org = (round(c * width / GRID_COLS) + 4, round(r * height / GRID_ROWS) + round(22 * scale) + 2)
            cv2.putText(frame, name, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (110, 110, 110),
                        1, cv2.LINE_AA)
    return frame


def _smooth(u: float) -> float:
    return u * u * (3 - 2 * u)


def render_frame(log: dict, t: float, width: int, height: int, base: np.ndarray) -> np.ndarray:
    """BGR frame at time `t` seconds: state of the slot, with movers gliding during the
    slot's opening transition."""
    states = log["states"]
    slot = min(len(states) - 1, int(t / log["slot_s"]))
    u = (t - slot * log["slot_s"]) / log["slot_s"]
    cur = states[slot]["objects"]
    prev = states[slot - 1]["objects"] if slot > 0 else {}
    glide = log["move_frac"] > 0 and u < log["move_frac"]
    alpha = _smooth(u / log["move_frac"]) if glide else 1.0
    frame = base.copy()
    scale = log.get("object_scale", 1.0)
    r0 = object_radius(width, height) * scale
    centred = scale > MAX_OBJECT_SCALE_IN_REGION  # one object only (SynthConfig.check)
    place = region_center if centred else object_center
    for j, name in enumerate(log["objects"]):
        st = cur.get(name)
        if not st or not st["visible"]:
            continue
        cx, cy = place(st["region"], j, width, height)
        before = prev.get(name)
        if before and before["visible"] and before["region"] != st["region"] and alpha < 1.0:
            px, py = place(before["region"], j, width, height)
            cx, cy = px + (cx - px) * alpha, py + (cy - py) * alpha
        r = r0 * (BIG_SCALE if st["big"] else 1.0)
        if centred and scale <= MAX_OBJECT_SCALE_REGION_KEPT:  # a "big" one stays in its region too
            r = min(r, 0.95 * min(width / GRID_COLS, height / GRID_ROWS) / 2)
        draw_shape(frame, name, cx, cy, r, COLOURS[st["colour"]])
    return frame


class VideoWriter:
    """mp4v through opencv, or H.264 (libx264, 1 s GOP so seeking stays cheap) through PyAV."""

    def __init__(self, path: Path, fps: float, width: int, height: int, codec: str = "mp4v"):
        if codec not in CODECS:
            raise ValueError(f"codec {codec!r} not in {CODECS}")
        self.path, self.codec = Path(path), codec
        if codec == "mp4v":
            self._cv = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                       (width, height))
            if not self._cv.isOpened():
                raise RuntimeError(f"opencv cannot write mp4v to {path}")
        else:
            import av

            self._av = av.open(str(path), "w")
            self._stream = self._av.add_stream("libx264", rate=round(fps))
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"preset": "veryfast", "crf": "20", "g": str(max(1, round(fps)))}

    def write(self, bgr: np.ndarray) -> None:
        if self.codec == "mp4v":
            self._cv.write(bgr)
            return
        import av

        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        for packet in self._stream.encode(frame):
            self._av.mux(packet)

    def close(self) -> None:
        if self.codec == "mp4v":
            self._cv.release()
            return
        for packet in self._stream.encode():
            self._av.mux(packet)
        self._av.close()


def render_video(log: dict, path: Path, fps: float, width: int, height: int,
                 codec: str = "mp4v") -> int:
    """Write the whole video; returns the number of frames. Still parts are drawn once."""
    n = int(round(log["duration_s"] * fps))
    base = background(width, height)
    writer = VideoWriter(path, fps, width, height, codec)
    cached: tuple[int, np.ndarray] | None = None
    try:
        for k in range(n):
            t = k / fps
            slot = min(log["num_slots"] - 1, int(t / log["slot_s"]))
            in_hold = (t - slot * log["slot_s"]) / log["slot_s"] >= log["move_frac"]
            if in_hold and cached is not None and cached[0] == slot:
                frame = cached[1]
            else:
                frame = render_frame(log, t, width, height, base)
                if in_hold:
                    cached = (slot, frame)
            writer.write(frame)
    finally:
        writer.close()
    return n
