"""Sampled, resized frames of one video span - what the `vllm` engine hands to vLLM.

vLLM patches frames itself, so it gets the frames, not patches. They are chosen exactly as
training.video_inputs.load_video_patches chooses them (same indices, the same even-count rule,
the same resize to the pixel budget), so both engines show the model the same pixels; a test
checks that patching these frames reproduces load_video_patches bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class SampledFrames:
    frames: np.ndarray  # uint8 [T, H, W, 3], already at the model's frame size
    timestamps_s: list[float]
    sample_fps: float
    indices: list[int]
    source_fps: float = 0.0  # the file's own frame rate (Qwen3-VL's processor metadata)
    vfr: bool = False  # variable frame rate: timestamps_s are the stream's, not index / fps
    total_frames: int = 0


def sample_frames(
    path: str | Path, sampling: Any, spec: Any, start_s: float = 0.0, end_s: float | None = None
) -> SampledFrames:
    from data_gen.video_io import VideoError, frame_times, probe_video, read_frames, sample_indices
    from training.video_inputs import frame_size, resize_frames

    info = probe_video(path)
    indices = sample_indices(
        info,
        num_frames=sampling.num_frames if sampling.fps <= 0 else 0,
        fps=sampling.fps,
        min_frames=sampling.min_frames,
        max_frames=sampling.max_frames,
        start_s=start_s,
        end_s=end_s,
    )
    if len(indices) % spec.temporal_patch_size:
        indices = sample_indices(info, num_frames=len(indices) + 1, start_s=start_s, end_s=end_s)
    frames = read_frames(path, indices)
    span = (min(end_s, info.duration_s) if end_s is not None else info.duration_s) - max(
        0.0, start_s
    )
    sample_fps = len(indices) / span if span > 0 else info.fps
    if not np.isfinite(sample_fps) or sample_fps <= 0:
        raise VideoError(path, f"cannot derive a sampling rate from span {span}")
    h, w = frame_size(frames.shape[1], frames.shape[2], frames.shape[0], sampling, spec)
    return SampledFrames(
        resize_frames(frames, h, w),
        frame_times(info, indices),  # the stream's timestamps on a variable-rate file
        float(sample_fps),
        [int(i) for i in indices],
        float(info.fps),
        bool(info.vfr),
        int(info.frame_count),
    )
