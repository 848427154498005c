"""Real files that carry a display matrix (portrait phone videos) or a variable frame rate: every
backend returns the frames a player shows, at the times the stream says (issue 17.3, 17.4)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from data_gen.video_io import (
    BACKENDS,
    VideoError,
    frame_times,
    orientation_from_matrix,
    probe_video,
    read_frames,
    sample_indices,
)
from tests.fixtures.barcode import barcode_rgb, read_barcode

W, H = 160, 96


def write_h264(path: Path, n: int, pts_ms: list[int] | None = None, rotation: int | None = None,
               hflip: bool = False, codec: str = "libx264") -> Path:
    """Barcode frames with PyAV; `rotation`/`hflip` write a display matrix into the container
    (stream coded side data, as phones do), `pts_ms` gives each frame its own timestamp."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12", "g": "8", "preset": "veryfast"}
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation, hflip=hflip)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(barcode_rgb(i, W, H), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def shown(i: int, rotation: int, hflip: bool) -> np.ndarray:
    """Frame i as a player displays it: turned `rotation` degrees counter-clockwise, then
    mirrored (PyAV's set_display_rotation convention)."""
    f = np.rot90(barcode_rgb(i, W, H), rotation // 90)
    return f[:, ::-1] if hflip else f


@pytest.mark.parametrize(("rotation", "hflip"), [(90, False), (-90, False), (180, False), (0, True), (90, True)])
def test_every_backend_applies_the_display_matrix(tmp_path, rotation, hflip):
    path = write_h264(tmp_path / "phone.mp4", 16, rotation=rotation, hflip=hflip)
    info = probe_video(path)
    quarter = rotation % 180 != 0
    assert (info.width, info.height) == ((H, W) if quarter else (W, H))  # the displayed sides
    assert info.rotation == rotation % 360 and info.mirrored == hflip
    idx = np.array([11, 3, 3, 15, 0])
    expected = np.stack([shown(int(i), rotation, hflip) for i in idx]).astype(int)
    for backend in BACKENDS:
        got = read_frames(path, idx, backend)
        assert got.shape == expected.shape, backend
        err = np.abs(got.astype(int) - expected).mean()
        assert err < 6, (backend, err)  # compression noise; a wrong turn or mirror is ~60
        mirror = np.stack([shown(int(i), rotation, not hflip) for i in idx]).astype(int)
        assert np.abs(got.astype(int) - mirror).mean() > 20  # the check can tell a mirror apart


def test_opencv_agrees_with_pyav_and_the_clip_reader_on_a_portrait_file(tmp_path):
    from data_gen.clip_reader import iter_clips

    path = write_h264(tmp_path / "portrait.mp4", 24, rotation=-90)
    clips = [np.array([1, 5, 9]), np.array([12, 20, 23])]
    ref = {j: read_frames(path, c, "pyav-seq") for j, c in enumerate(clips)}
    for j, frames in iter_clips(path, clips):
        assert frames.shape == (3, W, H, 3) and np.array_equal(frames, ref[j])
    assert np.array_equal(read_frames(path, clips[1], "opencv"), read_frames(path, clips[1], "pyav"))


def test_matrices_that_are_not_right_angle_turns_are_named(tmp_path):
    c, s = int(65536 * np.cos(np.pi / 6)), int(65536 * np.sin(np.pi / 6))
    with pytest.raises(VideoError, match="not a right-angle rotation; re-encode"):
        orientation_from_matrix(tmp_path / "v.mp4", (c, -s, 0, s, c, 0, 0, 0, 1 << 30))
    o = orientation_from_matrix(tmp_path / "v.mp4", (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30))
    assert o.rotation == 90 and not o.mirrored


# 30 fps for 3 s, 10 fps for 3 s, 30 fps for 1 s: a phone that slowed down in low light
VFR_MS = ([round(i * 1000 / 30) for i in range(90)] + [3000 + 100 * i for i in range(30)]
          + [6000 + round(i * 1000 / 30) for i in range(30)])
VFR_S = np.array(VFR_MS) / 1000.0


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_variable_frame_rate_samples_by_the_stream_timestamps(tmp_path, codec):
    path = write_h264(tmp_path / "vfr.mp4", len(VFR_MS), pts_ms=VFR_MS, codec=codec)
    info = probe_video(path)
    assert info.vfr and info.frame_count == 150
    assert 6.99 < info.duration_s < 7.1  # to the end of the last frame (its length is the muxer's)
    for num, start, end in ((8, 0.0, None), (6, 3.0, 6.0), (5, 2.5, 6.5)):
        idx = sample_indices(info, num_frames=num, start_s=start, end_s=end)
        stop = info.duration_s if end is None else end
        centres = start + (np.arange(num) + 0.5) * (stop - start) / num
        times = np.array(frame_times(info, idx))
        assert np.allclose(times, VFR_S[idx], atol=1e-3)  # the model is told the real times
        # the frame on screen at each centre: started at or before it, the next one after it
        assert np.all(times <= centres + 1e-9) and np.all(centres - times < 0.1 + 1e-9), (times, centres)
        uniform = np.floor((np.arange(num) + 0.5) * info.frame_count / num).astype(int)
        if end is None:  # what index arithmetic at the average rate picked: up to ~1 s off
            assert np.max(np.abs(VFR_S[uniform] - centres)) > 0.5
        for backend in BACKENDS:  # opencv's index seek would land elsewhere on mpeg4
            assert [read_barcode(f) for f in read_frames(path, idx, backend)] == idx.tolist(), backend
    fps_idx = sample_indices(info, fps=2.0)  # 14 frames, one per half second of real time
    assert len(fps_idx) == 14
    assert np.all(np.abs(VFR_S[fps_idx] - (np.arange(14) + 0.5) * info.duration_s / 14) < 0.1 + 1e-9)


def test_constant_rate_files_keep_the_index_arithmetic(tmp_path):
    path = write_h264(tmp_path / "cfr.mp4", 40)
    info = probe_video(path)
    assert not info.vfr and info.duration_s == 40 / info.fps
    idx = sample_indices(info, num_frames=8)
    assert idx.tolist() == np.floor((np.arange(8) + 0.5) * 40 / 8).astype(int).tolist()
    assert frame_times(info, idx) == [i / info.fps for i in idx.tolist()]
