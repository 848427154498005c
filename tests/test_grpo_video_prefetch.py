"""Video loading off the GRPO step: each file probed once per version, the next step's videos
decoded in background threads, the decoded-video store in uint8 (off where it cannot hit) -
each against the plain path it replaces (same patches bit for bit, same embeddings, same run)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import torch

from training.grpo.data import PromptSampler
from training.grpo.trainer import GRPOTrainer
from training.grpo.video_cache import VideoEmbedder, load_decoded, load_patches
from training.records import load_records
from training.video_inputs import VideoSampling, VisionSpec, probe_once, probe_stats

from .fixtures.grpo import grpo_config
from .fixtures.model_kit import write_video


def _embedder(model, model_dir, **kw):
    return VideoEmbedder(model, "online", VideoSampling(num_frames=4), VisionSpec.from_model_dir(model_dir),
                         trainable_vision=False, **kw)


def test_uint8_frames_rebuild_the_float_patches_bit_for_bit(tiny_model_dir, colour_task):
    spec = VisionSpec.from_model_dir(tiny_model_dir)
    for rec in load_records(colour_task).records[:3]:
        for sampling in (VideoSampling(num_frames=4), VideoSampling(num_frames=6, max_pixels=28 * 28 * 4)):
            direct = load_patches(rec, sampling, spec)
            decoded = load_decoded(rec, sampling, spec)
            again = decoded.to_patches(spec)
            assert decoded.frames.dtype == np.uint8
            assert torch.equal(again.pixel_values, direct.pixel_values)
            assert again.grid_thw == direct.grid_thw and again.timestamps_s == direct.timestamps_s
            assert again.second_per_grid_t == direct.second_per_grid_t
            pad = -decoded.frames.shape[0] % spec.temporal_patch_size  # patchify repeats the last frame
            assert decoded.nbytes * 4 == direct.pixel_values.nbytes * decoded.frames.shape[0] // (
                decoded.frames.shape[0] + pad)


def test_each_file_is_probed_once_per_version(tmp_path):
    path = write_video(tmp_path / "a.mp4", np.full((6, 28, 28, 3), 90, np.uint8), fps=4.0)
    before = probe_stats["probes"]
    first = probe_once(path)
    assert probe_once(path) == first and probe_once(str(path)) == first
    assert probe_stats["probes"] == before + 1
    write_video(path, np.full((10, 28, 56, 3), 90, np.uint8), fps=4.0)  # the file changes
    changed = probe_once(path)
    assert probe_stats["probes"] == before + 2
    assert (changed.frame_count, changed.width) == (10, 56)


def test_sampler_peek_is_the_next_draw_and_changes_nothing(colour_task):
    recs = load_records(colour_task).records
    s = PromptSampler(recs, seed=3)
    s.next(5)
    s.mark_bad(recs[0], "x")
    state = json.dumps(s.state_dict())
    ahead = s.peek(6)  # crosses into the next epoch
    assert json.dumps(s.state_dict()) == state
    assert [r.id for r in ahead] == [r.id for r in s.next(6)]
    assert "q0" not in [r.id for r in ahead]


def test_prefetched_videos_give_the_same_step_videos(tiny_model, tiny_model_dir, colour_task, tmp_path):
    model, _ = tiny_model
    recs = load_records(colour_task).records[:4]
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    (bad_root / "broken.mp4").write_bytes(b"not a video" * 100)
    bad = replace(recs[0], id="qbad", video_id="broken", video_path=str(bad_root / "broken.mp4"), video_digest="")
    plain = _embedder(model, tiny_model_dir)
    ahead = _embedder(model, tiny_model_dir, prefetch_workers=2)
    try:
        ahead.prefetch([*recs, bad])
        assert len(ahead._pending) == 5
        got_p, fail_p = plain.prepare([*recs, bad])
        got_a, fail_a = ahead.prepare([*recs, bad])
        assert fail_a == fail_p and list(fail_a) == ["qbad"]  # the same one-line reason
        assert ahead.stats["prefetched"] == 5 and not ahead._pending
        for r in recs:
            assert torch.equal(got_a[r.id].embeds, got_p[r.id].embeds)
            assert torch.equal(got_a[r.id].pixel_values, got_p[r.id].pixel_values)
        # the next step: stored videos are not decoded again; a prefetch nobody takes is dropped
        ahead.begin_step()
        ahead.prefetch(recs[:2])
        assert not ahead._pending
        ahead.prefetch(load_records(colour_task).records[4:6])
        ahead.prefetch(load_records(colour_task).records[6:7])
        assert len(ahead._pending) == 1
        ahead.prepare(recs[:2])
        assert ahead.stats["store_hits"] == 2
    finally:
        ahead.close()


def test_store_is_off_where_it_cannot_hit(tiny_model, tiny_model_dir, colour_task):
    model, _ = tiny_model
    recs = load_records(colour_task).records
    small = _embedder(model, tiny_model_dir, store_mb=1)
    one = load_decoded(recs[0], VideoSampling(num_frames=4), VisionSpec.from_model_dir(tiny_model_dir)).nbytes
    small.store_bytes = one * 3  # fits 3 of the 8 videos, each asked once per epoch: never hits
    small.plan_store(recs)
    small.prepare(recs[:2])
    assert not small.store_on and not small.store and "3 of the 8 videos" in small.store_note
    repeated = _embedder(model, tiny_model_dir, store_mb=1)
    repeated.store_bytes = one * 3
    repeated.plan_store([*recs, replace(recs[0], id="again")])  # a video asked twice: it may hit
    repeated.prepare(recs[:2])
    assert repeated.store_on and len(repeated.store) == 2
    fits = _embedder(model, tiny_model_dir, store_mb=1)
    fits.store_bytes = one * 8  # the whole split fits: every video hits from the second epoch
    fits.plan_store(recs)
    fits.prepare(recs[:2])
    assert fits.store_on and len(fits.store) == 2
    est = VideoEmbedder.store_hit_estimate
    assert est(104_000, 18_000, 18_000) == 1.0 and est(8, 8, 3) == 0.0
    assert abs(est(104_000, 18_000, 17) - 17 / 18_000 * (1 - 18 / 104)) < 1e-12


def test_training_with_prefetch_equals_training_without(tiny_model_dir, colour_task, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(colour_task, data)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        cfg = grpo_config(max_steps=3, **{"video.prefetch_workers": workers, "algorithm.kl_coef": 0.0})
        GRPOTrainer(cfg, tiny_model_dir, data, out).train()
        runs[workers] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[workers, "samples"] = (out / "samples.jsonl").read_text()
        runs[workers, "video"] = json.loads((out / "summary.json").read_text())["video"]
    assert runs[0, "samples"] == runs[2, "samples"]
    for a, b in zip(runs[0], runs[2], strict=True):
        for k in ("reward/total", "actor/pg_loss", "actor/grad_norm", "rollout/logprob_diff_max"):
            assert a[k] == b[k], k
    assert runs[0, "video"]["prefetched_share"] == 0.0
    assert runs[2, "video"]["prefetched_share"] > 0.5  # steps 2-3 found their videos decoded
    assert runs[2, "video"]["decoded"] == 6 and runs[2, "video"]["store_hit_rate"] == 0.0  # 6 of 8 videos
