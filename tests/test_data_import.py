"""`longrl data import`: released LongVideo-Reason rows (their published format) -> records."""

from __future__ import annotations

import json
import shutil

from datasets import load_from_disk
from typer.testing import CliRunner

from data_gen.schema import QARecord, features

ROWS = [
    {"problem_id": 0, "problem": "What is the primary intention behind the sequence?\nA. To sell shoes\n"
     "B. To contrast human athleticism with animal locomotion,\n   culminating in speed.\nC. To teach maths\nD. To joke",
     "data_type": "video", "problem_type": "goal", "reasoning": "The sequence contrasts ...",
     "videos": "longvila_videos/synth_0000.mp4", "answer": "<answer>B</answer>"},
    {"problem_id": 1, "problem": "Where does the circle stop?\n(A) left\n(B) right", "data_type": "video",
     "problem_type": "spatial", "reasoning": "It stops on the right.", "videos": ["longvila_videos/synth_0001.mp4"],
     "answer": "<answer>B</answer>"},
    {"problem_id": 2, "problem": "How many times does the star grow?", "problem_type": "Temporal Reasoning",
     "reasoning": "Twice.", "videos": "longvila_videos/synth_0002.mp4", "answer": "<answer>2</answer>"},
    {"problem_id": 3, "problem": "What happens at the end?", "problem_type": "plot",
     "reasoning": "The square leaves.", "videos": "longvila_videos/synth_0002.mp4", "answer": "the square leaves"},
    {"problem_id": 4, "problem": "Why?\nA. x\nB. y", "problem_type": "humour", "videos": "longvila_videos/synth_0000.mp4",
     "answer": "<answer>A</answer>"},
    {"problem_id": 5, "problem": "Which?\nA. x\nB. y", "problem_type": "goal", "videos": "longvila_videos/synth_0000.mp4",
     "answer": "<answer>C</answer>"},
    {"problem_id": 6, "problem": "Lost?\nA. x\nB. y", "problem_type": "goal", "videos": "longvila_videos/missing.mp4",
     "answer": "<answer>A</answer>"},
]


def test_import_released_rows(tmp_path, synth_dir):
    vids = tmp_path / "lvr" / "longvila_videos"
    vids.mkdir(parents=True)
    for i in range(3):
        shutil.copy(synth_dir / f"synth_000{i}.mp4", vids)
    src = tmp_path / "test.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    from pipelines.cli import app

    res = CliRunner().invoke(app, ["data", "import", "--source", str(src), "--out", str(tmp_path / "out"),
                                   "--video-dir", str(tmp_path / "lvr"), "--split", "eval"])
    assert res.exit_code == 0, res.output
    ds = load_from_disk(str(tmp_path / "out" / "eval"))
    assert ds.features == features() and len(ds) == 4
    recs = {r["subcategory"]: QARecord.from_dict(r).validate() for r in ds}
    goal = recs["goal"]
    assert goal.category == "Goal & Purpose" and goal.answer == "B" and len(goal.options) == 4
    assert goal.question == "What is the primary intention behind the sequence?"
    assert goal.options[1] == "To contrast human athleticism with animal locomotion, culminating in speed."
    assert goal.duration_s == 30.0 and goal.clip_end_s == 30.0 and len(goal.video_digest) == 64
    assert recs["spatial"].options == ["left", "right"] and recs["spatial"].category == "Spatial"
    assert recs["Temporal Reasoning"].answer_type == "numeric" and recs["Temporal Reasoning"].answer == "2"
    assert recs["plot"].answer_type == "open_ended" and recs["plot"].category == "Plot & Narrative"
    assert all(r.source == "longvideo-reason" and r.reasoning for r in recs.values())
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["item"].split("problem_id ")[1].rstrip(")"): r["reason"] for r in rejects}
    assert "unknown problem_type 'humour'" in reasons["4"]
    assert "answer 'C' is not one of" in reasons["5"]
    assert "does not exist" in reasons["6"]
    assert len(load_from_disk(str(tmp_path / "out" / "sft"))) == 0
