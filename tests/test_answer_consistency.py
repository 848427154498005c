"""The GRPO accuracy reward and the evaluation grade the same completion the same way.

Each row is an answer written the way models write them; the completion is
`<think>...</think><answer>X</answer>`. The reward (`RewardScorer`, accuracy only) and the
evaluation (`eval.runner.score` with the longvideo_reason task's filter chain, then its judge step
for open-ended answers) must both give the expected grade. Open-ended answers go to the same
scripted LLM judge (an exact matcher on normalised text, over real HTTP) and must reach it as
the same words. The only intended difference - where the answer may be - is tested last.
"""

from __future__ import annotations

import re

import pytest

from common.answers import normalize_text
from data_gen.schema import QARecord
from eval.config import EvalConfig
from eval.engines import Generation
from eval.runner import base_record, judge_open_ended, score
from eval.task import get_task
from eval.tasks.longrl_data import record_to_item
from tests.fixtures.judge_server import Reply
from training.grpo.judge import JudgeConfig
from training.grpo.rewards import RewardConfig, RewardScorer

OPTIONS = ["a red ball", "a blue cube", "a dark red ball", "nothing"]

MC_TABLE = [  # (answer inside <answer>, correct for gold "B")
    ("B", True), ("(B)", True), ("b", True), ("**B**", True), ("`B`", True), ("B.", True),
    ("Option B", True), ("B. a blue cube", True), ("B) a blue cube", True), ("Answer: B", True),
    ("The answer is (B).", True), ("a blue cube", True), ("A Blue Cube!", True),
    ("I think it is a blue cube", True), ("The correct option is B because it is blue.", True),
    ("Option A is wrong since the ball is blue; the answer is B", True), ("So B is correct.", True),
    ("Looking at the frames, (A) is unlikely and (B) fits best", True), ("answer: b", True),
    ("A", False), ("a red ball", False), ("a dark red ball", False), ("The answer is A red ball", False),
    ("option a", False), ("E", False), ("a red ball or a blue cube", False), ("B or maybe C", False),
    ("(A) or (B)", False), ("(B) and (C)", False), ("B/D", False), ("It could be B or D.", False),
    ("either B or A", False),  # hedged: two options offered, none guessed
    ("I cannot tell from the video.", False), ("A man walks in.", False), ("", False),
]  # fmt: skip

NUMERIC_TABLE = [  # (answer inside <answer>, gold, correct)
    ("3.5", "3.5", True), ("3.50", "3.5", True), ("3,5", "3.5", True), ("7/2", "3.5", True),
    ("about 3.5 seconds", "3.5", True), ("The answer is 3.5, not 4", "3.5", True),
    ("**3.5**", "3.5", True), ("3.5003", "3.5", True),  # within the shared 1e-4 tolerance
    ("3", "3.5", False), ("3.51", "3.5", False), ("35", "3.5", False), ("three", "3.5", False),
    ("1,250", "1250", True), ("1250.0", "1250", True), ("twelve", "12", True),
    ("twenty-one", "21", True), ("-2", "-2", True), ("\u22122", "-2", True), ("1e3", "1000", True),
    ("40%", "40", True), ("none", "0", True), ("12 then 13", "12", False),
    ("the total is 12, not 13", "12", True), ("two and three", "5", False), ("many", "3", False),
    ("", "3", False),
]  # fmt: skip

REFERENCE = "a dog opens the door"
OPEN_TABLE = [  # (answer inside <answer>, correct for REFERENCE with an exact-match judge)
    ("a dog opens the door", True), ("  A dog   opens\nthe door. ", True),
    ("**A dog opens the door**", True), ("a cat opens the door", False), ("the dog", False),
    ("a dog opens the door and leaves", False),
]  # fmt: skip


def _record(i: int, answer_type: str, answer: str, options: list[str] | None = None) -> QARecord:
    return QARecord(id=f"q{i}", video_id=f"v{i}", video_path="v.mp4", question="What happens?",
                    answer=answer, answer_type=answer_type, category="Temporal",
                    options=list(options or []))  # fmt: skip


def _completion(answer: str) -> str:
    return f"<think>I look at the frames and compare the options.</think>\n<answer>{answer}</answer>"


