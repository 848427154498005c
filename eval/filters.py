"""Answer extraction as named filters, in the lm-evaluation-harness manner.

A task names a chain of filters (`("strip_think", "prefer_answer_tag", "mcq_letter")`). Text
filters narrow the model's output to the part that holds the answer; the last filter, an
extractor, returns the answer or says that there is none. An output we cannot read is
*unanswerable*: it is recorded as such, counted separately and scored wrong - never replaced by a
guessed or random option (the reference evaluation scripts of several benchmarks guess).

Every extraction records which rule fired, so an audit of predictions.jsonl can see why.

Multiple-choice rules, in priority order (lmms-eval / VLMEvalKit conventions, made stricter):
1. `bare`: the whole output is one valid letter, optionally decorated: "B", "(B)", "B.", "**B**".
2. `leading`: the output starts with a letter and a delimiter: "B. a red ball", "(C) ...", "D:".
3. `answer_is`: an explicit statement - "the answer is (B)", "Answer: C", "best option: (A" -
   the last such statement wins (reasoning often mentions options before concluding).
4. `bracketed`: the last "(B)" / "[B]".
5. `option_text`: the whole output is one option's text ("a red ball").
6. `last_letter`: the last standalone capital letter that names an option, skipping the article
   "A" and the pronoun "I" before a lowercase word ("A man walks"; "A is correct" counts).
7. `option_text`: the output contains exactly one option's text; two or more is ambiguous.
Letters outside the question's options are never taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20,
}  # fmt: skip


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
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(self.options)]


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
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)


@text_filter("strip_think")
def strip_think(text: str) -> str:
    """Drop reasoning: closed <think> blocks; text before a lone </think> (the template opened
    it); an unclosed <think> to the end (a truncated thought holds no final answer)."""
    out = _THINK_BLOCK.sub(" ", text)
    low = out.lower()
    if "</think>" in low:
        out = out[low.rfind("</think>") + len("</think>") :]
        low = out.lower()
    if "<think>" in low:
        out = out[: low.find("<think>")]
    return out.strip()


_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


@text_filter("prefer_answer_tag")
def prefer_answer_tag(text: str) -> str:
    """The content of the last <answer>...</answer>; an unclosed <answer> gives the rest of the
    text; no tag leaves the text as it is."""
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        return blocks[-1].strip()
    low = text.lower()
    if "<answer>" in low:
        return text[low.rfind("<answer>") + len("<answer>") :].strip()
    return text.strip()


@text_filter("strip_markdown")
def strip_markdown(text: str) -> str:
    """Remove emphasis and code markers that wrap answers ("**B**", "`B`")."""
    return re.sub(r"[*_`]+", "", text).strip()


# -- multiple choice ---------------------------------------------------------------------------
def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


_DECOR = r"[\s\*\_`'\"\[\]\(\)\{\}\.\:\,\;\!]*"
_BARE = re.compile(_DECOR + r"(?:(?:option|choice)\s*)?" + _DECOR + r"([A-Za-z])" + _DECOR, re.I)
_LEADING = re.compile(
    r"\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])\s*[\.\):\-](?![\w.])|([A-Z])[ \t]*\r?\n)"
)
_ANSWER_IS = re.compile(
    r"\b(?:answer|option|choice)\b\s*(?:(?:is|would be|should be|will be)\b\s*)?[=:\-]?\s*"
    r"(?:(?:option|choice)\b\s*)?[\*\_`'\"]*[\(\[]?\s*([A-Z])\b",
    re.I,
)
_BRACKETED = re.compile(r"[\(\[]([A-Z])[\)\]]")
_LETTER_REF = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_WORD_AFTER = re.compile(r"\s+[a-z]")  # "A man", "I think": the letter is a word, not an option
_VERB_AFTER = re.compile(r"\s+(?:is|was|seems|appears|would|matches|fits)\b")


def _valid(letter: str, ctx: FilterContext) -> bool:
    return len(letter) == 1 and letter in ctx.letters


def _is_option_mention(
    s: str, start: int, end: int, stated: bool = False, ctx: FilterContext | None = None
) -> bool:
    """Whether the letter at s[start:end] names an option rather than being a word: the article
    "A" and pronoun "I" before a lowercase word are words ("A man walks"), unless bracketed or
    followed by a verb about options ("A is correct"); a lowercase letter must stand alone.
    After "the answer is" (`stated`) "A because ..." names option A, unless the words that
    follow begin one of the options ("the answer is a red ball")."""
    letter, rest = s[start:end], s[end:]
    if s[start - 1 : start] in ("(", "[") or re.match(r"\s*[\)\]]", rest):
        return True
    if letter.islower() and (not stated or _WORD_AFTER.match(rest)):
        return bool(re.match(r"\s*(?:[\.:,;!]|$)", rest))
    if letter in "AI" and _WORD_AFTER.match(rest) and not _VERB_AFTER.match(rest):
        if not stated:
            return False
        head = _norm(s[start : end + 40]).split()[:2]
        return not any(_norm(o).split()[:2] == head for o in (ctx.options if ctx else ()))
    return letter.isupper() or bool(re.match(r"\s*(?:[\.:,;!]|$)", rest))


@extractor("mcq_letter")
def mcq_letter(text: str, ctx: FilterContext) -> Extraction:
    """One option letter by the rules in the module docstring, or unanswerable."""
    if not ctx.options:
        raise ValueError("mcq_letter needs the question's options")
    s = text.strip()
    if not s:
        return Extraction(None, "empty", text)
    bare = _BARE.fullmatch(s)
    if bare and (bare.group(1).isupper() or len(s) <= 3) and _valid(bare.group(1).upper(), ctx):
        return Extraction(bare.group(1).upper(), "bare", text)
    lead = _LEADING.match(s)
    if lead:
        letter = next(g for g in lead.groups() if g)
        if _valid(letter, ctx):
            return Extraction(letter, "leading", text)
    stated = [
        m.group(1).upper()
        for m in _ANSWER_IS.finditer(s)
        if _is_option_mention(s, m.start(1), m.end(1), stated=True, ctx=ctx)
    ]
    stated = [c for c in stated if _valid(c, ctx)]
    if stated:
        return Extraction(stated[-1], "answer_is", text)
    bracketed = [m.group(1) for m in _BRACKETED.finditer(s) if _valid(m.group(1), ctx)]
    if bracketed:
        return Extraction(bracketed[-1], "bracketed", text)
    texts = [_norm(o) for o in ctx.options]
    norm = _norm(s)
    exact = [c for c, t in zip(ctx.letters, texts, strict=True) if t and t == norm]
    if len(exact) == 1:
        return Extraction(exact[0], "option_text", text)
    refs = [
        m.group(1) for m in _LETTER_REF.finditer(s)
        if _valid(m.group(1), ctx) and _is_option_mention(s, m.start(1), m.end(1))
    ]  # fmt: skip
    if refs:
        return Extraction(refs[-1], "last_letter", text)
    contained = [
        c for c, t in zip(ctx.letters, texts, strict=True)
        if t and re.search(r"(?:^| )" + re.escape(t) + r"(?: |$)", norm)
    ]  # fmt: skip
    if len(contained) == 1:
        return Extraction(contained[0], "option_text", text)
    return Extraction(None, "ambiguous_options" if contained else "no_option_found", text)


# -- numbers -------------------------------------------------------------------------------------
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\.\d+"
)
_STATED_NUMBER = re.compile(
    r"(?:answer|total|count|result)\s*(?:is|would be|should be|=|:)\s*", re.I
)


def parse_number(token: str) -> float:
    return float(token.replace(",", ""))


@extractor("number")
def number(text: str, ctx: FilterContext) -> Extraction:
    """A number as written ("3.5" stays 3.5, "1,000" is 1000): the first number after an
    explicit "answer is", else the last number in the text, else a number word ("three")."""
    del ctx
    s = text.strip()
    if not s:
        return Extraction(None, "empty", text)
    stated = list(_STATED_NUMBER.finditer(s))
    if stated:
        m = _NUMBER.search(s, stated[-1].end())
        if m:
            return Extraction(_canonical(m.group(0)), "answer_is", text)
    nums = _NUMBER.findall(s)
    if nums:
        return Extraction(_canonical(nums[-1]), "last_number", text)
    words = [w for w in re.findall(r"[a-z]+", s.lower()) if w in NUMBER_WORDS]
    if words:
        return Extraction(str(NUMBER_WORDS[words[-1]]), "number_word", text)
    return Extraction(None, "no_number_found", text)


def _canonical(token: str) -> str:
    value = parse_number(token)
    return (
        str(int(value))
        if value.is_integer() and "." not in token
        else token.replace(",", "").lstrip("+")
    )


def numbers_match(pred: str, gold: str, rel_tol: float = 0.0, abs_tol: float = 1e-6) -> bool:
    """Numeric equality with tolerance: |p - g| <= max(abs_tol, rel_tol * |g|)."""
    p, g = parse_number(pred), parse_number(gold)
    return abs(p - g) <= max(abs_tol, rel_tol * abs(g))


# -- open-ended -----------------------------------------------------------------------------------
@extractor("free_text")
def free_text(text: str, ctx: FilterContext) -> Extraction:
    """The remaining text, whitespace-normalised; empty output is unanswerable."""
    del ctx
    s = re.sub(r"\s+", " ", text).strip()
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
