"""Exact grading of ground-truth names (issue 11.3): one rule for reward, eval and data filter."""

from __future__ import annotations

import json

import pytest

from common.short_answers import exact_open, short_answer_matches
from data_gen.grading import is_correct
from data_gen.schema import QARecord
from training.grpo.rewards import RewardConfig, RewardScorer, short_answer_reward


@pytest.mark.parametrize(("pred", "gold", "ok"), [
    ("blue", "blue", True),
    ("Blue.", "blue", True),
    ("The top left region", "top-left", True),
    ("**hexagon**", "hexagon", True),
    ("it was coloured magenta", "magenta", True),
    ("light blue", "blue", False),
    ("red or blue", "blue", False),
    ("blue, red", "blue", False),
    ("top-middle", "top-left", False),
    ("", "blue", False),
    ("the", "blue", False),
    (None, "blue", False),
])
def test_short_answer_matches(pred, gold, ok):
    assert short_answer_matches(pred, gold) is ok


def _rec(source: str = "synth-groundtruth", answer: str = "top-left") -> QARecord:
    return QARecord(id="q1", video_id="v", video_path="v.mp4", question="Where was the star?",
                    answer=answer, answer_type="open_ended", category="Spatial", source=source,
                    reasoning="r")


@pytest.mark.parametrize(("reply", "ok"), [
    ("<think>x</think><answer>the top left region</answer>", True),
    ("<think>x</think><answer>top-left or top-middle</answer>", False),  # contains the name: was right
    ("<think>x</think><answer>bottom-left</answer>", False),
])
def test_reward_and_difficulty_filter_agree(reply, ok):
    rec = _rec()
    assert exact_open(rec.source) and not exact_open("llm")
    assert short_answer_reward(reply, rec).score == float(ok)
    assert is_correct(rec, reply) is ok
    # the combined scorer routes ground-truth names here, without a judge (none configured)
    res = RewardScorer(RewardConfig()).score([reply], [rec])
    assert res[0].parts["accuracy"] == float(ok) and not res[0].errors


def test_llm_records_still_go_to_the_judge():
    rec = _rec(source="llm")
    res = RewardScorer(RewardConfig()).score(["<think>x</think><answer>top-left</answer>"], [rec])
    assert res[0].errors  # no judge configured: a recorded judge failure, not an exact grade


def test_eval_grades_every_synth_question(tiny_model_dir, tmp_path):
    """Every open-ended synth answer is graded (none 'ungraded' without a judge), exactly, and a
    predictions file from before the rule (records 'ungraded') is re-graded on resume."""
    from data_gen.synth import SynthConfig, generate
    from eval.config import EvalConfig
    from eval.runner import evaluate

    data = tmp_path / "synth"
    generate(SynthConfig(videos=2, minutes=0.2, fps=4.0, width=96, height=64, num_slots=6,
                         questions_per_video=8), data, progress=False)
    cfg = EvalConfig(model=str(tiny_model_dir), benchmarks=["synth"], data=str(data),
                     out=str(tmp_path / "ev"), frames=4, max_new_tokens=8, bootstrap=10)
    m = evaluate(cfg)["benchmarks"]["synth"]["overall"]
    preds = tmp_path / "ev" / "synth" / "predictions.jsonl"
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    open_rows = [r for r in rows if r["answer_type"] == "open_ended"]
    assert open_rows and m["ungraded"] == 0 and m["scored"] == m["n"] == len(rows)
    for r in open_rows:
        assert r["grader"] == "exact"
        assert r["correct"] == short_answer_matches(r["extracted"], r["answer"])
    # an old file: open-ended answers left ungraded
    for r in open_rows:
        r.update(status="ungraded", correct=None, judge={"model": None, "verdict": None})
        r.pop("grader")
        if r["extracted"] is None:
            r["status"] = "unanswered"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m2 = evaluate(cfg)["benchmarks"]["synth"]["overall"]
    assert m2["ungraded"] == 0 and m2["correct"] == m["correct"]
