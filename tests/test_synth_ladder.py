"""The synthetic task ladder's knobs: task types and reasoning style, kept through data build."""

from __future__ import annotations

import json

import pytest

from data_gen.synth import SynthConfig, events_path, generate, questions_from_log


def _qs(path):
    return [json.loads(line) for line in (path / "questions.jsonl").read_text().splitlines()]


def test_task_types_and_brief_reasoning(tmp_path):
    cfg = SynthConfig(videos=3, minutes=0.3, fps=4.0, width=96, height=64, num_slots=8, min_objects=1,
                      max_objects=1, questions_per_video=6, task_types=["state_change"], reasoning="brief")
    generate(cfg, tmp_path / "s", progress=False)
    qs = _qs(tmp_path / "s")
    assert qs and {q["subcategory"] for q in qs} == {"state_change"}
    # both answer forms of the perception questions, each with a one-fact reasoning target
    assert {q["answer_type"] for q in qs} == {"multiple_choice", "open_ended"}
    for q in qs:
        # one sentence of fact (+ the answer line), never the whole timed account
        assert " s," not in q["reasoning"] and q["reasoning"].count(".") <= 2, q["reasoning"]
        if q["question"].endswith("at the end of the video?") and q["answer_type"] == "open_ended":
            assert q["reasoning"] == f"At the end the {q['question'].split()[4]} is {q['answer']}."
    # the full style keeps the step-by-step account (with times) for the same videos
    generate(SynthConfig(**{**cfg.__dict__, "reasoning": "full"}), tmp_path / "f", progress=False)
    full = _qs(tmp_path / "f")
    assert [q["question"] for q in full] == [q["question"] for q in qs]
    assert all(" s" in q["reasoning"] and len(q["reasoning"]) > len(b["reasoning"])
               for q, b in zip(full, qs, strict=True))


def test_data_build_reasks_the_same_rung(tmp_path):
    """`longrl data build` regenerates questions from the event log: it must ask the rung's
    task types and style, which the log records."""
    cfg = SynthConfig(videos=1, minutes=0.3, fps=4.0, width=96, height=64, num_slots=8,
                      questions_per_video=5, task_types=["spatial_when", "counting"], reasoning="brief")
    m = generate(cfg, tmp_path, progress=False)
    log = json.loads(events_path(tmp_path / m["videos"][0]["path"]).read_text())
    assert log["video"]["questions"] == {"task_types": ["spatial_when", "counting"], "reasoning": "brief",
                                         "canonical_options": False}
    reply = questions_from_log(log, 20, seed=3)["questions"]
    assert reply and {q["subcategory"] for q in reply} <= {"spatial_when", "counting"}
    assert all(q["reasoning"].startswith(("Then the", "The answer is")) for q in reply)
    del log["video"]["questions"]  # a log from before the knobs: every task, full reasoning
    old = questions_from_log(log, 40, seed=3)["questions"]
    assert len({q["subcategory"] for q in old}) >= 3


def test_object_scale_rung_draws_a_lone_object_over_its_region(tmp_path):
    """The perception rung: a lone object drawn at its region's centre, covering most of it -
    measured on the decoded file, against the default size."""
    import numpy as np

    from data_gen.synth_world import COLOURS, GRID_COLS, GRID_ROWS, REGIONS
    from data_gen.video_io import read_frames

    cover = {}
    for scale in (1.0, 2.5):
        d = tmp_path / f"s{scale}"
        cfg = SynthConfig(videos=1, minutes=0.2, fps=4.0, width=96, height=64, num_slots=6, min_objects=1,
                          max_objects=1, questions_per_video=2, task_types=["state_change"], object_scale=scale)
        m = generate(cfg, d, progress=False)
        log = json.loads(events_path(d / m["videos"][0]["path"]).read_text())
        assert log["object_scale"] == scale
        # the still part of the last slot in which the object is on screen
        k, st = next((k, s["objects"][o]) for k, s in reversed(list(enumerate(log["states"])))
                     for o in s["objects"] if s["objects"][o]["visible"])
        idx = int(np.ceil(log["states"][k]["hold_start_s"] * cfg.fps)) + 1
        frame = read_frames(d / m["videos"][0]["path"], np.array([idx]))[0].astype(int)
        r, c = divmod(REGIONS.index(st["region"]), GRID_COLS)
        h, w = 64 // GRID_ROWS, 96 // GRID_COLS
        cell = frame[r * h:(r + 1) * h, c * w:(c + 1) * w]
        want = np.array(COLOURS[st["colour"]])
        cover[scale] = float((np.abs(cell - want).sum(-1) < 60).mean())
    assert cover[1.0] < 0.1 and cover[2.5] > max(0.25, 4 * cover[1.0]), cover
    with pytest.raises(ValueError, match="max_objects=1"):
        SynthConfig(object_scale=2.0, max_objects=2).check()


