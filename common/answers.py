"""Reading answers out of model outputs: the one implementation every grader uses.

Three places decide whether a model's answer is right: the GRPO accuracy reward
(training/grpo/rewards.py), the evaluation's named extraction filters (eval/filters.py) and the
difficulty filter of data generation (data_gen/grading.py). When they read answers differently,
a policy is rewarded for answers the evaluation grades wrong (or the reverse), and the difficulty
filter keeps questions for a pass rate the reward would not give. So the rules live here, once.

Why `common/`: data flows data_gen -> training -> eval; data_gen imports neither training nor
eval and training must not import eval, so `common` is the only package all three may import.

Strict and lenient readers differ only in *where* they look for the answer, never in how they
read it: the GRPO reward reads the last complete <answer> span after the reasoning
(`extract_answer`; no span, no answer - the format is a separate reward), while the evaluation
and the difficulty filter also accept an unclosed <answer> or a bare reply
(`answer_span(strict=False)`). The text found is then read by the same functions:

- `read_choice`: an option letter, by these rules in priority order (lmms-eval / VLMEvalKit
  conventions, made stricter); letters outside the question's options are never taken:
  1. `bare`: the whole text is one letter, optionally decorated: "B", "(B)", "B.", "Option B".
  2. `leading`: a letter and a delimiter start the text: "B. a red ball", "(C) ...", "D:".
  3. `answer_is`: an explicit statement - "the answer is (B)", "Answer: C", "best option: (A" -
     the last one wins (reasoning mentions options before concluding); a lowercase letter needs
     a connector ("answer: b", not "option a").
  4. `bracketed`: the last "(B)" / "[B]".
  5. `option_text`: the whole text is one option's text ("a red ball").
  6. `last_letter`: the last standalone capital letter naming an option, skipping the article
     "A" and pronoun "I" before a lowercase word ("A man walks"; "A is correct" counts).
  7. `option_text`: the text contains exactly one option's text (the most specific when one
     option's text contains another's: "a dark red ball" is not also "a red ball").
  Otherwise no answer: `empty`, `not_an_option` (a bare letter beyond the options),
  `ambiguous_options` or `no_option_found`. An answer that names the letter it would take
  together with another option as alternatives ("B or D", "(A) and (C)", "A/C", "either B or
  C") is `hedged`: no answer, never one of the two guessed (rules 2-4 and 6; a statement that
  picks one after weighing two, "A or B? The answer is B", is not hedged).
- `parse_number`: the first number after "the answer/total/count/result is", else the last
  number, else the last run of number words. "3.5" is never cut at the point, "1,000" is 1000,
  a lone "3,5" is 3.5 (decimal comma: one or two digits after the comma), "7/2" is 3.5, "$12",
  "40%" -> 12, 40; "1e3"; "twenty-one", "one hundred and five", "a dozen"; "none" alone is 0.
- `numbers_match`: |pred - gold| <= max(NUMERIC_ABS_TOL, NUMERIC_REL_TOL * |gold|), the single
  default tolerance of the reward and the evaluation (both configs can widen it, recorded).
- `normalize_space`: an open-ended answer as sent to the LLM judge (whitespace collapsed), so
  the reward and the evaluation ask the judge the same question about the same words.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

OPTION_LETTERS = string.ascii_uppercase
NUMERIC_REL_TOL = 1e-4  # relative to the reference answer: 3.5 vs 3.5003 matches, 3.51 does not
NUMERIC_ABS_TOL = 1e-6  # for references at or near 0


@dataclass(frozen=True)
class Parsed:
    """What was read: `value` (an option letter, a number) or None, and the rule that read it or
    why nothing was read (`rule`, a short name), with an optional human-readable `detail`."""

    value: str | float | None
    rule: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def reason(self) -> str:
        return self.detail or self.rule


# -- tags ---------------------------------------------------------------------------------------
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


def strip_think(text: str | None) -> str:
    """Drop reasoning: closed <think> blocks; text before a lone </think> (the chat template
    opened it); an unclosed <think> to the end (a truncated thought holds no final answer)."""
    out = _THINK_BLOCK.sub(" ", text or "")
    low = out.lower()
    if "</think>" in low:
        out = out[low.rfind("</think>") + len("</think>") :]
        low = out.lower()
    if "<think>" in low:
        out = out[: low.find("<think>")]
    return out.strip()


def answer_span(text: str | None, strict: bool = True) -> str | None:
    """The content of the last complete <answer>...</answer>, stripped. Without one: None when
    `strict`; otherwise the rest after an unclosed <answer>, or the whole text."""
    text = text or ""
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        return blocks[-1].strip()
    if strict:
        return None
    low = text.lower()
    if "<answer>" in low:
        return text[low.rfind("<answer>") + len("<answer>") :].strip()
    return text.strip()


def extract_answer(completion: str | None) -> str | None:
    """Strict: the last complete <answer> span outside the reasoning; None if there is none."""
    return answer_span(strip_think(completion), strict=True)


def strip_markdown(text: str) -> str:
    """Remove emphasis and code markers that wrap answers ("**B**", "`B`", "_3_")."""
    return re.sub(r"[*_`]+", "", text).strip()


def normalize_space(text: str) -> str:
    """Whitespace collapsed to single spaces, ends stripped (open-ended answers)."""
    return re.sub(r"\s+", " ", text).strip()


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed (option texts)."""
    return normalize_space(re.sub(r"[^\w\s]", " ", text.lower()))


