"""Reading answers out of completions: the <answer> span, option letters, numbers.

Pure string functions, each returning the parsed value or None plus a short reason, so a reward
can record *why* an answer was not understood instead of silently counting it wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from data_gen.schema import OPTION_LETTERS

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def extract_answer(completion: str) -> str | None:
    """Content of the last complete <answer>...</answer> span, stripped; None if there is none."""
    found = ANSWER_RE.findall(completion or "")
    return found[-1].strip() if found else None


@dataclass(frozen=True)
class Parsed:
    value: str | float | None
    reason: str  # how it was read ("letter", "option text", ...) or why not ("ambiguous", ...)

    @property
    def ok(self) -> bool:
        return self.value is not None


# --------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------
_DECOR = " \t\n\"'`*_"
# "B", "(B)", "[B]", "B.", "B)", "Option B", "The answer is B", "Answer: (B)."
_LONE_LETTER_RE = re.compile(
    r"^(?:(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*:?\s*)?"
    r"[(\[]?([A-Z])[)\]]?[.:)]?$",
    re.IGNORECASE,
)
# "B. the red ball", "(B) the red ball", "B: red", "B - red"
_LEADING_LETTER_RE = re.compile(r"^[(\[]?([A-Z])(?:[)\]]\s*|[.:]\s+|\s+[-\u2013]\s+)\S")
# "... the answer is B ..." / "option (B)" inside a longer text
_INLINE_LETTER_RE = re.compile(
    r"\b(?i:answer|option|choice)\s*(?i:is\s*)?:?\s*[(\[]?([A-Z])\b[)\]]?")
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")


def _norm_text(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


def parse_choice(text: str | None, options: list[str]) -> Parsed:
    """Map an answer to an option letter: a letter form, the option's text, or a unique mention.

    Order: whole-answer letter forms ("B", "(B)", "Answer: B"), a leading letter with a
    delimiter ("B. red ball"), the exact text of one option, the text of exactly one option
    contained in the answer, then "answer is B"/"(B)" inside longer text. Letters outside the
    question's options, or several different candidates, give None with the reason.
    """
    if text is None:
        return Parsed(None, "no answer")
    letters = OPTION_LETTERS[: len(options)]
    t = text.strip(_DECOR)
    if not t:
        return Parsed(None, "empty answer")
    m = _LONE_LETTER_RE.match(t)
    if m and (m.group(1).isupper() or len(t) == 1 or t[0] in "([" or t.lower() != t):
        return _letter(m.group(1).upper(), letters, "letter")
    m = _LEADING_LETTER_RE.match(t)
    if m:
        return _letter(m.group(1), letters, "leading letter")
    norm = _norm_text(t)
    norm_opts = [_norm_text(o) for o in options]
    exact = [i for i, o in enumerate(norm_opts) if o and o == norm]
    if len(exact) == 1:
        return Parsed(letters[exact[0]], "option text")
    contained = [i for i, o in enumerate(norm_opts) if o and re.search(rf"\b{re.escape(o)}\b", norm)]
    # "dark red" contains "red": keep only the most specific matches.
    contained = [i for i in contained
                 if not any(j != i and norm_opts[i] in norm_opts[j] for j in contained)]
    if len(contained) == 1:
        return Parsed(letters[contained[0]], "option text inside answer")
    if len(contained) > 1:
        return Parsed(None, "ambiguous: several option texts")
    inline = {c for c in _INLINE_LETTER_RE.findall(t) if c in letters}
    inline |= {c for c in _PAREN_LETTER_RE.findall(t) if c in letters}
    if len(inline) == 1:
        return Parsed(inline.pop(), "letter inside answer")
    if len(inline) > 1:
        return Parsed(None, "ambiguous: several letters")
    return Parsed(None, "no option letter or option text found")


def _letter(letter: str, letters: str, how: str) -> Parsed:
    if letter not in letters:
        return Parsed(None, f"letter {letter} is not an option ({letters[0]}-{letters[-1]})")
    return Parsed(letter, how)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
_NUMBER_RE = re.compile(
    r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
)
_FRACTION_RE = re.compile(r"(?<![\w.])([-+]?\d+)\s*/\s*(\d+)(?![\w.])")
_DECIMAL_COMMA_RE = re.compile(r"^[-+]?\d+,\d{1,2}$")
_SMALL = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
     "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
     "nineteen"])}
_SMALL.update({"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
               "eighty": 80, "ninety": 90, "dozen": 12, "once": 1, "twice": 2, "thrice": 3})
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


def _words_to_number(text: str) -> float | None:
    """"three" -> 3, "twenty-one" -> 21, "one hundred and five" -> 105, "none" -> 0; reads the
    first run of number words; None if there is none."""
    tokens = re.findall(r"[a-z]+", text.lower().replace("-", " "))
    if tokens in (["none"], ["no"], ["zero"]):
        return 0.0
    total = current = 0
    seen = False
    for tok in tokens:
        if tok in _SMALL:
            current += _SMALL[tok]
            seen = True
        elif tok in _SCALES and seen:
            current *= _SCALES[tok]
            if _SCALES[tok] >= 1000:
                total, current = total + current, 0
        elif tok == "and" and seen:
            continue
        elif seen:
            break
    return float(total + current) if seen else None


def parse_number(text: str | None) -> Parsed:
    """Tolerant number reading: "3.5" -> 3.5 (never cut at the dot), "1,000" -> 1000,
    "3,5" alone -> 3.5 (decimal comma), "7/2" -> 3.5, "$12", "40%" -> 40, "-2", "1e3",
    "three" / "twenty-one". Several numbers in one answer: the last is taken (the reason
    says so); no number: None."""
    if text is None:
        return Parsed(None, "no answer")
    t = text.strip(_DECOR).replace("\u2212", "-")
    if not t:
        return Parsed(None, "empty answer")
    if _DECIMAL_COMMA_RE.match(t):
        return Parsed(float(t.replace(",", ".")), "decimal comma")
    candidates: list[tuple[int, float]] = []
    for m in _FRACTION_RE.finditer(t):
        den = int(m.group(2))
        if den != 0:
            candidates.append((m.start(), int(m.group(1)) / den))
    spans = [(m.start(), m.end()) for m in _FRACTION_RE.finditer(t)]
    for m in _NUMBER_RE.finditer(t):
        s = m.group(0)
        if not any(ch.isdigit() for ch in s) or any(a <= m.start() < b for a, b in spans):
            continue
        try:
            value = float(s.replace(",", "").replace("+", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            candidates.append((m.start(), value))
    if candidates:
        candidates.sort()
        reason = "number" if len(candidates) == 1 else f"last of {len(candidates)} numbers"
        return Parsed(candidates[-1][1], reason)
    value = _words_to_number(t)
    if value is not None:
        return Parsed(value, "number words")
    return Parsed(None, "no number found")


def numbers_match(pred: float, gold: float, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


def strip_think(text: str) -> str:
    """A judge reply without any <think>...</think> block (reasoning judges emit one)."""
    return THINK_BLOCK_RE.sub("", text or "").strip()
