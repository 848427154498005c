"""`longrl synth`: deterministic, valid questions whose answers follow from the logged states,
and frames that really show those states when sampled at the advertised frame count."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from data_gen.schema import CATEGORIES, QARecord
from data_gen.synth import SynthConfig, generate, load_manifest, load_synth_questions
from data_gen.synth_render import background, object_center, render_frame
from data_gen.synth_world import BACKGROUND, COLOURS
from data_gen.video_io import probe_video, read_frames, sample_indices


def _load(synth_dir):
    manifest = load_manifest(synth_dir)
    logs = {v["video_id"]: json.loads((synth_dir / v["events"]).read_text()) for v in manifest["videos"]}
    return manifest, logs, load_synth_questions(synth_dir)


def test_layout_and_records(synth_dir):
    manifest, logs, recs = _load(synth_dir)
    assert manifest["format"] == "longrl-synth" and len(manifest["videos"]) == 3
    assert (synth_dir / "config.yaml").is_file()
    for v in manifest["videos"]:
        info = probe_video(synth_dir / v["path"])
        assert (info.frame_count, info.width, info.height) == (240, 160, 96) == (
            v["frame_count"], v["width"], v["height"])
        assert sum(r.video_id == v["video_id"] for r in recs) == v["questions"] == 12
    for r in recs:
        r.validate()
        assert r.source == "synth-groundtruth" and r.clip_end_s == 30.0 and r.reasoning
        assert json.loads(r.generator)["min_frames"] == logs[r.video_id]["video"]["min_frames"]
    assert {r.category for r in recs} == set(CATEGORIES)
    assert {r.answer_type for r in recs} == {"multiple_choice", "numeric", "open_ended"}
    assert len({r.id for r in recs}) == len(recs)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, synth_dir):
    cfg = SynthConfig(videos=3, minutes=0.5, fps=8, width=160, height=96, seed=11)
    generate(cfg, tmp_path / "again", progress=False)
    for name in ("manifest.json", "questions.jsonl", "synth_0001.events.json", "synth_0002.mp4"):
        assert (tmp_path / "again" / name).read_bytes() == (synth_dir / name).read_bytes(), name
    cfg.seed, cfg.videos = 12, 1
    generate(cfg, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "synth_0000.mp4").read_bytes() != (synth_dir / "synth_0000.mp4").read_bytes()


def _expected_from_states(log: dict, rec: QARecord) -> str | None:
    """Recompute answers from the per-slot states alone (not from the event list)."""
    states = [s["objects"] for s in log["states"]]
    q = rec.question
    if m := re.fullmatch(r"How many times did the (\w+) grow large\?", q):
        return str(sum(s.get(m[1], {}).get("big", False) for s in states))
    if m := re.fullmatch(r"How many times did the (\w+) change colour\?", q):
        seq = [s[m[1]]["colour"] for s in states if m[1] in s]
        return str(sum(a != b for a, b in zip(seq, seq[1:], strict=False)))
    if m := re.fullmatch(r"How many times did the (\w+) move to a different region\?", q):
        seq = [s[m[1]]["region"] for s in states if m[1] in s]
        return str(sum(a != b for a, b in zip(seq, seq[1:], strict=False)))
    if q == "How many different objects appeared during the video?":
        return str(len(states[-1]))
    if q.startswith("Which object appeared first?"):
        return min(states[-1], key=lambda o: next(i for i, s in enumerate(states) if o in s))
    if m := re.fullmatch(r"What colour was the (\w+) when it first appeared\?", q):
        return next(s[m[1]]["colour"] for s in states if m[1] in s)
    if m := re.fullmatch(r"What colour was the (\w+) at the end of the video\?", q):
        return states[-1][m[1]]["colour"]
    return None


def test_answers_follow_from_the_states(tmp_path):
    generate(SynthConfig(videos=6, minutes=0.2, fps=4, width=64, height=48, seed=3,
                         questions_per_video=40), tmp_path, progress=False)
    _, logs, recs = _load(tmp_path)
    checked = 0
    for r in recs:
        want = _expected_from_states(logs[r.video_id], r)
        if want is not None:
            assert r.answer_text() == want, r.question
            checked += 1
    assert checked >= 30
    subs = {r.subcategory for r in recs}
    assert subs == {"temporal_order", "counting", "spatial_when", "cause", "state_change"}


def test_sampled_frames_show_the_logged_state(synth_dir):
    """At `min_frames` uniform samples every slot's still part is seen, and each sampled
    still frame shows every object where, in the colour and at the size the log says."""
    manifest, logs, _ = _load(synth_dir)
    v = manifest["videos"][0]
    log = logs[v["video_id"]]
    info = probe_video(synth_dir / v["path"])
    idx = sample_indices(info, num_frames=v["min_frames"])
    frames = read_frames(synth_dir / v["path"], idx)
    seen_slots = set()
    w, h = info.width, info.height
    base = background(w, h)
    for k, frame in zip(idx.tolist(), frames, strict=True):
        t = k / info.fps
        slot = min(log["num_slots"] - 1, int(t / log["slot_s"]))
        st = log["states"][slot]
        if t < st["hold_start_s"]:
            continue
        seen_slots.add(slot)
        # The file holds the log's picture (sizes included), up to compression noise ...
        drawn = render_frame(log, t, w, h, base)[:, :, ::-1].astype(int)
        assert np.abs(frame.astype(int) - drawn).mean() < 4
        # ... and that picture has each object where and in the colour the log says.
        for j, name in enumerate(log["objects"]):
            o = st["objects"].get(name, {"visible": False})
            for region in log["regions"]:
                cx, cy = object_center(region, j, w, h)
                got = frame[round(cy), round(cx)].astype(int)
                want = COLOURS[o["colour"]] if o["visible"] and o["region"] == region else BACKGROUND
                assert np.abs(got - want).max() < 40, (slot, name, region)
    assert seen_slots == set(range(log["num_slots"]))


def test_h264_codec_and_cli(tmp_path):
    from pipelines.cli import app

    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "h"), "--videos", "1",
                                   "--minutes", "0.1", "--fps", "5", "--size", "96x64",
                                   "--codec", "h264", "--seed", "4"])
    assert res.exit_code == 0, res.output
    info = probe_video(tmp_path / "h" / "synth_0000.mp4")
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 96, 64, 30)
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "big"])
    assert res.exit_code == 2 and "WIDTHxHEIGHT" in res.output
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "95x64"])
    assert res.exit_code == 2 and "even" in res.output


@pytest.mark.parametrize("bad", [{"videos": 0}, {"codec": "vp9"}, {"max_objects": 9}])
def test_bad_config_is_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        generate(SynthConfig(**bad), tmp_path, progress=False)
