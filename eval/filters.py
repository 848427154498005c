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

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

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
from common.math_answers import (
    boxed_content,
    exact_value,
    format_value,
    math_equal,
)


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


# -- math word problems (GSM8K, MATH): exact answers ------------------------------------------
# A number as math solutions write it: "-3", "1,250", "$18.50", "0.5", ".5"
_MATH_NUMBER = re.compile(r"(?<![\w.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_HASH_ANSWER = re.compile(r"####\s*(\S+)")
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*:?\s*", re.I)
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.I)


def _number_value(text: str) -> Fraction | None:
    """The exact value of one number as written ("1,250", "$18", "3.50")."""
    return exact_value(text.replace("$", ""))


def last_number_in(text: str) -> str | None:
    """The last number of `text` in canonical form ("1250", "3.5"), or None."""
    for m in reversed(list(_MATH_NUMBER.finditer(text))):
        value = _number_value(m.group(0))
        if value is not None:
            return format_value(value)
    return None


def _stated_answer(text: str) -> str | None:
    """What follows the last "final answer is" / "the answer is" / "Answer:", to the end of its
    line (Minerva's "Final Answer: The final answer is X. I hope it is correct." included)."""
    found = list(_ANSWER_IS.finditer(text))
    if not found:
        return None
    rest = text[found[-1].end() :].split("\n")[0]
    rest = _HOPE.sub("", rest).strip().strip("$").strip().rstrip(".").strip()
    return rest or None


_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"\b[a-z]{2,}\b")


def _is_prose(s: str) -> bool:
    """Several words with a lowercase one ("so 0.5", "it is 3") rather than an answer ("x^2+1",
    "\\frac{3}{4}", "odd", "(1, 2)")."""
    bare = _LATEX_CMD.sub(" ", s)
    return len(bare.split()) > 1 and bool(_WORD.search(bare))


@extractor("boxed")
def boxed(text: str, ctx: FilterContext) -> Extraction:
    """The content of the last \\boxed{...} (nested braces kept), or unanswerable."""
    del ctx
    got = boxed_content(text)
    return Extraction(got, "boxed", text) if got else Extraction(None, "no_boxed", text)


@extractor("last_number")
def last_number(text: str, ctx: FilterContext) -> Extraction:
    """The last number in the text, canonical ("1,250" -> "1250", "$18.00" -> "18")
    (lm-evaluation-harness' flexible extract)."""
    del ctx
    got = last_number_in(text)
    return Extraction(got, "last_number", text) if got else Extraction(None, "no_number", text)


@extractor("gsm8k_number")
def gsm8k_number(text: str, ctx: FilterContext) -> Extraction:
    """A GSM8K answer, canonical, by the first rule that reads one: `hash` ("#### 72", the
    dataset's own format), `boxed` (the number in the last \\boxed{}), `answer_is` ("The
    answer is $18."), `last_number`."""
    del ctx
    if found := _HASH_ANSWER.findall(text):
        if (got := last_number_in(found[-1])) is not None:
            return Extraction(got, "hash", text)
    if (box := boxed_content(text)) is not None:
        value = exact_value(box)
        got = format_value(value) if value is not None else last_number_in(box)
        if got is not None:
            return Extraction(got, "boxed", text)
    if (stated := _stated_answer(text)) is not None and (got := last_number_in(stated)) is not None:
        return Extraction(got, "answer_is", text)
    if (got := last_number_in(text)) is not None:
        return Extraction(got, "last_number", text)
    return Extraction(None, "no_number", text)


@extractor("math_answer")
def math_answer(text: str, ctx: FilterContext) -> Extraction:
    """A MATH answer as written (graded by `math_equiv`): `boxed` (the last \\boxed{}),
    `final_answer` ("The final answer is $\\frac{3}{4}$."), `whole` (a short one-line reply, as
    an <answer> span is), `last_number`."""
    del ctx
    if (box := boxed_content(text)) is not None:
        return Extraction(box, "boxed", text)
    if (stated := _stated_answer(text)) is not None:
        return Extraction(stated, "final_answer", text)
    s = text.strip().strip("$").strip()
    if s and "\n" not in s and len(s) <= 40 and not _is_prose(s):
        return Extraction(s, "whole", text)
    if (got := last_number_in(text)) is not None:
        return Extraction(got, "last_number", text)
    return Extraction(None, "no_answer", text)


# -- graders: tasks whose answers are compared exactly (TaskSpec.grader) ---------------------------
def _exact_number(pred: str, gold: str) -> bool:
    vp, vg = exact_value(pred), exact_value(gold)
    return vp is not None and vg is not None and vp == vg


GRADERS: dict[str, Callable[[str, str], bool]] = {
    "exact_number": _exact_number,  # the same rational value ("72" == "72.0", 10001 != 10000)
    "math_equiv": math_equal,  # the same normalised LaTeX, or the same rational value
}


def grade(name: str, pred: str | None, gold: str) -> bool:
    """Whether `pred` is right by grader `name` (None, an unanswerable output, is wrong)."""
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r}; known: {sorted(GRADERS)}")
    return pred is not None and GRADERS[name](pred, gold)


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
GSM8K_CHAIN = ("strip_think", "prefer_answer_tag", "gsm8k_number")
MATH_CHAIN = ("strip_think", "prefer_answer_tag", "math_answer")
