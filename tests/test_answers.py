"""common.answers: the one answer reader of the GRPO reward, the evaluation filters and the
difficulty filter - tags, option letters, numbers (digits, words, fractions, decimal commas,
thousands) and the single numeric tolerance."""

from __future__ import annotations

import pytest

from common.answers import (
    NUMERIC_ABS_TOL,
    NUMERIC_REL_TOL,
    Parsed,
    answer_span,
    extract_answer,
    format_number,
    numbers_match,
    parse_number,
    read_choice,
    strip_think,
    words_to_number,
)

OPTIONS = ["a red ball", "a blue cube", "a dark red ball", "nothing"]


def test_extract_answer_takes_the_last_span():
    assert extract_answer("<answer>A</answer> no, <answer> C </answer>") == "C"
    assert extract_answer("<answer>A") is None
    assert extract_answer("") is None


def test_strict_span_is_outside_the_reasoning_lenient_span_falls_back():
    # an <answer> written inside the thought is not the final answer
    assert extract_answer("<think>maybe <answer>A</answer></think><answer>B</answer>") == "B"
    assert extract_answer("<think>maybe <answer>A</answer></think> B") is None
    assert extract_answer("<think>unfinished <answer>A</answer>") is None  # truncated thought
    assert extract_answer("reasoning</think><answer>D</answer>") == "D"  # template opened <think>
    assert answer_span("B) a blue cube", strict=False) == "B) a blue cube"
    assert answer_span("text <answer>C. a green", strict=False) == "C. a green"
    assert answer_span("text <answer>C. a green", strict=True) is None
    assert strip_think("<THINK>a</THINK>b") == "b" and strip_think(None) == ""


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("[C]", "C"), ("**D**", "D"),
    ("Answer: B", "B"), ("The answer is (C).", "C"), ("option a", None),
    ("B. a blue cube", "B"), ("(A) a red ball", "A"),
    ("a blue cube", "B"), ("A Blue Cube!", "B"), ("it is nothing", "D"),
    ("a dark red ball", "C"),  # contains "red ball" too; the more specific option wins
    ("I think the answer is D because", "D"),
    ("E", None),  # not an option
    ("a red ball or a blue cube", None),  # ambiguous
    ("(A) or (B)", None),  # hedged: two options offered (was read as A: issue 14.6)
    ("no idea", None), ("", None), (None, None),
])  # fmt: skip
def test_parse_choice(text, letter):
    assert read_choice(text, OPTIONS).value == letter


def test_choice_reasons_name_the_rule():
    assert read_choice("Z", OPTIONS).reason == "letter Z is not an option (A-D)"
    assert read_choice("It is a dark red ball, not a blue cube", OPTIONS).rule == "ambiguous_options"
    assert read_choice("It is a dark red ball", OPTIONS) == Parsed("C", "option_text")
    assert read_choice("answer: b", OPTIONS).rule == "answer_is"  # a connector makes "b" a letter
    with pytest.raises(ValueError, match="needs the question's options"):
        read_choice("A", [])


@pytest.mark.parametrize("text,value", [
    ("3.5", 3.5), ("3.50", 3.5), ("3.5.", 3.5), ("1,000", 1000.0), ("1,234,567.5", 1234567.5),
    ("3,5", 3.5), ("7/2", 3.5), ("$12", 12.0), ("40%", 40.0), ("-2", -2.0), ("\u22122", -2.0),
    ("1e3", 1000.0), ("about 3.5 seconds", 3.5), ("between 2 and 3", 3.0), ("5-7", 7.0),
    ("three", 3.0), ("Twenty-one", 21.0), ("one hundred and five", 105.0), ("none", 0.0),
    ("twice", 2.0), ("two thousand", 2000.0), (".5", 0.5),
    ("many", None), ("", None), (None, None), ("v2", None),
])  # fmt: skip
def test_parse_number(text, value):
    parsed = parse_number(text)
    assert parsed.value == (pytest.approx(value) if value is not None else None), parsed.reason


@pytest.mark.parametrize("text,value,rule", [
    ("the count is 4, not 5 as in frame 2", 4.0, "answer_is"),  # a stated answer wins
    ("I saw 3 cars, then 2 more: the total is 5", 5.0, "answer_is"),
    ("3.5x", None, "no_number_found"),  # never cut at the point: 3.5x is not 3
    ("1,25", 1.25, "decimal_comma"),  # one or two digits after a lone comma: decimal
    ("1,250", 1250.0, "last_number"),  # three: thousands
    ("two and three", 3.0, "number_word"),  # two runs, the last counts (not 2 + 3)
    ("I count one, then two, so four", 4.0, "number_word"),
    ("a dozen", 12.0, "number_word"), ("two dozen", 24.0, "number_word"),
    ("one hundred twenty-three", 123.0, "number_word"),
    ("3/0", None, "no_number_found"),  # no division by zero, no stray digit either
])  # fmt: skip
def test_number_rules(text, value, rule):
    got = parse_number(text)
    assert (got.value, got.rule) == (value, rule)


def test_words_to_number_runs():
    assert words_to_number("five hundred thousand") == 500_000
    assert words_to_number("no numbers here") is None


def test_one_documented_tolerance_relative_to_the_reference():
    assert (NUMERIC_REL_TOL, NUMERIC_ABS_TOL) == (1e-4, 1e-6)
    assert numbers_match("3.50", "3.5") and numbers_match(3.5, "3,5") and numbers_match("1,250", 1250)
    assert numbers_match(1000.09, 1000) and not numbers_match(1000.11, 1000)  # 1e-4 of 1000 = 0.1
    assert numbers_match(3.5003, 3.5) and not numbers_match(3.51, 3.5) and not numbers_match(3, 3.5)
    assert numbers_match(5e-7, 0) and not numbers_match(2e-6, 0)  # absolute near zero
    assert numbers_match("100", "101", rel_tol=0.02) and not numbers_match("100", "103", rel_tol=0.02)
    with pytest.raises(ValueError, match="not a number: 'lots'"):
        numbers_match("lots", "3")


def test_format_number_is_canonical():
    assert [format_number(v) for v in (12.0, 3.5, -2.25, 1250.0, 0.25)] == [
        "12", "3.5", "-2.25", "1250", "0.25"
    ]  # fmt: skip


@pytest.mark.parametrize("text,pair", [
    ("It could be B or D.", "B and D"),
    ("(A) and (C)", "A and C"),
    ("A/C", "A and C"),
    ("either B or C", "B and C"),
    ("The answer is B or D", "B and D"),
    ("Answer: (B) or (C)", "B and C"),
    ("B, D", "B and D"),
    ("Options A and C are both plausible", "A and C"),
])
def test_hedged_answers_are_not_guessed(text, pair):
    """Two options offered as alternatives: no answer (was the last letter: D, or the first: A)."""
    got = read_choice(text, OPTIONS)
    assert (got.value, got.rule) == (None, "hedged"), text
    assert pair in got.detail


@pytest.mark.parametrize("text,letter,rule", [
    ("A or B? The answer is B.", "B", "answer_is"),  # weighed two, then stated one
    ("Between A and B, the answer is B", "B", "answer_is"),
    ("The answer is A, because the ball", "A", "answer_is"),
    ("The answer is C. A and B are wrong.", "C", "answer_is"),
    ("B. a blue cube", "B", "leading"),
    ("A man walks. Answer: C", "C", "answer_is"),
])
def test_a_stated_choice_next_to_other_letters_is_not_hedged(text, letter, rule):
    assert (read_choice(text, OPTIONS).value, read_choice(text, OPTIONS).rule) == (letter, rule), text

