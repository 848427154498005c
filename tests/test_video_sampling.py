"""Frame sampling: uniform counts, fps with bounds, spans, corrupt files as named errors."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen.video_io import VideoError, probe_video, read_frames, sample_indices


def test_probe_and_frame_accurate_reads(make_video):
    path = make_video("a.mp4", num_frames=30, fps=10.0)
    info = probe_video(path)
    assert (info.frame_count, info.fps, info.width, info.height) == (30, 10.0, 64, 48)
    idx = sample_indices(info, num_frames=5)
    assert idx.tolist() == [3, 9, 15, 21, 27]
    frames = read_frames(path, [27, 3, 3])
    every = read_frames(path, list(range(30)))
    np.testing.assert_array_equal(frames[0], every[27])
    np.testing.assert_array_equal(frames[1], every[3])
    assert not np.array_equal(every[3], every[27])


def test_fps_sampling_respects_bounds_and_span(make_video):
    info = probe_video(make_video("b.mp4", num_frames=100, fps=10.0))
    assert len(sample_indices(info, fps=1.0)) == 10
    assert len(sample_indices(info, fps=0.1, min_frames=4)) == 4
    assert len(sample_indices(info, fps=10.0, max_frames=16)) == 16
    span = sample_indices(info, fps=2.0, start_s=2.0, end_s=4.0)
    assert len(span) == 4 and span.min() >= 20 and span.max() < 40


def test_corrupt_inputs_raise_named_errors(tmp_path, make_video):
    good = make_video("good.mp4", num_frames=30)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("not a video at all")
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(good.read_bytes()[:400])
    for path, reason in [(tmp_path / "missing.mp4", "does not exist"), (empty, "empty"), (text, "video"), (trunc, "trunc.mp4")]:
        with pytest.raises(VideoError, match=reason) as err:
            probe_video(path)
        assert err.value.path == str(path)