def _exact_judge(request: dict, call: int) -> Reply:
    text = request["messages"][-1]["content"]
    ref = re.search(r"Reference answer: (.*)\n", text)
    ans = re.search(r"Model answer: (.*)\n", text)
    same = bool(ref and ans and normalize_text(ref.group(1)) == normalize_text(ans.group(1)))
    return Reply("yes" if same else "no")


def _reward(records: list[QARecord], completions: list[str], judge: JudgeConfig | None = None):
    cfg = RewardConfig(weights={"accuracy": 1.0}, judge=judge or JudgeConfig())
    return [r.parts["accuracy"] for r in RewardScorer(cfg).score(completions, records)]


def _eval(records: list[QARecord], completions: list[str], tmp_path, judge: JudgeConfig | None = None):
    task, cfg = get_task("longvideo_reason"), EvalConfig(judge=judge or JudgeConfig())
    items = {r.id: record_to_item(r, tmp_path, "consistency table") for r in records}
    preds = [
        {**base_record(task, items[r.id]), **score(task, items[r.id], Generation(c, 8, True), cfg)}
        for r, c in zip(records, completions, strict=True)
    ]
    judge_open_ended(preds, items, cfg, tmp_path)
    return preds


def test_multiple_choice_reward_and_eval_agree(tmp_path) -> None:
    records = [_record(i, "multiple_choice", "B", OPTIONS) for i in range(len(MC_TABLE))]
    completions = [_completion(a) for a, _ in MC_TABLE]
    rewards = _reward(records, completions)
    preds = _eval(records, completions, tmp_path)
    for (answer, want), reward, pred in zip(MC_TABLE, rewards, preds, strict=True):
        assert (reward, pred["correct"]) == (float(want), want), (answer, pred["extraction_rule"])


def test_numeric_reward_and_eval_agree(tmp_path) -> None:
    records = [_record(i, "numeric", gold) for i, (_, gold, _) in enumerate(NUMERIC_TABLE)]
    completions = [_completion(a) for a, _, _ in NUMERIC_TABLE]
    rewards = _reward(records, completions)
    preds = _eval(records, completions, tmp_path)
    for (answer, gold, want), reward, pred in zip(NUMERIC_TABLE, rewards, preds, strict=True):
        assert (reward, pred["correct"]) == (float(want), want), (answer, gold, pred["extracted"])


def test_open_ended_reward_and_eval_ask_the_judge_the_same_and_agree(judge_server, tmp_path) -> None:
    judge_server.respond = _exact_judge
    judge = JudgeConfig(base_url=judge_server.base_url, model="exact", max_attempts=1)
    records = [_record(i, "open_ended", REFERENCE) for i in range(len(OPEN_TABLE))]
    completions = [_completion(a) for a, _ in OPEN_TABLE]
    rewards = _reward(records, completions, judge)
    asked_by_reward = [r["messages"][-1]["content"] for r in judge_server.requests]
    preds = _eval(records, completions, tmp_path, judge)
    asked_by_eval = [r["messages"][-1]["content"] for r in judge_server.requests[len(asked_by_reward) :]]
    assert sorted(asked_by_reward) == sorted(asked_by_eval)  # the same question, the same words
    for (answer, want), reward, pred in zip(OPEN_TABLE, rewards, preds, strict=True):
        assert (reward, pred["correct"]) == (float(want), want), answer


@pytest.mark.parametrize(("completion", "eval_correct"), [
    ("B", True),  # a bare reply: the evaluation reads it, the reward wants <answer>
    ("<think>so B</think> The answer is B", True),
    ("<think>so B</think><answer>B", True),  # unclosed tag (cut by max_new_tokens)
    ("<think>maybe <answer>B</answer> ... still thinking", False),  # inside an unfinished thought
])  # fmt: skip
def test_only_where_the_answer_is_differs(completion: str, eval_correct: bool, tmp_path) -> None:
    rec = _record(0, "multiple_choice", "B", OPTIONS)
    assert _reward([rec], [completion]) == [0.0]  # strict: the last complete span after </think>
    assert _eval([rec], [completion], tmp_path)[0]["correct"] is eval_correct
