"""Is a model's reply the record's answer? Used by the difficulty filter (data_gen never imports
eval; eval has its own, richer filters for benchmarks).

The final answer is the last <answer>...</answer> (after any <think> block), else the whole
reply. Multiple choice: the last standalone option letter, or the exact text of an option.
Numeric: the last number, compared as a number ("3.50" == "3.5"; "3.5" is never cut to "3").
Open-ended: the normalised reference (lower case, no articles or punctuation) equals the
normalised answer or appears in it as whole words.
"""

from __future__ import annotations

import re

from data_gen.schema import OPTION_LETTERS, QARecord

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}


def final_answer(reply: str) -> str:
    found = _ANSWER.findall(reply)
    if found:
        return found[-1].strip()
    return _THINK.sub("", reply).strip()


def normalise(text: str) -> str:
    text = re.sub(r"[^\w\s-]", " ", text.lower())
    words = [w for w in text.replace("-", " ").split() if w not in ("a", "an", "the")]
    return " ".join(words)


def choice_letter(text: str, n_options: int, options: list[str] | None = None) -> str | None:
    letters = OPTION_LETTERS[:n_options]
    if options:
        norm = normalise(text)
        for i, opt in enumerate(options):
            if norm and norm == normalise(opt):
                return letters[i]
    found = re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)
    if found:
        return found[-1]
    stripped = text.strip().strip("().:").strip()
    return stripped.upper() if len(stripped) == 1 and stripped.upper() in letters else None


def number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if found:
        return float(found[-1].replace(",", "."))
    words = [w for w in normalise(text).split() if w in _WORDS]
    return float(_WORDS[words[-1]]) if words else None


def is_correct(record: QARecord, reply: str) -> bool:
    ans = final_answer(reply)
    if record.answer_type == "multiple_choice":
        return choice_letter(ans, len(record.options), record.options) == record.answer
    if record.answer_type == "numeric":
        got, want = number(ans), float(record.answer)
        return got is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))
    ref, got = normalise(record.answer), normalise(ans)
    return bool(ref) and (got == ref or f" {ref} " in f" {got} ")
