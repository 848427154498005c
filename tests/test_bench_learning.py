"""bench_learning's held-out guarantee: a benchmark video whose bytes also occur in a training set
is left out of the benchmark with its questions, and the eval loader reads what remains."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_learning.py"
    spec = importlib.util.spec_from_file_location("bench_learning", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_videos_seen_in_training_are_left_out(tmp_path, monkeypatch):
    from data_gen.synth import SynthConfig, generate
    from eval.tasks.longrl_data import load_synth

    bl = _bench()
    monkeypatch.setattr(bl, "LADDER", {**bl.LADDER, "minutes": 0.2, "width": 96, "height": 64})
    dirs = bl.make_data(tmp_path, 5, {"sft": 3, "rl": 2, "bench": 4})  # disjoint seeds: nothing to drop
    bench = dirs["bench"]
    before = [json.loads(x) for x in (bench / "questions.jsonl").read_text().splitlines()]
    assert {q["video_id"] for q in before} == {f"synth_{i:04d}" for i in range(4)}
    # a training set that holds the benchmark's first two videos byte for byte (same config and seed)
    man = json.loads((bench / "manifest.json").read_text())
    cfg = SynthConfig(**{**man["config"], "videos": 2})
    generate(cfg, tmp_path / "data" / "sft2", progress=False)
    (tmp_path / "data" / "sft").rename(tmp_path / "data" / "sft-old")
    (tmp_path / "data" / "sft2").rename(tmp_path / "data" / "sft")
    (bench / "manifest.json").write_text(json.dumps(man))  # make_data reuses existing folders
    bl.make_data(tmp_path, 5, {"sft": 2, "rl": 2, "bench": 4})
    after = [json.loads(x) for x in (bench / "questions.jsonl").read_text().splitlines()]
    assert {q["video_id"] for q in after} == {"synth_0002", "synth_0003"}
    assert after == [q for q in before if q["video_id"] in ("synth_0002", "synth_0003")]
    kept = json.loads((bench / "manifest.json").read_text())["videos"]
    assert [v["video_id"] for v in kept] == ["synth_0002", "synth_0003"]
    assert len(load_synth(bench)) == len(after)


def test_mc_chance_is_the_mean_inverse_option_count(tmp_path):
    bl = _bench()
    rows = [{"answer_type": "multiple_choice", "options": list("abcdefg")},
            {"answer_type": "multiple_choice", "options": list("abcd")},
            {"answer_type": "open_ended", "options": []}]
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert abs(bl.mc_chance(tmp_path) - (1 / 7 + 1 / 4) / 2) < 1e-12
