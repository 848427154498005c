"""Named, versioned judge prompts: what the judge is asked and how its reply is read.

A prompt's `version` is part of what a verdict means: the verdict cache is keyed by it and the
eval runner re-grades answers whose recorded version differs from the configured one, so any
change to a prompt's text or to how its reply is read must bump its version.

- `default` (judge-v1): longrl's own "broadly similar? yes/no" prompt (GRPO rewards and eval).
- `activitynet_qa_lmms` (anqa-lmms-v1): the Video-ChatGPT protocol as lmms-eval runs it for
  ActivityNet-QA - the judge decides whether the prediction is a *meaningful match* of the
  correct answer (synonyms and paraphrases count) and gives an integer score 0-5, replying with
  a Python-dict string `{'pred': 'yes', 'score': 4}`. Reported there as yes-rate ("accuracy")
  and mean score. The text below is ours, written to ask for exactly that protocol.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from common.answers import strip_think

# (verdict, score, reason): verdict None means "no verdict", reason says why.
Parsed = tuple[bool | None, float | None, str]


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    version: str
    system: str
    user: str  # str.format fields: {question}, {reference}, {answer}
    parse: Callable[[str], Parsed]
    min_max_tokens: int = 0  # the reply needs at least this many tokens (judge.max_tokens raised)
    scored: bool = False  # the protocol also gives a 0-5 score

    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(
                question=question, reference=reference, answer=answer)},
        ]


_YES_NO = {"yes": True, "no": False}
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_PRED = re.compile(r"""["']?pred["']?\s*[:=]\s*["']?(yes|no)\b""", re.I)
_SCORE = re.compile(r"""["']?score["']?\s*[:=]\s*["']?(-?\d+(?:\.\d+)?)""", re.I)


def parse_dict_reply(reply: str) -> Parsed:
    """A `{'pred': 'yes'|'no', 'score': N}` reply (Python-dict or JSON quoting, optionally in a
    code fence or after a <think> block). Score must be a number in [0, 5]; lmms-eval's own
    example shows 4.8, so non-integers are accepted as given."""
    text = _FENCE.sub("", strip_think(reply).strip()).strip()
    start, end = text.find("{"), text.rfind("}")
    data: object = None
    if start >= 0 and end > start:
        body = text[start : end + 1]
        for load in (ast.literal_eval, json.loads):  # literal_eval: no code is ever run
            try:
                data = load(body)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    if isinstance(data, dict):
        lowered = {str(k).strip().lower(): v for k, v in data.items()}
        pred, score = lowered.get("pred"), lowered.get("score")
    else:  # e.g. an unquoted `{pred: yes, score: 4}` or trailing prose: read the two keys
        mp, ms = _PRED.search(text), _SCORE.search(text)
        if not mp:
            return None, None, f"no 'pred' yes/no in the reply: {reply[:200]!r}"
        pred, score = mp.group(1), (ms.group(1) if ms else None)
    verdict = _YES_NO.get(str(pred).strip().lower()) if pred is not None else None
    if verdict is None:
        return None, None, f"'pred' is not yes/no: {pred!r}"
    if score is None:
        return None, None, "reply has no 'score'"
    try:
        value = float(score)
    except (TypeError, ValueError):
        return None, None, f"'score' is not a number: {score!r}"
    if isinstance(score, bool) or not 0.0 <= value <= 5.0:
        return None, None, f"'score' {score!r} outside 0-5"
    return verdict, value, ""


def parse_yes_no(reply: str) -> Parsed:
    """'yes'/'no' (first word after any <think> block, case and punctuation ignored); a reply in
    the dict format of the scored protocol is read for its 'pred' (a judge that answers that way
    gave a verdict - it is not a failure)."""
    words = strip_think(reply).lower().split()
    first = words[0].strip(".,!:;\"'*`()[]") if words else ""
    if first in _YES_NO:
        return _YES_NO[first], None, ""
    m = _PRED.search(_FENCE.sub("", strip_think(reply).strip()))
    if m:
        return _YES_NO[m.group(1).lower()], None, ""
    return None, None, f"not yes/no: {reply[:200]!r}"


DEFAULT = JudgePrompt(
    name="default",
    version="judge-v1",
    system=(
        "You grade answers to questions about a video. You see the question, a reference answer "
        "and a model's answer. Decide whether the model's answer is broadly similar in meaning to "
        "the reference answer (wording may differ; extra detail is fine if it does not contradict "
        "the reference). Reply with exactly one word: yes or no."
    ),
    user="Question: {question}\nReference answer: {reference}\nModel answer: {answer}\n"
    "Is the model answer broadly similar to the reference answer? Reply yes or no.",
    parse=parse_yes_no,
)

ACTIVITYNET_QA_LMMS = JudgePrompt(
    name="activitynet_qa_lmms",
    version="anqa-lmms-v1",
    system=(
        "You are an evaluator of answers to questions about videos. For each question you get "
        "the correct answer and a predicted answer; judge whether the prediction is a meaningful "
        "match of the correct answer.\n"
        "Rules:\n"
        "- What counts is a meaningful match of the prediction with the correct answer.\n"
        "- Synonyms and paraphrases of the correct answer are matches.\n"
        "- Judge how correct the prediction is against the correct answer."
    ),
    user=(
        "Evaluate this question-answer pair about a video.\n\n"
        "Question: {question}\nCorrect Answer: {reference}\nPredicted Answer: {answer}\n\n"
        "Give your evaluation as yes or no (is the prediction a meaningful match?) and a score, "
        "an integer from 0 to 5 where 5 is the strongest meaningful match. Reply with a Python "
        "dictionary string only, with the keys 'pred' (the string 'yes' or 'no') and 'score' "
        "(an integer, not a string), and nothing else - no explanation. "
        "Example reply: {{'pred': 'yes', 'score': 4}}"
    ),
    parse=parse_dict_reply,
    min_max_tokens=64,  # lmms-eval asks its judge with max_tokens=64
    scored=True,
)

PROMPTS: dict[str, JudgePrompt] = {p.name: p for p in (DEFAULT, ACTIVITYNET_QA_LMMS)}
AUTO = "auto"  # the benchmark's own protocol (eval), else `default`


def get_prompt(name: str) -> JudgePrompt:
    """The registered prompt `name` ("auto" and "" mean `default` here; the eval runner resolves
    "auto" per benchmark before asking)."""
    key = (name or AUTO).strip().lower()
    if key == AUTO:
        return DEFAULT
    if key not in PROMPTS:
        raise ValueError(f"judge.prompt {name!r} is not one of: auto, {', '.join(PROMPTS)}")
    return PROMPTS[key]
