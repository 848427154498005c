"""Answer extraction as named filters, in the lm-evaluation-harness manner.

A task names a chain of filters (`("strip_think", "prefer_answer_tag", "mcq_letter")`). Text
filters narrow the model's output to the part that holds the answer; the last filter, an
extractor, returns the answer or says that there is none. An output we cannot read is
*unanswerable*: it is recorded as such, counted separately and scored wrong - never replaced by a
guessed or random option (the reference evaluation scripts of several benchmarks guess).

Every extraction records which rule fired, so an audit of predictions.jsonl can see why.

The filters are built from `common.answers`, the one answer reader the GRPO reward and the
difficulty filter use too, so a completion the reward scores right is graded right here. The
evaluation is lenient about *where* the answer is (an unclosed <answer>, or a bare reply with no
tags at all, which the reward does not accept); how the answer is read - the multiple-choice
priority rules (bare letter, leading letter, "the answer is", "(A)", option text, last valid
letter), number parsing and the numeric tolerance - is `common.answers`' and documented there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.answers import (
    OPTION_LETTERS,
    answer_span,
    format_number,
    normalize_space,
    parse_number,
    read_choice,
    strip_markdown,
    strip_think,
)
from common.answers import numbers_match as numbers_match  # the graders' numeric comparison


@dataclass
class Extraction:
    """The answer read from one output; `answer` is None when the output is unanswerable."""

    answer: str | None
    rule: str  # the rule that produced the answer, or why there is none
    text: str = ""  # the text the extractor saw (after the text filters)

    @property
    def answered(self) -> bool:
        return self.answer is not None


@dataclass
class FilterContext:
    """What an extractor may need besides the text: the options of a multiple-choice question."""

    options: Sequence[str] = field(default_factory=tuple)

    @property
    def letters(self) -> str:
        return OPTION_LETTERS[: len(self.options)]


TextFilter = Callable[[str], str]
Extractor = Callable[[str, FilterContext], Extraction]
TEXT_FILTERS: dict[str, TextFilter] = {}
EXTRACTORS: dict[str, Extractor] = {}


def text_filter(name: str) -> Callable[[TextFilter], TextFilter]:
    def deco(fn: TextFilter) -> TextFilter:
        TEXT_FILTERS[name] = fn
        return fn

    return deco


def extractor(name: str) -> Callable[[Extractor], Extractor]:
    def deco(fn: Extractor) -> Extractor:
        EXTRACTORS[name] = fn
        return fn

    return deco


# -- text filters ----------------------------------------------------------------------------
text_filter("strip_think")(strip_think)
text_filter("strip_markdown")(strip_markdown)


@text_filter("prefer_answer_tag")
def prefer_answer_tag(text: str) -> str:
    """The content of the last <answer>...</answer>; an unclosed <answer> gives the rest of the
    text; no tag leaves the text as it is."""
    return answer_span(text, strict=False) or ""


# -- extractors ----------------------------------------------------------------------------------
@extractor("mcq_letter")
def mcq_letter(text: str, ctx: FilterContext) -> Extraction:
    """One option letter by `common.answers.read_choice`'s priority rules, or unanswerable."""
    if not ctx.options:
        raise ValueError("mcq_letter needs the question's options")
    got = read_choice(text, ctx.options)
    return Extraction(got.value, got.rule, text)  # type: ignore[arg-type]


@extractor("number")
def number(text: str, ctx: FilterContext) -> Extraction:
    """A number as written ("3.5" stays 3.5, "1,000" is 1000, "three" is 3) by
    `common.answers.parse_number`: the first number after an explicit "answer is", else the last
    number, else number words. The answer is the number's canonical string ("1250", "3.5")."""
    del ctx
    got = parse_number(text)
    answer = format_number(got.value) if got.ok else None  # type: ignore[arg-type]
    return Extraction(answer, got.rule, text)


@extractor("free_text")
def free_text(text: str, ctx: FilterContext) -> Extraction:
    """The remaining text, whitespace-normalised (what the judge sees); empty is unanswerable."""
    del ctx
    s = normalize_space(text)
    return Extraction(s, "text", text) if s else Extraction(None, "empty", text)


# -- chains ---------------------------------------------------------------------------------------
def apply_chain(chain: Sequence[str], output: str, ctx: FilterContext | None = None) -> Extraction:
    """Run text filters then the extractor named last in `chain`."""
    if not chain or chain[-1] not in EXTRACTORS:
        raise ValueError(
            f"filter chain {list(chain)} must end with an extractor ({sorted(EXTRACTORS)})"
        )
    text = output
    for name in chain[:-1]:
        if name not in TEXT_FILTERS:
            raise ValueError(f"unknown text filter {name!r}; known: {sorted(TEXT_FILTERS)}")
        text = TEXT_FILTERS[name](text)
    return EXTRACTORS[chain[-1]](text, ctx or FilterContext())


def check_chain(chain: Sequence[str]) -> None:
    """Raise ValueError for an unknown filter name (used when tasks are registered)."""
    if not chain or chain[-1] not in EXTRACTORS:
        raise ValueError(
            f"filter chain {list(chain)} must end with an extractor ({sorted(EXTRACTORS)})"
        )
    for name in chain[:-1]:
        if name not in TEXT_FILTERS:
            raise ValueError(f"unknown text filter {name!r}; known: {sorted(TEXT_FILTERS)}")


MCQ_CHAIN = ("strip_think", "prefer_answer_tag", "strip_markdown", "mcq_letter")
NUMBER_CHAIN = ("strip_think", "prefer_answer_tag", "strip_markdown", "number")
OPEN_CHAIN = ("strip_think", "prefer_answer_tag", "free_text")
