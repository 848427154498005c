"""Exact grading of verifiable open-ended answers (closed-vocabulary names), without a judge.

Ground-truth records (`longrl synth`, source "synth-groundtruth") ask open-ended questions whose
reference is one name from a closed set: a colour ("blue"), a shape ("hexagon"), a region
("top-left"). Such an answer is right or wrong by comparison, so the reward, the evaluation and
the difficulty filter grade it here, the same way, on every model: no judge, no "ungraded"
items, so every model is scored on the same questions (issue 11.3).

The comparison ignores case, punctuation, hyphens and the filler words a model puts around a
name ("The top left region." == "top-left"), and nothing else: "light blue" is not "blue", and
an answer naming two things ("red or blue") is wrong.
"""

from __future__ import annotations

import re

# record sources whose open-ended answers are names / short exact answers: the video synth, the
# text synth (data_gen.synth_text) and imported math answers (data_gen.import_text)
EXACT_OPEN_SOURCES = ("synth-groundtruth", "synth-text", "text-import")

# Words around a name that do not change which name it is.
_FILLER = frozenset({"the", "a", "an", "it", "its", "is", "was", "region", "area", "part", "colour",
                     "color", "coloured", "colored", "shape", "object", "answer", "final", "of", "in"})


def exact_open(source: str) -> bool:
    """Whether open-ended answers of records from `source` are graded by `short_answer_matches`."""
    return source in EXACT_OPEN_SOURCES


def name_tokens(text: str) -> tuple[str, ...]:
    """The words of a short answer that name something (lower case, no punctuation/filler)."""
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return tuple(w for w in words if w not in _FILLER)


def short_answer_matches(pred: str | None, gold: str) -> bool:
    """True when `pred` names exactly what `gold` names; an empty or missing answer is wrong."""
    if pred is None:
        return False
    got = name_tokens(pred)
    return bool(got) and got == name_tokens(gold)
