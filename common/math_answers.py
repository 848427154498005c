"""Reading and comparing the final answers of math word problems (GSM8K, MATH), exactly.

Three pieces, used by the text benchmarks' filters and graders (eval/filters.py):
- `boxed_content`: the last `\\boxed{...}` / `\\fbox{...}` of a solution, nested braces kept
  (also the brace-less `\\boxed 5` some models write);
- `normalize_math`: an answer's LaTeX spelling made canonical - `$`, `\\left`/`\\right`, spacing
  commands and spaces, `\\dfrac`/`\\tfrac`, `^\\circ`, `%`, a trailing unit in `\\text{...}`, a
  leading `x =`, thousands commas ("1,234"), a final period, and the brace-less shorthands
  `\\frac12` / `\\sqrt3`;
- `exact_value`: the rational number an answer spells, when it spells one ("0.5", "1/2",
  "\\frac{1}{2}", "-\\frac{3}{4}", "1,250"), as a Fraction - so the comparison is exact, never
  within a tolerance (a GSM8K answer of 10001 is not 10000).

`math_equal(pred, gold)`: equal normalised strings, or equal exact values. Nothing symbolic: "2x"
and "x*2" differ, as they do in the MATH reference grader.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$\\]+)")


def boxed_content(text: str | None) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) of `text`; an unclosed one is None."""
    if not text:
        return None
    starts = [m for m in _BOXED.finditer(text)]
    bare = [m for m in _BOXED_BARE.finditer(text)]
    if bare and (not starts or bare[-1].start() > starts[-1].start()):
        return bare[-1].group(1).strip()
    if not starts:
        return None
    i = starts[-1].end()
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_UNIT_TEXT = re.compile(
    r"^(.+?)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?$"
)
_WHOLE_TEXT = re.compile(r"^\\(?:text|textbf|mbox|mathrm)\{(.*)\}$")
_VAR_EQ = re.compile(r"^[A-Za-z]\s*=\s*(?!.*=)(.+)$")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_SHORT_ONE = re.compile(r"\\frac(\d)(?!\d)\{")
_SQRT_SHORT = re.compile(r"\\sqrt(\d+|[A-Za-z])")


def normalize_math(answer: str | None) -> str:
    """The canonical spelling of an answer (see the module docstring); "" for None."""
    s = (answer or "").strip()
    for a, b in (
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\n", " "),
    ):
        s = s.replace(a, b)
    s = s.strip().rstrip(".").strip()
    # "\text{Monday}" is the name itself; "10\text{ inches}": the unit goes
    if (m := _WHOLE_TEXT.match(s)) or (m := _UNIT_TEXT.match(s)):
        s = m.group(1).strip()
    if m := _VAR_EQ.match(s):  # "x = 5" (one equation only: "x=1, y=2" stays whole)
        s = m.group(1).strip()
    s = s.replace("\\ ", "").replace("~", "")
    if _THOUSANDS.match(s.replace(" ", "")):
        s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SHORT_ONE.sub(r"\\frac{\1}{", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    return s.rstrip(".")


_DECIMAL = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)$")
_SLASH = re.compile(r"^([-+]?\d+)/(\d+)$")
_LATEX_FRAC = re.compile(
    r"^([-+]?)\\frac\{([-+]?(?:\d+\.?\d*|\.\d+))\}\{([-+]?(?:\d+\.?\d*|\.\d+))\}$"
)


def exact_value(answer: str | None) -> Fraction | None:
    """The rational number `answer` spells (after `normalize_math`), exactly; None otherwise."""
    s = normalize_math(answer)
    try:
        if _DECIMAL.match(s):
            return Fraction(s)
        if m := _SLASH.match(s):
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        if m := _LATEX_FRAC.match(s):
            den = Fraction(m.group(3))
            if den == 0:
                return None
            value = Fraction(m.group(2)) / den
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def format_value(value: Fraction) -> str:
    """A Fraction as an answer is written: "72", "3.5", "-0.25", else "7/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a finite decimal
        text = f"{float(value):.12f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


def math_equal(pred: str | None, gold: str) -> bool:
    """Exact grading: the same canonical spelling, or the same rational value."""
    if pred is None:
        return False
    p, g = normalize_math(pred), normalize_math(gold)
    if not p:
        return False
    if p == g:
        return True
    vp, vg = exact_value(p), exact_value(g)
    return vp is not None and vg is not None and vp == vg
