"""Video -> Qwen2.5-VL model inputs without torchvision.

Frames are sampled by data_gen.video_io, resized with opencv to Qwen's pixel budget
(`smart_resize`: sides multiples of patch*merge = 28, area within [min_pixels, max_pixels]),
normalised with the model's mean/std and cut into the exact patch layout of transformers'
Qwen2-VL video processor: rows of C*temporal_patch*patch*patch values ordered
(t, h/merge, w/merge, merge_h, merge_w). The layout is tested against transformers' own processor.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from data_gen.video_io import (
    VideoError,
    VideoInfo,
    frame_times,
    probe_video,
    read_frames,
    sample_indices,
)

# qwen-vl-utils' video defaults, used when neither the config nor the model folder sets a budget.
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28


@dataclass
class VideoSampling:
    """How a video becomes frames. Give `num_frames` (uniform) or `fps` (bounded by
    min_frames/max_frames). Pixel budgets are per frame; 0 means "take the model folder's video
    processor config" (falling back to qwen-vl-utils' defaults). `total_pixels` (0 = off) caps the
    whole clip like qwen-vl-utils does, shrinking frames when there are many."""

    num_frames: int = 16  # frames per video, uniformly spaced (used when fps is 0)
    fps: float = 0.0  # > 0: sample this many frames per second instead, within min/max_frames
    min_frames: int = 4  # fps sampling: at least this many frames
    max_frames: int = 768  # fps sampling: at most this many frames
    min_pixels: int = 0  # per-frame pixel floor (0: the model folder's video processor config)
    max_pixels: int = 0  # per-frame pixel cap (0: the model folder's video processor config)
    total_pixels: int = 0  # cap on all frames' pixels together, shrinking frames (0: off)


@dataclass
class VisionSpec:
    """What the model's vision tower expects (read from the model folder)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    min_pixels: int = QWEN_VIDEO_MIN_PIXELS
    max_pixels: int = QWEN_VIDEO_MAX_PIXELS
    # True (Qwen3-VL's video processor): min/max_pixels bound the whole clip (frames x height x
    # width, frames rounded to the temporal patch), not each frame
    clip_budget: bool = False

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> VisionSpec:
        """Read video_preprocessor_config.json (preferred) or preprocessor_config.json."""
        d = Path(model_dir)
        spec = cls()
        video_cfg = d / "video_preprocessor_config.json"
        for path in (d / "preprocessor_config.json", video_cfg):
            if not path.is_file():
                continue
            cfg = json.loads(path.read_text())
            for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
                if key in cfg:
                    setattr(spec, key, cfg[key])
            if path == video_cfg:  # image pixel budgets do not apply to video frames
                spec.clip_budget = cfg.get("video_processor_type") == "Qwen3VLVideoProcessor"
                size = cfg.get("size") or {}
                spec.min_pixels = int(cfg.get("min_pixels") or size.get("shortest_edge") or spec.min_pixels)
                spec.max_pixels = int(cfg.get("max_pixels") or size.get("longest_edge") or spec.max_pixels)
        return spec


@dataclass
class VideoPatches:
    """One video ready for the model."""

    pixel_values: torch.Tensor  # [t*h*w, C*tp*p*p] float32
    grid_thw: tuple[int, int, int]  # in patches, before merging
    second_per_grid_t: float  # seconds covered by one temporal patch (for M-RoPE time ids)
    timestamps_s: list[float]  # timestamp of each sampled frame
    merge_size: int = 2
    frame_groups: bool = False  # the prompt lays it out as timestamped frame groups (Qwen3-VL)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size**2)


def no_video() -> VideoPatches:
    """The video input of a text-only record: zero tokens, so `mm_batch.collate` gives its row
    no video and no vision tower ever sees it."""
    return VideoPatches(pixel_values=torch.zeros((0, 0)), grid_thw=(0, 0, 0), second_per_grid_t=0.0,
                        timestamps_s=[], merge_size=1)


@dataclass
class DecodedVideo:
    """One video span decoded and resized to the model's frame size, still uint8: a quarter of
    its float32 patches, and `to_patches` rebuilds them bit for bit."""

    frames: np.ndarray  # uint8 [T, h, w, 3] (h, w multiples of patch * merge)
    sample_fps: float
    timestamps_s: list[float]

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)

    def to_patches(self, spec: VisionSpec) -> VideoPatches:
        return patches_from_resized(self.frames, self.sample_fps, spec, self.timestamps_s)


