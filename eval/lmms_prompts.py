"""lmms-eval's question prompts, reproduced per benchmark, so a run can ask exactly what an
lmms-eval run asks (`--prompt-style lmms`, once the runner offers the style: see docs/eval.md).

Read from lmms-eval's task code (`lmms_eval/tasks/<task>/utils.py` doc_to_text and the task
yaml's default pre/post prompts), not from the benchmarks' papers - where the two differ
(Video-MME's instruction mentions "the subtitles" even without subtitles; MLVU leaves out its
"Carefully watch this video..." instruction and primes "Best option: ("; NExT-QA gives no
instruction; ActivityNet-QA joins the instruction with a space) this follows lmms-eval.
Benchmarks lmms-eval does not have (VNBench, our LongVideo-Reason and synth) have no lmms
prompt: `lmms_prompt` returns None and the benchmark's own prompt is used.

The text is returned exactly, trailing newlines included (LongVideoBench's post prompt ends in
one): callers must not strip it if they want lmms-eval's tokens.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.task import LETTERS, EvalItem

LETTER_DIRECTLY = "Answer with the option's letter from the given choices directly."
VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and "
    "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
)
NO_SUBTITLES = "No subtitles available"
# lmms-eval's generation budget per task (yaml generation_kwargs.max_new_tokens)
MAX_NEW_TOKENS = {"videomme": 16, "longvideobench": 32, "mlvu": 16, "activitynetqa": 64}


def _lettered(options: list[str], fmt: str = "{letter}. {text}") -> str:
    return "\n".join(fmt.format(letter=LETTERS[i], text=t) for i, t in enumerate(options))


def _videomme(item: EvalItem, subtitles: str | None) -> str:
    # Video-MME's parquet ships options as "A. ..."; lmms-eval joins them as given.
    body = f"{VIDEOMME_INSTRUCTION}\n{item.question}\n{_lettered(item.options)}\nThe best answer is:"
    if subtitles is None:
        return body
    return "This video's subtitles are listed below: \n" + subtitles + "\n" + body


def _longvideobench(item: EvalItem, subtitles: str | None) -> str:
    return f"{item.question}\n{_lettered(item.options)}\n{LETTER_DIRECTLY}\n"


def _mlvu(item: EvalItem, subtitles: str | None) -> str:
    # lmms-eval's MLVU question field carries the options as "(A) ..." lines.
    question = f"{item.question}\n{_lettered(item.options, '({letter}) {text}')}"
    return "\n" + question + "\nOnly give the best option.\n" + "\n" + "Best option: ("


def _nextqa(item: EvalItem, subtitles: str | None) -> str:
    return f"{item.question.strip()}\n{_lettered([o.strip() for o in item.options])}"


def _perceptiontest(item: EvalItem, subtitles: str | None) -> str:
    return f"{item.question}\n{_lettered(item.options)}\n{LETTER_DIRECTLY}"


def _activitynetqa(item: EvalItem, subtitles: str | None) -> str:
    # lmms-eval appends "?" to the raw question; our loader already ends it with one "?".
    return f"{item.question} Answer the question using a single word or phrase."


PROMPTS: dict[str, Callable[[EvalItem, str | None], str]] = {
    "videomme": _videomme,
    "longvideobench": _longvideobench,
    "mlvu": _mlvu,
    "nextqa": _nextqa,
    "perceptiontest": _perceptiontest,
    "activitynetqa": _activitynetqa,
}


def lmms_prompt(
    task_name: str, item: EvalItem, subtitles: str | None = None, subtitle_file: bool = True
) -> str | None:
    """lmms-eval's user text for `item` of benchmark `task_name`, or None when lmms-eval has no
    such benchmark. `subtitles`: None when the run shows no subtitles, else the lines on screen
    at the sampled frames ("" when none are - lmms-eval then shows an empty block);
    `subtitle_file` False: the video has no subtitle file ("No subtitles available")."""
    fn = PROMPTS.get(task_name)
    if subtitles is not None and not subtitle_file:
        subtitles = NO_SUBTITLES
    return fn(item, subtitles) if fn else None
