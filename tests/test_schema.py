"""The dataset record: validation names the record and the reason; features round-trip."""

from __future__ import annotations

import pytest

from data_gen.schema import QARecord, RecordError, features, question_id


def _rec(**kw):
    base = dict(id="q", video_id="v", video_path="v.mp4", question="Which came first?", answer="A",
                answer_type="multiple_choice", category="Temporal", options=["the red circle", "the blue square"])
    base.update(kw)
    return QARecord(**base)


def test_valid_record_and_answer_text():
    rec = _rec().validate()
    assert rec.answer_text() == "the red circle" and rec.option_letters() == "AB"


@pytest.mark.parametrize(
    ("kw", "reason"),
    [({"answer": "C"}, "not one of"), ({"category": "Other"}, "category"), ({"question": " "}, "empty question"),
     ({"answer_type": "numeric", "options": [], "answer": "3,5"}, "not a number"),
     ({"answer_type": "open_ended", "answer": "red"}, "must not have options"),
     ({"options": ["a", "A"]}, "duplicate options"), ({"pass_rate": 1.5}, "pass_rate")],
)
def test_invalid_records_are_named(kw, reason):
    with pytest.raises(RecordError, match=reason) as err:
        _rec(**kw).validate()
    assert "record q (video v)" in str(err.value)


def test_numeric_answer_keeps_decimals_and_ids_are_stable():
    rec = _rec(answer_type="numeric", options=[], answer="3.5").validate()
    assert float(rec.answer) == 3.5
    assert question_id("d", "Q?") == question_id("d", " Q? ") != question_id("d2", "Q?")


def test_features_cover_every_field():
    assert set(features()) == set(QARecord.__dataclass_fields__)