# -- multiple choice ----------------------------------------------------------------------------
_DECOR = r"[\s\*\_`'\"\[\]\(\)\{\}\.\:\,\;\!]*"
_BARE = re.compile(_DECOR + r"(?:(?:option|choice)\s*)?" + _DECOR + r"([A-Za-z])" + _DECOR, re.I)
_LEADING = re.compile(
    r"\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])\s*[\.\):\-](?![\w.])|([A-Z])[ \t]*\r?\n)"
)
_ANSWER_IS = re.compile(
    r"\b(?:answer|option|choice)\b\s*((?:is|would be|should be|will be)\b\s*)?([=:\-])?\s*"
    r"(?:(?:option|choice)\b\s*)?[\*\_`'\"]*[\(\[]?\s*([A-Z])\b",
    re.I,
)
_BRACKETED = re.compile(r"[\(\[]([A-Z])[\)\]]")
_LETTER_REF = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_WORD_AFTER = re.compile(r"\s+[a-z]")  # "A man", "I think": the letter is a word, not an option
_VERB_AFTER = re.compile(r"\s+(?:is|was|seems|appears|would|matches|fits)\b")
_END_OR_PUNCT = re.compile(r"\s*(?:[\.:,;!]|$)")


def _is_option_mention(
    s: str, start: int, end: int, options: Sequence[str], stated: bool = False
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
        return bool(_END_OR_PUNCT.match(rest))
    if letter in "AI" and _WORD_AFTER.match(rest) and not _VERB_AFTER.match(rest):
        if not stated:
            return False
        head = normalize_text(s[start : end + 40]).split()[:2]
        return not any(normalize_text(o).split()[:2] == head for o in options)
    return letter.isupper() or bool(_END_OR_PUNCT.match(rest))


def options_in_text(text: str, options: Sequence[str]) -> list[int]:
    """Indices of the options whose (normalised) text appears in `text` as whole words, keeping
    only the most specific when one option's text contains another's."""
    norm = normalize_text(text)
    texts = [normalize_text(o) for o in options]
    found = [
        i for i, t in enumerate(texts) if t and re.search(r"(?:^| )" + re.escape(t) + r"(?: |$)", norm)
    ]  # fmt: skip
    return [i for i in found if not any(j != i and texts[i] in texts[j] for j in found)]


_JOIN = r"\s*[\)\]]?\s*(?:,|/|&|\bor\b|\band\b|\bor maybe\b|\bor possibly\b)\s*(?:(?:option|choice)\s*)?[\(\[]?\s*"
_JOINED_AFTER = re.compile(_JOIN + r"([A-Za-z])(?![A-Za-z0-9'])")
_JOINED_BEFORE = re.compile(r"(?<![A-Za-z0-9'])([A-Za-z])" + _JOIN + r"$")


def _hedged(s: str, start: int, end: int, letter: str, letters: str, options: Sequence[str]) -> Parsed | None:
    """`hedged` when the letter read at s[start:end] is joined to another option letter as an
    alternative ("B or D", "(A) and (C)", "A/C"); None otherwise."""
    after = _JOINED_AFTER.match(s, end)
    cands = []
    if after:
        cands.append((after.group(1), after.start(1), after.end(1)))
    before = _JOINED_BEFORE.search(s[:start].rstrip("([ \t"))
    if before:
        cands.append((before.group(1), before.start(1), before.end(1)))
    for other, a, b in cands:
        up = other.upper()
        if up != letter and up in letters and (other.isupper() or bool(_END_OR_PUNCT.match(s[b:]))) \
                and _is_option_mention(s, a, b, options, stated=True):
            pair = " and ".join(sorted({letter, up}))
            return Parsed(None, "hedged", f"names {pair} as alternatives; not guessed")
    return None


def read_choice(text: str | None, options: Sequence[str]) -> Parsed:
    """One option letter by the rules in the module docstring, or None with the reason."""
    if not options:
        raise ValueError("reading an option letter needs the question's options")
    letters = OPTION_LETTERS[: len(options)]
    if text is None:
        return Parsed(None, "no_answer")
    s = text.strip()
    if not s:
        return Parsed(None, "empty")
    bare = _BARE.fullmatch(s)
    bare_letter = bare.group(1).upper() if bare and (bare.group(1).isupper() or len(s) <= 3) else ""
    if bare_letter and bare_letter in letters:
        return Parsed(bare_letter, "bare")
    lead = _LEADING.match(s)
    if lead:
        g = next(i for i in range(1, 5) if lead.group(i))
        letter = lead.group(g)
        if letter in letters:
            return _hedged(s, lead.start(g), lead.end(g), letter, letters, options) or Parsed(letter, "leading")
    stated = [
        m for m in _ANSWER_IS.finditer(s)
        if (m.group(3).isupper() or m.group(1) or m.group(2))
        and _is_option_mention(s, m.start(3), m.end(3), options, stated=True)
        and m.group(3).upper() in letters
    ]
    if stated:
        m = stated[-1]
        letter = m.group(3).upper()
        return _hedged(s, m.start(3), m.end(3), letter, letters, options) or Parsed(letter, "answer_is")
    bracketed = [m for m in _BRACKETED.finditer(s) if m.group(1) in letters]
    if bracketed:
        m = bracketed[-1]
        return _hedged(s, m.start(1), m.end(1), m.group(1), letters, options) or Parsed(m.group(1), "bracketed")
    norm = normalize_text(s)
    exact = [i for i, o in enumerate(options) if normalize_text(o) and normalize_text(o) == norm]
    if len(exact) == 1:
        return Parsed(letters[exact[0]], "option_text")
    refs = [
        m for m in _LETTER_REF.finditer(s)
        if m.group(1) in letters and _is_option_mention(s, m.start(1), m.end(1), options)
    ]  # fmt: skip
    if refs:
        m = refs[-1]
        return _hedged(s, m.start(1), m.end(1), m.group(1), letters, options) or Parsed(m.group(1), "last_letter")
    contained = options_in_text(s, options)
    if len(contained) == 1:
        return Parsed(letters[contained[0]], "option_text")
    if contained:
        return Parsed(None, "ambiguous_options")
    if bare_letter:
        return Parsed(None, "not_an_option",
                      f"letter {bare_letter} is not an option ({letters[0]}-{letters[-1]})")  # fmt: skip
    return Parsed(None, "no_option_found")


# -- numbers ------------------------------------------------------------------------------------
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w|\.\d)"
)
_FRACTION = re.compile(r"(?<![\w.])([-+]?\d+)\s*/\s*(\d+)(?![\w.])")
_DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d{1,2}")
_STATED_NUMBER = re.compile(
    r"\b(?:answer|total|count|result)\s*(?:is|would be|should be|=|:)\s*", re.I
)
_NUMBER_DECOR = " \t\r\n\"'`*_"
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}  # fmt: skip
_TIMES = {"once": 1, "twice": 2, "thrice": 3}
_SCALES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 1_000_000}
NUMBER_WORDS = {**_UNITS, **_TENS, **_TIMES, **_SCALES}  # every word a number may be spelt with