@pytest.mark.parametrize(("over", "msg"), [({"task_types": ["colour"]}, "task_types"),
                                           ({"reasoning": "short"}, "reasoning"),
                                           ({"object_scale": 9.0}, "object_scale"),
                                           ({"object_scale": 4.0, "max_objects": 1}, "state_change")])
def test_bad_knobs_are_named(over, msg):
    with pytest.raises(ValueError, match=msg):
        SynthConfig(**over).check()


@pytest.mark.parametrize("cap", [0, 1])
def test_max_recolours_caps_colour_changes(tmp_path, cap):
    """The time rungs: with max_recolours=0 an object keeps the colour it appears in (the colour
    'at the end' is the colour it was ever shown in); 1 allows one change."""
    cfg = SynthConfig(videos=6, minutes=0.3, fps=4.0, width=96, height=64, num_slots=10, min_objects=1,
                      max_objects=3, questions_per_video=6, max_recolours=cap)
    m = generate(cfg, tmp_path, progress=False)
    counts = []
    for v in m["videos"]:
        log = json.loads(events_path(tmp_path / v["path"]).read_text())
        counts.append(sum(e["type"] == "recolour" for e in log["events"]))
        for o in log["objects"]:
            seen = {s["objects"][o]["colour"] for s in log["states"] if o in s["objects"]}
            assert len(seen) <= cap + 1
    assert max(counts) <= cap
    uncapped = generate(SynthConfig(**{**cfg.__dict__, "max_recolours": -1}), tmp_path / "u", progress=False)
    assert sum(sum(e["type"] == "recolour" for e in json.loads(events_path(tmp_path / "u" / v["path"]).read_text())["events"])
               for v in uncapped["videos"]) > cap * len(uncapped["videos"])


def test_canonical_options_put_every_colour_in_palette_order(tmp_path):
    """The letter rung: colour multiple-choice options are the whole palette in palette order, so
    each colour always has the same letter; other questions, and the shuffled rung's question
    texts and answers, are unchanged; `data build` re-asks the rung from the log."""
    from data_gen.schema import OPTION_LETTERS
    from data_gen.synth_world import COLOURS

    cfg = SynthConfig(videos=4, minutes=0.3, fps=4.0, width=96, height=64, num_slots=8, min_objects=1,
                      max_objects=2, questions_per_video=10, reasoning="brief", canonical_options=True)
    m = generate(cfg, tmp_path / "c", progress=False)
    qs = _qs(tmp_path / "c")
    plain = _qs(generate(SynthConfig(**{**cfg.__dict__, "canonical_options": False}), tmp_path / "p",
                         progress=False) and tmp_path / "p")
    assert [q["question"] for q in qs] == [q["question"] for q in plain]
    palette = list(COLOURS)
    colour_mc = [(q, p) for q, p in zip(qs, plain, strict=True)
                 if q["answer_type"] == "multiple_choice" and set(p["options"]) <= set(palette)]
    assert len(colour_mc) >= 4
    for q, p in colour_mc:
        assert q["options"] == palette and len(p["options"]) == 4
        colour = p["options"][OPTION_LETTERS.index(p["answer"])]  # the same colour is right in both
        assert q["answer"] == OPTION_LETTERS[palette.index(colour)]
        assert q["reasoning"].endswith(f"So the answer is {q['answer']}.") and colour in q["reasoning"]
    others = [(q, p) for q, p in zip(qs, plain, strict=True) if (q, p) not in colour_mc]
    assert others and all(q == p for q, p in others)
    log = json.loads(events_path(tmp_path / "c" / m["videos"][0]["path"]).read_text())
    assert log["video"]["questions"]["canonical_options"] is True
    again = questions_from_log(log, 10, seed=5)["questions"]
    assert all(q["options"] == palette for q in again if q["answer_type"] == "multiple_choice"
               and q["question"].startswith("What colour"))
