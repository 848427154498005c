"""Rewards: format, multiple choice, numeric, the LLM judge over real HTTP, the registry."""

from __future__ import annotations

import re
import time

import pytest

from common.answers import extract_answer
from data_gen.schema import QARecord
from training.grpo.judge import JudgeConfig, JudgeItem, LLMJudge
from training.grpo.rewards import (
    RewardConfig,
    RewardOutput,
    RewardScorer,
    batched_reward,
    format_reward,
    register_reward,
)


def similar_answer(request: dict, choice: int) -> str:
    """Scripted judge: yes when the model answer contains the reference answer."""
    text = request["messages"][-1]["content"]
    ref = re.search(r"Reference answer: (.*)\n", text)
    ans = re.search(r"Model answer: (.*)\n", text)
    return "yes" if ref and ans and ref.group(1).strip().lower() in ans.group(1).strip().lower() else "no"


def settled(server, timeout_s: float = 5.0):
    """The server once every request it received has been answered (timeouts still sleep)."""
    deadline = time.monotonic() + timeout_s
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    return server


@pytest.fixture()
def judge_server(openai_server):
    """The shared scripted OpenAI-compatible server, answering as a yes/no judge."""
    openai_server.responder = similar_answer
    return openai_server

OPTIONS = ["a red ball", "a blue cube", "a dark red ball", "nothing"]


def mc(answer="B", rid="q-mc") -> QARecord:
    return QARecord(id=rid, video_id="v", video_path="v.mp4", question="What rolls?",
                    answer=answer, answer_type="multiple_choice", category="Spatial",
                    options=list(OPTIONS))


def num(answer="3.5", rid="q-num") -> QARecord:
    return QARecord(id=rid, video_id="v", video_path="v.mp4", question="How long?",
                    answer=answer, answer_type="numeric", category="Temporal")


def oe(answer="the dog opens the door", rid="q-oe") -> QARecord:
    return QARecord(id=rid, video_id="v", video_path="v.mp4", question="What happens?",
                    answer=answer, answer_type="open_ended", category="Plot & Narrative")


def wrap(answer: str, think: str = "I look.") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


@pytest.mark.parametrize("text,score", [
    (wrap("B"), 1.0),
    ("  <think>x</think><answer>B</answer>\n", 1.0),
    ("<think>x</think> text <answer>B</answer>", 0.0),  # text between the spans
    ("<answer>B</answer>", 0.0),
    ("<think>x</think><answer>B</answer> trailing", 0.0),
    ("<think>x</think><answer></answer>", 0.0),
    ("<think> </think><answer>B</answer>", 0.0),
    ("<think>x</think><answer>A</answer><answer>B</answer>", 0.0),
    ("<think>a<think>b</think><answer>B</answer>", 0.0),
    ("", 0.0),
    ("\x00\ufffd<think", 0.0),
])
def test_format_reward_is_strict(text, score):
    assert format_reward(text).score == score


def test_numeric_is_never_cut_at_the_dot():
    scorer = RewardScorer()
    right, cut = scorer.score([wrap("3.5"), wrap("3")], [num("3.5"), num("3.5")])
    assert right.parts["accuracy"] == 1.0 and cut.parts["accuracy"] == 0.0
    assert scorer.score([wrap("3.0")], [num("3")])[0].parts["accuracy"] == 1.0


def test_default_combination_and_bad_completions():
    scorer = RewardScorer()
    texts = [wrap("B"), "B", wrap("A"), "", "<think>\x00", wrap("Z"), "<answer>B</answer>"]
    res = scorer.score(texts, [mc()] * len(texts))
    assert [r.total for r in res] == pytest.approx([1.0, 0.0, 0.1, 0.0, 0.0, 0.1, 0.9])
    assert res[0].parts == {"accuracy": 1.0, "accuracy/answer_parsed": 1.0, "format": 1.0}
    assert res[3].parts["accuracy/answer_parsed"] == 0.0 and res[3].info["format/format"] == "empty"
    assert res[5].info["accuracy/parse"].startswith("letter Z is not an option")
    assert not any(r.errors for r in res)


def test_judge_grades_a_whole_step_with_dedup_and_cache(judge_server, tmp_path):
    cache = tmp_path / "judge.jsonl"
    cfg = RewardConfig(judge=JudgeConfig(base_url=judge_server.url, model="judge",
                                         cache_path=str(cache), backoff_s=0.01))
    scorer = RewardScorer(cfg)
    texts = [wrap("The dog opens the door slowly")] * 6 + [wrap("a cat sleeps")] * 2 + ["nothing"]
    res = scorer.score(texts, [oe()] * len(texts))
    assert [r.parts["accuracy"] for r in res] == [1.0] * 6 + [0.0] * 3
    assert len(judge_server.log) == 2  # 8 judged rollouts, 2 distinct answers, 1 untagged
    assert res[-1].parts["accuracy/answer_parsed"] == 0.0 and not res[-1].errors
    stats = scorer.ctx.judge.last_stats
    assert (stats.requests, stats.unique, stats.calls, stats.errors) == (8, 2, 2, 0)
    # the same answers again: served from the in-memory cache, then from the file after restart
    scorer.score(texts, [oe()] * len(texts))
    assert len(judge_server.log) == 2
    fresh = RewardScorer(cfg).score(texts[:1], [oe()])
    assert fresh[0].parts["accuracy"] == 1.0 and len(judge_server.log) == 2
    assert fresh[0].info["accuracy/judge"] == "cached"