def words_to_number(text: str) -> float | None:
    """The value of the last run of number words: "three" -> 3, "twenty-one" -> 21, "one hundred
    and five" -> 105, "two dozen" -> 24; "two and three" is two runs (-> 3); None if none."""
    runs: list[int] = []
    total = current = 0
    last = ""  # kind of the previous token in the open run: unit, tens, scale, and; "" if closed

    def close() -> None:
        nonlocal total, current, last
        if last:
            runs.append(total + current)
        total = current = 0
        last = ""

    for tok in re.findall(r"[a-z]+", text.lower()):
        if tok in _UNITS or tok in _TIMES or tok in _TENS:
            value = _UNITS.get(tok, _TIMES.get(tok, _TENS.get(tok, 0)))
            joins = (last == "tens" and 0 < value < 10) or last in ("scale", "and")
            if last and not joins:
                close()
            current += value
            last = "tens" if tok in _TENS else "unit"
        elif tok in _SCALES:
            scale = _SCALES[tok]
            current = (current or 1) * scale if last != "and" else current + scale
            if scale >= 1000:
                total, current = total + current, 0
            last = "scale"
        elif tok == "and" and last == "scale":
            last = "and"
        else:
            close()
    close()
    return float(runs[-1]) if runs else None


def _numbers(text: str, start: int = 0) -> list[tuple[int, float]]:
    """(position, value) of every finite number written with digits at or after `start`."""
    found: list[tuple[int, float]] = []
    spans = []
    for m in _FRACTION.finditer(text, start):
        spans.append((m.start(), m.end()))
        if int(m.group(2)):
            found.append((m.start(), int(m.group(1)) / int(m.group(2))))
    for m in _NUMBER.finditer(text, start):
        s = m.group(0)
        if not any(ch.isdigit() for ch in s) or any(a <= m.start() < b for a, b in spans):
            continue
        try:
            value = float(s.replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            found.append((m.start(), value))
    return sorted(found)


def parse_number(text: str | None) -> Parsed:
    """A number by the rules in the module docstring; None with the reason when there is none."""
    if text is None:
        return Parsed(None, "no_answer")
    t = text.strip(_NUMBER_DECOR).replace("\u2212", "-")
    if not t:
        return Parsed(None, "empty")
    if _DECIMAL_COMMA.fullmatch(t):
        return Parsed(float(t.replace(",", ".")), "decimal_comma")
    stated = list(_STATED_NUMBER.finditer(t))
    if stated:
        after = _numbers(t, stated[-1].end())
        if after:
            return Parsed(after[0][1], "answer_is")
    nums = _numbers(t)
    if nums:
        many = f"last of {len(nums)} numbers" if len(nums) > 1 else ""
        return Parsed(nums[-1][1], "last_number", many)
    if re.fullmatch(r"(?i)none|no|nothing", t.strip(" .!")):
        return Parsed(0.0, "number_word")
    value = words_to_number(t)
    if value is not None:
        return Parsed(value, "number_word")
    return Parsed(None, "no_number_found")


def format_number(value: float) -> str:
    """A number as an answer string: integers without a point ("12"), others as Python writes
    them ("3.5", "0.25")."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def to_number(value: float | int | str) -> float:
    """A number, or a string read with `parse_number` (a reference such as "1,250"); a string
    without a number is a ValueError naming it."""
    if isinstance(value, int | float):
        return float(value)
    parsed = parse_number(value)
    if not parsed.ok:
        raise ValueError(f"not a number: {value!r} ({parsed.reason})")
    return float(parsed.value)  # type: ignore[arg-type]


def numbers_match(pred: float | str, gold: float | str, rel_tol: float = NUMERIC_REL_TOL,
                  abs_tol: float = NUMERIC_ABS_TOL) -> bool:  # fmt: skip
    """|pred - gold| <= max(abs_tol, rel_tol * |gold|): the tolerance is relative to the
    reference answer. Strings are read with `parse_number` ("3.50" matches "3.5")."""
    p, g = to_number(pred), to_number(gold)
    return abs(p - g) <= max(abs_tol, rel_tol * abs(g))
