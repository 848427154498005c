"""Is a model's reply the record's answer? Used by the difficulty filter.

Replies are read by `common.answers`, the reader of the GRPO reward and the evaluation filters,
so a question's pass rate here is the rate at which the reward would call those replies right.
Like the evaluation (and unlike the reward, which also scores the format), the final answer is
the last <answer>...</answer> after any reasoning, else the whole reply without its <think>
block. Multiple choice: `read_choice` (letter forms, "the answer is B", option texts).
Numeric: `parse_number` compared with `numbers_match` ("3.50" == "3.5"; "3.5" is never cut to
"3"; the shared tolerance). Open-ended (no judge here): the normalised reference (lower case, no
articles or punctuation) equals the normalised answer or appears in it as whole words.
"""

from __future__ import annotations

import re

from common.answers import (
    answer_span,
    numbers_match,
    parse_number,
    read_choice,
    strip_markdown,
    strip_think,
)
from common.short_answers import exact_open, short_answer_matches
from data_gen.schema import QARecord


def final_answer(reply: str) -> str:
    """The last <answer> span after the reasoning, else the reply without its <think> block."""
    return answer_span(strip_think(reply), strict=False) or ""


def normalise(text: str) -> str:
    text = re.sub(r"[^\w\s-]", " ", text.lower())
    words = [w for w in text.replace("-", " ").split() if w not in ("a", "an", "the")]
    return " ".join(words)


def is_correct(record: QARecord, reply: str) -> bool:
    ans = final_answer(reply)
    if record.answer_type == "multiple_choice":
        return read_choice(strip_markdown(ans), record.options).value == record.answer
    if record.answer_type == "numeric":
        got = parse_number(strip_markdown(ans))
        return got.ok and numbers_match(got.value, float(record.answer))  # type: ignore[arg-type]
    if exact_open(record.source):  # a closed-vocabulary name: the reward's and eval's exact rule
        return short_answer_matches(strip_markdown(ans), record.answer)
    ref, got_text = normalise(record.answer), normalise(ans)
    return bool(ref) and (got_text == ref or f" {ref} " in f" {got_text} ")
