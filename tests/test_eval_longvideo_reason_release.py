"""The released LongVideo-Reason eval set (HF LongVideo-Reason/longvideo-reason, test.jsonl) read
as published (issue 14.3), on a fixture in the released schema with real videos made by opencv:
options split off the problem text, <answer> tags removed, problem_type as category, videos
under longvila_videos/ or the flat longvideo_eval_subset<N>/ folders; a row that cannot be read
is an error naming the line and the reason, recorded, and the other rows go on."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from eval.task import get_task
from tests.fixtures.eval_benchmarks import tiny_video


def _row(pid: int, problem: str, ptype: str, video: str, answer: str) -> dict:
    return {"problem_id": pid, "problem": problem, "data_type": "video", "problem_type": ptype,
            "reasoning": "The clip shows ...", "videos": video, "answer": f"<answer>{answer}</answer>"}


def release(root: Path) -> Path:
    """A test.jsonl in the published schema and its videos in both released layouts."""
    tiny_video(root / "longvila_videos" / "I_Q3ajyOrcI.mp4", seed=1)  # the documented layout
    tiny_video(root / "longvideo_eval_subset3" / "xK9_clip.mp4", seed=2)  # what the tarballs give
    rows = [
        _row(0, "What is the primary intention behind the sequence (0:00:00-0:00:30)?\n"
             "A. To sell shoes.\nB. To contrast human athleticism with animal locomotion.\n"
             "C. To teach cooking.\nD. To show a city.", "goal",
             "longvila_videos/I_Q3ajyOrcI.mp4", "B"),
        _row(1, "What happens right after the door opens?\nA. A dog runs in\nB. It rains\n"
             "C. The lights go out\nD. Nothing", "temporal", "longvila_videos/xK9_clip.webm", "A"),
        _row(2, "Which object is left of the lamp?", "spatial",
             "longvila_videos/I_Q3ajyOrcI.mp4", "B"),  # released without options
        "{this line is not json",
        _row(4, "Why?\nA. x\nB. y", "cooking", "longvila_videos/I_Q3ajyOrcI.mp4", "A"),
        _row(5, "Who wins?\nA. The red team\nB. The blue team", "plot",
             "longvila_videos/missing_video.mp4", "B"),
        _row(6, "Where is the ball at the end?\nA. On the table, next to the\nred cup\n"
             "B. Under the chair\nC. In the box", "spatial", "longvila_videos/I_Q3ajyOrcI.mp4",
             "A"),  # an option text wrapped onto the next line
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_release_rows_read_as_published(tmp_path) -> None:
    root = release(tmp_path / "longvideo-reason")
    task = get_task("longvideo_reason")
    items = {it.qid: it for it in task.load(tmp_path)}  # found under its usual folder name
    assert len(items) == 7
    q0 = items["0"]
    assert q0.question == "What is the primary intention behind the sequence (0:00:00-0:00:30)?"
    assert q0.options == ["To sell shoes.", "To contrast human athleticism with animal locomotion.",
                          "To teach cooking.", "To show a city."]
    assert q0.answer == "B" and q0.answer_type == "multiple_choice" and not q0.error
    assert q0.breakdown == {"category": "Goal & Purpose", "subcategory": "goal",
                            "answer_type": "multiple_choice"}
    assert Path(q0.video_path) == root / "longvila_videos" / "I_Q3ajyOrcI.mp4"
    assert q0.cluster == "I_Q3ajyOrcI"
    # a .webm named by the release, found as the same stem in a flat shard folder
    q1 = items["1"]
    assert not q1.error and Path(q1.video_path) == root / "longvideo_eval_subset3" / "xK9_clip.mp4"
    assert q1.breakdown["category"] == "Temporal" and q1.answer == "A"
    q6 = items["6"]
    assert q6.options == ["On the table, next to the red cup", "Under the chair", "In the box"]
    assert q6.breakdown["category"] == "Spatial"
    prompt = task.render_prompt(q0)  # the training prompt format, options lettered again
    assert "A. To sell shoes.\nB. To contrast" in prompt and "(0:00:00-0:00:30)" in prompt

    # rows that cannot be read: an error naming the line and the reason; the rest load
    assert "test.jsonl:3" in items["2"].error and "no 'A. ...' option lines" in items["2"].error
    bad_json = items["unreadable:test.jsonl:4"]
    assert "test.jsonl:4" in bad_json.error and "not valid JSON" in bad_json.error
    assert "test.jsonl:5" in items["4"].error and "cooking" in items["4"].error
    assert "test.jsonl:6 (problem_id 5): video file not found: longvila_videos/missing_video.mp4" in items["5"].error
    assert [q for q, it in items.items() if not it.error] == ["0", "1", "6"]


def test_our_qarecord_jsonl_bad_row_is_recorded(tmp_path) -> None:
    """Our own schema through the same loader: a broken record names its line, others load."""
    tiny_video(tmp_path / "v.mp4", seed=3)
    good = {"id": "q-good", "video_id": "v", "video_path": "v.mp4", "question": "How many?",
            "answer": "3", "answer_type": "numeric", "category": "Temporal"}
    bad = dict(good, id="q-bad", category="Cooking")
    (tmp_path / "eval.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    items = {it.qid: it for it in get_task("longvideo_reason").load(tmp_path)}
    assert not items["q-good"].error and items["q-good"].answer_type == "numeric"
    assert "eval.jsonl:2" in items["q-bad"].error and "Cooking" in items["q-bad"].error


def test_cli_runs_the_release_and_records_unreadable_rows(tiny_model_dir, tmp_path) -> None:
    from pipelines.cli import app

    root, out = release(tmp_path / "lvr"), tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "longvideo_reason", "--data",
            str(root), "--out", str(out), "--frames", "2", "--set", "min_pixels=784", "--set",
            "max_pixels=3136", "--set", "max_new_tokens=6", "--set", "bootstrap=50"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    preds = {p["qid"]: p for p in map(json.loads, (out / "longvideo_reason" / "predictions.jsonl")
                                      .read_text().splitlines())}
    assert len(preds) == 7
    assert {q for q, p in preds.items() if p["status"] == "error"} == {
        "2", "4", "5", "unreadable:test.jsonl:4"}
    assert all(preds[q]["status"] in ("answered", "unanswered") for q in ("0", "1", "6"))
    m = json.loads((out / "longvideo_reason" / "metrics.json").read_text())
    assert m["overall"]["errors"] == 4 and m["overall"]["scored"] == 3
    reasons = " ".join(e["error"] for e in m["error_examples"])
    assert "test.jsonl:3" in reasons and "not valid JSON" in reasons