# probe_video decodes a file's index and its first and last frames: once per file version is
# enough (planned_grid, then every load of the same video). Keyed by path, size and mtime so a
# changed file is probed again; failures are not kept (the caller records them). Threads asking
# for the same file at once (the SFT scan, prefetch workers) wait for one probe, not one each.
_PROBES: OrderedDict[tuple[str, int, int], VideoInfo] = OrderedDict()
_PROBES_MAX = 200_000
_PROBES_LOCK = threading.Lock()
_PROBING: dict[tuple[str, int, int], threading.Lock] = {}  # file version -> its probe in flight
probe_stats = {"probes": 0, "hits": 0}


def _probed(key: tuple[str, int, int]) -> VideoInfo | None:
    """The stored probe of `key` (counted as a hit), or None; call with _PROBES_LOCK held."""
    info = _PROBES.get(key)
    if info is not None:
        _PROBES.move_to_end(key)
        probe_stats["hits"] += 1
    return info


def probe_once(path: str | Path) -> VideoInfo:
    """data_gen.video_io.probe_video, memoised per file version (thread-safe, one probe at a
    time per file version)."""
    try:
        st = os.stat(path)
    except OSError:
        return probe_video(path)  # its own error for a missing/unreadable file
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    with _PROBES_LOCK:
        if (info := _probed(key)) is not None:
            return info
        flight = _PROBING.setdefault(key, threading.Lock())
    with flight:
        with _PROBES_LOCK:
            if (info := _probed(key)) is not None:
                return info  # another thread probed it while this one waited
        try:
            info = probe_video(path)
        except BaseException:
            with _PROBES_LOCK:
                _PROBING.pop(key, None)  # not kept: the next caller probes (and fails) itself
            raise
        with _PROBES_LOCK:
            probe_stats["probes"] += 1
            _PROBES[key] = info
            _PROBING.pop(key, None)  # with the result stored: a later caller finds it
            while len(_PROBES) > _PROBES_MAX:
                _PROBES.popitem(last=False)
    return info


def frame_size(height: int, width: int, num_frames: int, sampling: VideoSampling, spec: VisionSpec) -> tuple[int, int]:
    """Target (height, width) for every frame of a clip."""
    min_px = sampling.min_pixels or spec.min_pixels
    max_px = sampling.max_pixels or spec.max_pixels
    if spec.clip_budget:  # Qwen3-VL: one budget for the clip, its processor's own rule
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import (
            smart_resize as clip_resize,
        )

        if sampling.total_pixels > 0:
            max_px = min(max_px, sampling.total_pixels)
        return clip_resize(max(num_frames, spec.temporal_patch_size), height, width,
                           temporal_factor=spec.temporal_patch_size, factor=spec.factor,
                           min_pixels=min_px, max_pixels=max_px)
    if sampling.total_pixels > 0:
        # Same rule as qwen-vl-utils: share the clip budget among frames, never below min_px.
        max_px = max(min(max_px, sampling.total_pixels / num_frames * spec.temporal_patch_size), int(min_px * 1.05))
    return smart_resize(height, width, factor=spec.factor, min_pixels=min_px, max_pixels=int(max_px))


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T,H,W,3] -> uint8 [T,height,width,3]; area filter when shrinking, cubic when growing."""
    if frames.shape[1:3] == (height, width):
        return frames
    shrinking = height * width < frames.shape[1] * frames.shape[2]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def patchify(frames: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Normalised float frames [T,H,W,3] (H, W multiples of patch*merge) -> (patches, grid_thw).

    T is padded to a multiple of the temporal patch by repeating the last frame, as the
    transformers processor does.
    """
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    if pad := -frames.shape[0] % tp:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)], axis=0)
    t, h, w, c = frames.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {p * m}")
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.transpose(0, 3, 1, 2)  # T, C, H, W
    x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, gh/m, gw/m, m, m, C, tp, p, p
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), (gt, gh, gw)


