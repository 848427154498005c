"""data_gen.video_io: every backend returns exactly the requested frames (checked by the frame
number drawn into each frame), and every kind of broken file raises a VideoError naming it."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen.video_io import BACKENDS, VideoError, probe_video, read_frames, sample_indices
from tests.fixtures.barcode import read_barcode

CASES = {
    "mp4v": {"codec": "mp4v"},
    "h264_gop250_bframes": {"codec": "h264"},
    "h264_gop7": {"codec": "h264", "gop": 7},
    "mjpg_avi": {"codec": "MJPG"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_backend_is_frame_accurate(barcode_video, case):
    ext = ".avi" if case == "mjpg_avi" else ".mp4"
    path = barcode_video(case + ext, n=150, **CASES[case])
    info = probe_video(path)
    assert info.frame_count == 150 and info.fps == 10.0 and (info.width, info.height) == (160, 96)
    rng = np.random.default_rng(1)
    idx = np.concatenate([rng.choice(150, 12, replace=False), [149, 0, 149, 75]])  # any order, repeats
    ref = read_frames(path, idx, backend="pyav-seq")
    assert [read_barcode(f) for f in ref] == idx.tolist()
    for backend in BACKENDS:
        got = read_frames(path, idx, backend=backend)
        assert got.dtype == np.uint8 and got.shape == (len(idx), 96, 160, 3)
        assert [read_barcode(f) for f in got] == idx.tolist(), backend
        np.testing.assert_array_equal(got, ref, err_msg=backend)


def test_dense_and_uniform_sampling_match_sequential(barcode_video):
    path = barcode_video("dense.mp4", n=80, codec="h264", gop=20)
    info = probe_video(path)
    every = read_frames(path, np.arange(80), backend="pyav-seq")
    assert [read_barcode(f) for f in every] == list(range(80))
    for n in (4, 16, 80):
        idx = sample_indices(info, num_frames=n)
        np.testing.assert_array_equal(read_frames(path, idx), every[idx])


def test_probe_reports_codec_and_keyframes(barcode_video):
    info = probe_video(barcode_video("k.mp4", n=40, codec="h264", gop=10))
    assert info.codec == "h264" and info.keyframes == 4 and info.duration_s == pytest.approx(4.0)


def test_rewritten_file_is_reindexed(barcode_video):
    path = barcode_video("same.mp4", n=30)
    assert probe_video(path).frame_count == 30
    path.unlink()
    barcode_video("same.mp4", n=50)
    assert probe_video(path).frame_count == 50
    assert read_barcode(read_frames(path, [49])[0]) == 49


def test_out_of_range_and_empty_requests(barcode_video):
    path = barcode_video("r.mp4", n=20)
    with pytest.raises(VideoError, match="frame 20 out of range"):
        read_frames(path, [3, 20])
    with pytest.raises(VideoError, match="out of range"):
        read_frames(path, [-1])
    with pytest.raises(VideoError, match="no frame indices"):
        read_frames(path, [])


def test_corrupt_inputs_raise_named_errors(corrupt_videos):
    assert len(corrupt_videos) >= 12
    for kind, (path, reason) in corrupt_videos.items():
        with pytest.raises(VideoError) as err:
            probe_video(path)
        assert reason in err.value.reason, f"{kind}: {err.value.reason}"
        assert err.value.path == str(path) and str(path) in str(err.value)
        if kind == "absurd_size":
            continue  # its frames are all there; probing is what refuses it
        # Decoding never hands back substitutes: the frames a truncated file lost are errors,
        # and the ones it kept are the real ones.
        wanted = [0, 39] if kind.startswith("truncated") else [0, 1]
        with pytest.raises(VideoError):
            read_frames(path, wanted)
        if kind in ("truncated_faststart_h264", "truncated_avi"):
            assert read_barcode(read_frames(path, [2])[0]) == 2
