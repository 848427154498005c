"""Small parts of data_gen's build: reply parsing, grading, near-duplicates, video splits,
prompt templates, clip spans, the unit cache."""

from __future__ import annotations

import json

import pytest

from data_gen.difficulty import NoisyOracleAnswerer, apply_verdicts, near_duplicates
from data_gen.grading import final_answer, is_correct
from data_gen.prompt_templates import PromptError, load_prompt
from data_gen.qa_format import ReplyError, VideoRef, extract_json, parse_qa_reply
from data_gen.schema import QARecord
from data_gen.sources import clip_spans
from data_gen.splits import assign_videos
from data_gen.unit_cache import UnitCache

VIDEO = VideoRef("v1", "/videos/v1.mp4", "ab" * 32, 60.0)


def _item(**kw) -> dict:
    item = {"question": "What colour is the ball at the end?", "category": "Plot & Narrative",
            "answer_type": "multiple_choice", "options": ["red", "blue", "green"], "answer": "B",
            "reasoning": "At 50 s the ball turns blue and stays so."}
    item.update(kw)
    return item


def test_reply_parsing_accepts_real_reply_styles():
    reply = {"questions": [_item(options=["A. red", "B. blue", "C. green"], answer="(b)"),
                           _item(question="How many balls?", answer_type="numeric", options=[], answer=3.0,
                                 category="Temporal")]}
    text = "<think>let me see</think>Here you go:\n```json\n" + json.dumps(reply) + "\n```"
    recs, errors = parse_qa_reply(text, VIDEO, "llm", "{}")
    assert errors == []
    assert recs[0].options == ["red", "blue", "green"] and recs[0].answer == "B"
    assert recs[1].answer == "3" and recs[1].clip_end_s == 60.0 and recs[1].video_digest == VIDEO.video_digest


def test_reply_errors_name_the_item_and_the_reason():
    reply = {"questions": [_item(), _item(question="Which?", answer="D"), _item(question="Where then?", clip_end_s=99.0),
                           _item()]}
    recs, errors = parse_qa_reply(reply, VIDEO, "llm", "{}")
    assert len(recs) == 1
    assert errors[0].startswith("questions/1:") and "answer 'D' is not one of" in errors[0]
    assert errors[1].startswith("questions/2:") and "past the end of the video" in errors[1]
    assert errors[2] == "questions/3: duplicate of an earlier question"
    with pytest.raises(ReplyError, match="not valid JSON"):
        parse_qa_reply("Sorry, I cannot help.", VIDEO, "llm", "{}")
    with pytest.raises(ReplyError, match="does not fit the schema.*category"):
        parse_qa_reply({"questions": [_item(category="Humour")]}, VIDEO, "llm", "{}")
    assert extract_json('noise {"a": 1} noise') == {"a": 1}


def _rec(answer_type="multiple_choice", answer="B", options=("x", "y", "z"), question="Q?", vid="v") -> QARecord:
    return QARecord(id=question + vid, video_id=vid, video_path="p", question=question, answer=answer,
                    answer_type=answer_type, category="Temporal", options=list(options))


def test_grading():
    mc = _rec()
    assert is_correct(mc, "<think>A looks wrong</think><answer>B</answer>")
    assert is_correct(mc, "The answer is (B).") and is_correct(mc, "<answer>y</answer>")
    assert not is_correct(mc, "<think>B?</think><answer>C</answer>")
    num = _rec("numeric", "3.5", ())
    assert is_correct(num, "<answer>3.50</answer>") and not is_correct(num, "<answer>3</answer>")
    assert is_correct(_rec("numeric", "3", ()), "<answer>three</answer>")
    text = _rec("open_ended", "top-left", ())
    assert is_correct(text, "<answer>In the top left.</answer>") and not is_correct(text, "<answer>top</answer>")
    assert final_answer("<answer>a</answer> then <answer>b</answer>") == "b"


def test_near_duplicates_need_same_video_same_answer_and_similar_text():
    a = _rec(question="What colour was the star when it first appeared?", answer="A")
    b = _rec(question="What color was the star when it first appeared?", answer="A")
    c = _rec(question="What color was the star when it first appeared?", answer="C")  # other answer
    d = _rec(question="What color was the star when it first appeared?", answer="A", vid="w")  # other video
    kept, rejects = near_duplicates([a, b, c, d], 0.95)
    assert kept == [a, c, d] and rejects[0].item == b.id and f"near-duplicate of {a.id}" in rejects[0].reason


async def _oracle(records, k):
    o = NoisyOracleAnswerer(seed=1)
    return {r.id: [is_correct(r, x) for x in await o.answer(r, k)] for r in records}


def test_filter_drops_always_right_and_wrong():
    import asyncio

    recs = [_rec(question=f"Q{i}?") for i in range(40)]
    correct = asyncio.run(_oracle(recs, 6))
    verdicts = {i: {"correct": c, "pass_rate": sum(c) / 6} for i, c in correct.items()}
    kept, rejects = apply_verdicts(recs, verdicts, True, True)
    assert kept and rejects and len(kept) + len(rejects) == 40
    assert all(0 < r.pass_rate < 1 for r in kept)
    assert {r.reason.split(" (")[0] for r in rejects} == {"always right", "always wrong"}


def test_video_splits_are_disjoint_proportional_and_stable():
    digests = {f"v{i}": f"{i:064x}" for i in range(20)}
    a = assign_videos(digests, {"sft": 0.35, "rl": 0.55, "eval": 0.10}, seed=0)
    assert a == assign_videos(dict(reversed(digests.items())), {"sft": 0.35, "rl": 0.55, "eval": 0.10}, seed=0)
    sizes = {s: sum(v == s for v in a.values()) for s in ("sft", "rl", "eval")}
    assert sizes == {"sft": 7, "rl": 11, "eval": 2}
    assert a != assign_videos(digests, {"sft": 0.35, "rl": 0.55, "eval": 0.10}, seed=1)
    few = assign_videos({"a": "1", "b": "2", "c": "3"}, {"sft": 0.35, "rl": 0.55, "eval": 0.10}, seed=0)
    assert sorted(few.values()) == ["eval", "rl", "sft"]
    assert set(assign_videos({"a": "1", "b": "2"}, {"sft": 0.5, "rl": 0.5, "eval": 0.0}, 0).values()) == {"sft", "rl"}


def test_prompts_clips_and_cache(tmp_path):
    qa = load_prompt("qa.v1")
    msgs = qa.messages(duration=30.0, captions="[0.0-10.0 s] x", per_category=1, categories="Temporal")
    assert '{"questions": [{"question"' in msgs[0]["content"] and "Temporal" in msgs[1]["content"]
    assert qa.version.startswith("qa.v1@") and len(qa.digest) == 16
    with pytest.raises(PromptError, match="missing value"):
        qa.messages(duration=1.0)
    with pytest.raises(PromptError, match="does not exist"):
        load_prompt("qa.v999")
    assert clip_spans(25.0, 10.0, 2.0) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert clip_spans(21.0, 10.0, 2.0) == [(0.0, 10.0), (10.0, 21.0)]
    cache = UnitCache(tmp_path)
    parts = {"video": "d", "span": [0, 10], "model": "m"}
    assert cache.get("caption", parts) is None
    cache.put("caption", parts, {"text": "hello"})
    assert UnitCache(tmp_path).get("caption", dict(reversed(parts.items()))) == {"text": "hello"}
    assert cache.get("caption", {**parts, "model": "other"}) is None and cache.count("caption") == 1