def test_judge_concurrency_is_bounded(judge_server):
    judge_server.latency_s = 0.15
    judge = LLMJudge(JudgeConfig(base_url=judge_server.url, model="j", max_concurrency=3))
    verdicts = judge.judge([JudgeItem("q", "r", f"answer {i}") for i in range(9)])
    assert all(v.correct for v in verdicts)  # "answer i" contains the reference "r"
    assert judge_server.max_in_flight == 3


def test_judge_retries_transient_errors_with_backoff(judge_server):
    judge_server.fault_fn = lambda body, n: "503" if n <= 2 else None
    judge_server.responder = lambda body, choice: "No."
    judge = LLMJudge(JudgeConfig(base_url=judge_server.url, model="j", backoff_s=0.01))
    (v,) = judge.judge([JudgeItem("q", "r", "a")])
    assert v.correct is False and v.attempts == 3 and judge.last_stats.retries == 2


@pytest.mark.parametrize("fault,calls,match", [
    ("500", 3, "failed after 3 attempt"),
    ("429", 3, "RateLimitError"),
    ("400", 1, "refused the request"),  # a bad request is not retried
    ("maybe", 1, "not yes/no"),  # a reply that is neither yes nor no
    ("empty", 3, "failed after 3"),  # no text: retried like a malformed body
    ("malformed", 3, "failed after 3"),
    ("drop", 3, "failed after 3"),
    ("timeout:0.6", 3, "deadline"),
])
def test_judge_failure_is_a_recorded_error_score(judge_server, fault, calls, match):
    if fault == "maybe":
        judge_server.responder = lambda body, choice: "maybe"
    else:
        judge_server.fault_fn = lambda body, n: fault
    cfg = RewardConfig(judge=JudgeConfig(base_url=judge_server.url, model="j",
                                         max_attempts=3, backoff_s=0.01,
                                         timeout_s=0.3 if fault.startswith("timeout") else 30.0,
                                         error_score=0.0))
    scorer = RewardScorer(cfg)
    res = scorer.score([wrap("the dog opens the door"), wrap("B")], [oe(), mc()])
    assert len(settled(judge_server).log) == calls
    judged, other = res
    assert judged.parts["accuracy"] == 0.0 and judged.parts["accuracy/judge_error"] == 1.0
    assert judged.total == pytest.approx(0.1)  # format still counts
    assert len(judged.errors) == 1 and match in judged.errors[0]
    assert other.total == pytest.approx(1.0) and not other.errors  # the rest of the step is fine
    # errors are not cached: the next step asks again
    scorer.score([wrap("the dog opens the door")], [oe()])
    assert len(settled(judge_server).log) == 2 * calls


def test_no_judge_configured_is_recorded_not_guessed():
    res = RewardScorer().score([wrap("the dog opens the door")], [oe()])[0]
    assert res.parts["accuracy/judge_error"] == 1.0 and "no judge configured" in res.errors[0]


def test_judge_key_comes_from_env_and_never_reaches_errors(judge_server, monkeypatch):
    monkeypatch.setenv("LONGRL_TEST_JUDGE_KEY", "sk-secretsecret123")
    judge_server.expected_key = "sk-secretsecret123"
    judge_server.fault_fn = lambda body, n: "400"
    judge = LLMJudge(JudgeConfig(base_url=judge_server.url, model="j",
                                 api_key_env="LONGRL_TEST_JUDGE_KEY"))
    (v,) = judge.judge([JudgeItem("q", "r", "sk-secretsecret123")])
    assert judge_server.log[0]["key_ok"]
    assert "secretsecret" not in (v.error or "")


# ---- registry ------------------------------------------------------------------------------
def short_answer_bonus(completion: str, example: QARecord) -> float:
    return 1.0 if len(extract_answer(completion) or "xx") <= 1 else 0.0


@register_reward("test_fails_on_bad")
def fails_on_bad(completion: str, example: QARecord) -> RewardOutput:
    if example.id == "bad":
        raise RuntimeError("cannot grade this one")
    return RewardOutput(0.5, parts={"seen": 1.0})


@batched_reward
def broken_batch(completions, examples, ctx):
    raise RuntimeError("batch exploded")


def test_user_rewards_by_import_path_and_by_registered_plugin():
    cfg = RewardConfig(weights={"format": 0.5, f"{__name__}:short_answer_bonus": 0.25,
                                "test_fails_on_bad": 1.0},
                       plugins=[__name__])
    res = RewardScorer(cfg).score([wrap("B"), wrap("BB")], [mc(), mc(rid="bad")])
    assert res[0].parts == {"format": 1.0, "short_answer_bonus": 1.0, "test_fails_on_bad": 0.5,
                            "test_fails_on_bad/seen": 1.0}
    assert res[0].total == pytest.approx(0.5 + 0.25 + 0.5)
    # the failing item is scored error_score with the error naming it; the other item is fine
    assert res[1].parts["test_fails_on_bad"] == 0.0 and res[1].total == pytest.approx(0.5)
    assert "record bad" in res[1].errors[0] and "cannot grade" in res[1].errors[0]


def test_failing_batched_reward_is_recorded_per_item():
    cfg = RewardConfig(weights={f"{__name__}:broken_batch": 1.0})
    res = RewardScorer(cfg).score([wrap("B")] * 2, [mc(), mc()])
    assert all("batch exploded" in r.errors[0] and r.total == 0.0 for r in res)


def test_unknown_reward_names_are_errors():
    with pytest.raises(ValueError, match="unknown reward 'acuracy'.*registered: accuracy"):
        RewardScorer(RewardConfig(weights={"acuracy": 1.0}))
    with pytest.raises(ValueError, match="cannot import"):
        RewardScorer(RewardConfig(weights={"no.such.module:fn": 1.0}))
