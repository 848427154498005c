"""data_gen.clip_reader: one decoder pass per video gives every clip exactly the frames that
read_frames (the per-clip plain path) gives, on every GOP / B-frame layout, with fewer seeks and
fewer decoded frames; damaged files fail with the plain path's reason, naming the same clip."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen.clip_reader import ReaderStats, iter_clips
from data_gen.sources import clip_spans
from data_gen.video_io import VideoError, probe_video, read_frames, sample_indices
from tests.fixtures.barcode import read_barcode

CASES = {
    "mp4v": {"codec": "mp4v"},
    "h264_gop250_bframes": {"codec": "h264"},
    "h264_gop7": {"codec": "h264", "gop": 7},
    "mjpg_avi": {"codec": "MJPG"},
}


def _clips(info, clip_s: float, frames: int) -> list[np.ndarray]:
    return [sample_indices(info, num_frames=frames, start_s=a, end_s=b)
            for a, b in clip_spans(info.duration_s, clip_s, 2.0)]


@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_equals_per_clip_reads(barcode_video, case):
    ext = ".avi" if case == "mjpg_avi" else ".mp4"
    path = barcode_video(case + ext, n=300, **CASES[case])  # 30 s at 10 fps
    info = probe_video(path)
    clips = _clips(info, 4.0, 5)  # 8 clips, the last one merged (2 s tail)
    clips.append(np.array([5, 5, 290, 3]))  # repeats, any order, overlapping other clips
    stats = ReaderStats()
    got = dict(iter_clips(path, clips, stats))
    assert sorted(got) == list(range(len(clips)))
    for j, idx in enumerate(clips):
        ref = read_frames(path, idx)
        assert [read_barcode(f) for f in got[j]] == idx.tolist(), (case, j)
        np.testing.assert_array_equal(got[j], ref, err_msg=f"{case} clip {j}")
    assert stats.opens == 1 and stats.fallbacks == 0
    assert stats.kept == len(np.unique(np.concatenate(clips)))


def test_one_pass_decodes_less_than_per_clip_on_long_gop(barcode_video):
    """GOP 250: per-clip reads re-decode from the keyframe before every clip; one pass does not."""
    import av

    path = barcode_video("long.mp4", n=600, codec="h264", fps=30)  # 20 s, x264 default GOP 250
    info = probe_video(path)
    clips = _clips(info, 2.0, 4)  # 10 clips of 60 frames
    stats = ReaderStats()
    list(iter_clips(path, clips, stats))

    with av.open(str(path)) as c:  # frames the per-clip path decodes: keyframe before each clip -> its last
        packets = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.pts is not None]
    pts = sorted(t for t, _ in packets)
    key_frames = sorted(pts.index(t) for t, k in packets if k)
    per_clip = sum(int(idx.max()) - max(f for f in key_frames if f <= int(idx.min())) + 1 for idx in clips)
    assert stats.opens == 1 and stats.seeks <= len(key_frames)
    assert stats.decoded <= int(clips[-1].max()) + 1 + 16  # one forward pass (+ the decoder's delay)
    assert per_clip > 1.3 * stats.decoded, (per_clip, stats.decoded)


def test_damaged_file_fails_like_the_plain_path(barcode_video, corrupt_videos):
    path, _ = corrupt_videos["truncated_mp4"]
    clips = [np.array([0, 1]), np.array([10, 11])]
    with pytest.raises(VideoError) as plain:
        read_frames(path, clips[0])
    with pytest.raises(VideoError) as ours:
        list(iter_clips(path, clips))
    assert ours.value.reason == plain.value.reason
    good = barcode_video("g.mp4", n=40)
    out = iter_clips(good, [np.array([0, 39]), np.array([40])])  # second clip out of range
    first = next(out)
    assert first[0] == 0 and [read_barcode(f) for f in first[1]] == [0, 39]
    with pytest.raises(VideoError, match="frame 40 out of range"):
        next(out)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_one_pass_on_a_variable_frame_rate_file(tmp_path, codec):
    """VFR (30/10/30 fps): the clips' frames are chosen by the stream timestamps; one pass
    still returns exactly read_frames' frames for each clip."""
    from data_gen.sources import VideoItem, clip_images, span_images
    from tests.test_video_display import VFR_MS, write_h264

    path = write_h264(tmp_path / "vfr.mp4", len(VFR_MS), pts_ms=VFR_MS, codec=codec)
    info = probe_video(path)
    spans = clip_spans(info.duration_s, 2.0, 0.5)
    clips = _clips(info, 2.0, 4)
    stats = ReaderStats()
    got = dict(iter_clips(path, clips, stats))
    for j, idx in enumerate(clips):
        assert [read_barcode(f) for f in got[j]] == idx.tolist()
        np.testing.assert_array_equal(got[j], read_frames(path, idx))
    item = VideoItem("vfr", str(path), "d", info)
    stream = dict(clip_images(item, [(a, b, 4) for a, b in spans], 64 * 48, 85, "stream"))
    assert [stream[j] for j in range(len(spans))] == [span_images(item, a, b, 4, 64 * 48, 85) for a, b in spans]
    assert stats.opens == 1 and stats.fallbacks == 0
