"""Scoring one generation, and predictions.jsonl repairs after a kill mid-write."""

from __future__ import annotations

import json

from eval.engines import Generation
from eval.runner import EvalConfig, score
from eval.store import PredictionStore
from eval.task import EvalItem, get_task


def _score(item: EvalItem, text: str, task: str = "synth", **cfg) -> dict:
    return score(get_task(task), item, Generation(text, 5, True), EvalConfig(**cfg))


def test_scoring_by_answer_type() -> None:
    mc = EvalItem("q1", "v.mp4", "Which?", "B", "multiple_choice", options=["red", "blue", "green"])
    assert _score(mc, "<think>hmm</think><answer>B</answer>")["correct"] is True
    assert _score(mc, "blue")["correct"] is True
    r = _score(mc, "I am not sure what happens")
    assert (r["status"], r["correct"], r["extracted"]) == ("unanswered", False, None)
    num = EvalItem("q2", "v.mp4", "How long?", "3.5", "numeric")
    assert _score(num, "<answer>3.5</answer>")["correct"] is True
    assert _score(num, "<answer>3</answer>")["correct"] is False
    assert _score(num, "<answer>3.6</answer>", numeric_rel_tol=0.05)["correct"] is True
    open_ = EvalItem("q3", "v.mp4", "What?", "a dog", "open_ended")
    r = _score(open_, "<answer>a brown dog</answer>")
    assert (r["status"], r["correct"], r["extracted"]) == (
        "answered",
        None,
        "a brown dog",
    )  # judge decides


def test_store_drops_a_torn_last_line_and_keeps_the_rest(tmp_path) -> None:
    store = PredictionStore(tmp_path / "predictions.jsonl")
    store.append([{"qid": "a", "x": 1}, {"qid": "b", "x": 2}])
    with store.path.open("a") as fh:
        fh.write('{"qid": "c", "x"')
    loaded = store.load()
    assert list(loaded) == ["a", "b"] and store.dropped_partial
    assert store.path.read_text().endswith('"x": 2}\n')  # truncated back to the last full line
    store.append([{"qid": "c", "x": 3}])
    assert [json.loads(x)["qid"] for x in store.path.read_text().splitlines()] == ["a", "b", "c"]
    store.rewrite([{"qid": "a", "x": 9}])
    assert PredictionStore(store.path).load() == {"a": {"qid": "a", "x": 9}}


def test_store_refuses_a_damaged_line_in_the_middle(tmp_path) -> None:
    import pytest

    path = tmp_path / "predictions.jsonl"
    path.write_text('{"qid": "a"}\n{"qid": broken}\n{"qid": "c"}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: not valid JSON"):
        PredictionStore(path).load()
    assert path.read_text().count("\n") == 3  # nothing truncated