def resize_for_model(frames: np.ndarray, sampling: VideoSampling, spec: VisionSpec) -> np.ndarray:
    """uint8 RGB frames [T,H,W,3] -> uint8 frames at the model's frame size."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames [T,H,W,3], got {frames.dtype} {frames.shape}")
    h, w = frame_size(frames.shape[1], frames.shape[2], frames.shape[0], sampling, spec)
    return resize_frames(frames, h, w)


def frames_to_patches(frames: np.ndarray, sample_fps: float, spec: VisionSpec, sampling: VideoSampling,
                      timestamps_s: list[float] | None = None) -> VideoPatches:
    """uint8 RGB frames sampled at `sample_fps` -> VideoPatches."""
    return patches_from_resized(resize_for_model(frames, sampling, spec), sample_fps, spec, timestamps_s)


def patches_from_resized(resized_u8: np.ndarray, sample_fps: float, spec: VisionSpec,
                         timestamps_s: list[float] | None = None) -> VideoPatches:
    """uint8 frames already at the model's frame size -> normalised patches."""
    resized = resized_u8.astype(np.float32) / 255.0
    mean = np.asarray(spec.image_mean, dtype=np.float32)
    std = np.asarray(spec.image_std, dtype=np.float32)
    normed = (resized - mean) / std
    patches, grid = patchify(normed, spec)
    return VideoPatches(
        pixel_values=torch.from_numpy(patches),
        grid_thw=grid,
        second_per_grid_t=spec.temporal_patch_size / sample_fps,
        timestamps_s=list(timestamps_s or []),
        merge_size=spec.merge_size,
        frame_groups=spec.clip_budget,  # Qwen3-VL's processor: clip budget and frame groups
    )


def frame_indices(info, sampling: VideoSampling, spec: VisionSpec, start_s: float = 0.0,
                  end_s: float | None = None) -> np.ndarray:
    """The frames `load_video_patches` decodes for a probed video (a multiple of the temporal
    patch size)."""
    indices = sample_indices(info, num_frames=sampling.num_frames if sampling.fps <= 0 else 0,
                             fps=sampling.fps, min_frames=sampling.min_frames,
                             max_frames=sampling.max_frames, start_s=start_s, end_s=end_s)
    if len(indices) % spec.temporal_patch_size:
        # An odd count would make the processor repeat the last frame; sample one more instead.
        indices = sample_indices(info, num_frames=len(indices) + 1, start_s=start_s, end_s=end_s)
    return indices


def planned_grid(path: str | Path, sampling: VideoSampling, spec: VisionSpec, start_s: float = 0.0,
                 end_s: float | None = None) -> tuple[int, int, int]:
    """grid_thw that `load_video_patches` would produce, from the file's header alone (no frame
    is decoded): lets a trainer know every example's length before decoding any video."""
    info = probe_once(path)
    n = len(frame_indices(info, sampling, spec, start_s, end_s))
    h, w = frame_size(info.height, info.width, n, sampling, spec)
    return n // spec.temporal_patch_size, h // spec.patch_size, w // spec.patch_size


def load_video_patches(path: str | Path, sampling: VideoSampling, spec: VisionSpec,
                       start_s: float = 0.0, end_s: float | None = None) -> VideoPatches:
    """Decode, sample and patch one video span. Raises data_gen.video_io.VideoError when the
    video cannot be used (callers record and skip it)."""
    return load_video_frames(path, sampling, spec, start_s, end_s).to_patches(spec)


def load_video_frames(path: str | Path, sampling: VideoSampling, spec: VisionSpec,
                      start_s: float = 0.0, end_s: float | None = None) -> DecodedVideo:
    """Decode and sample one video span, resized to the model's frame size (uint8); the file
    is probed once per version (`probe_once`). VideoError when the video cannot be used."""
    info = probe_once(path)
    indices = frame_indices(info, sampling, spec, start_s, end_s)
    frames = read_frames(path, indices)
    span = (min(end_s, info.duration_s) if end_s is not None else info.duration_s) - max(0.0, start_s)
    sample_fps = len(indices) / span if span > 0 else info.fps
    if not np.isfinite(sample_fps) or sample_fps <= 0:
        raise VideoError(path, f"cannot derive a sampling rate from span {span}")
    timestamps = frame_times(info, indices)  # the stream's timestamps on a variable-rate file
    return DecodedVideo(resize_for_model(frames, sampling, spec), sample_fps, timestamps)
