"""Question-answer replies -> validated QARecords: the one path every annotator goes through.

The reasoning LLM, the groundtruth annotator (synthetic event logs) and `longrl synth` all
produce a reply in the `qa_reply` JSON schema (data_gen/prompts/qa_reply.v1.schema.json); this
module extracts it from the text, validates it, and turns each item into a QARecord checked by
`QARecord.validate`. Errors are collected with the item's position so a bad reply can be sent
back to the model ("retry with the error") and, if it stays bad, rejected with its reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from data_gen.schema import OPTION_LETTERS, QARecord, RecordError, question_id

PROMPT_DIR = Path(__file__).parent / "prompts"
QA_SCHEMA_FILE = "qa_reply.v1.schema.json"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_LETTER_PREFIX = re.compile(r"^\(?([A-Z])[).:]\s+")


class ReplyError(ValueError):
    """A reply that is not valid JSON or does not fit the schema (the whole reply is unusable)."""


@lru_cache(maxsize=4)
def qa_schema(name: str = QA_SCHEMA_FILE) -> dict:
    return json.loads((PROMPT_DIR / name).read_text())


@dataclass(frozen=True)
class VideoRef:
    """What a record needs to know about its video."""

    video_id: str
    video_path: str
    video_digest: str
    duration_s: float
    num_frames: int = 0
    sample_fps: float = 0.0


def extract_json(text: str) -> Any:
    """The JSON object in a model reply: whole text, a ``` fenced block, or the outermost {...}.
    Reasoning models often think before answering, so a <think> block is dropped first."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S).strip()
    candidates = [text]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    last: Exception | None = None
    for cand in candidates:
        try:
            return json.loads(cand)
        except json.JSONDecodeError as exc:
            last = exc
    raise ReplyError(f"reply is not valid JSON ({last})")


def check_schema(data: Any, schema: dict | None = None) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema or qa_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    if errors:
        msgs = [f"at {'/'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors[:5]]
        raise ReplyError("reply does not fit the schema: " + "; ".join(msgs))


def _strip_letter_prefixes(options: list[str]) -> list[str]:
    """'A. red', 'B) blue' -> 'red', 'blue' - only when every option carries its own letter."""
    matches = [_LETTER_PREFIX.match(o.strip()) for o in options]
    if options and all(m and m.group(1) == OPTION_LETTERS[i] for i, m in enumerate(matches)):
        return [o.strip()[m.end():].strip() for o, m in zip(options, matches, strict=True)]  # type: ignore[union-attr]
    return [o.strip() for o in options]


def _normalise_answer(item: dict) -> str:
    answer = item["answer"]
    if isinstance(answer, bool):
        raise RecordError("answer must be a string or a number, not a boolean")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    text = str(answer).strip()
    if item["answer_type"] == "multiple_choice":
        m = re.fullmatch(r"\(?([A-Za-z])[).:]?", text)
        if not m:
            raise RecordError(f"multiple-choice answer {text!r} is not an option letter")
        text = m.group(1).upper()
    return text


def item_to_record(item: dict, video: VideoRef, source: str, generator: str) -> QARecord:
    """One schema-valid item -> a validated QARecord (RecordError says what is wrong)."""
    options = _strip_letter_prefixes(list(item.get("options") or []))
    start = float(item.get("clip_start_s", 0.0))
    end = float(item.get("clip_end_s", video.duration_s))
    if end > video.duration_s + 1e-6:
        raise RecordError(f"clip_end_s {end} is past the end of the video ({video.duration_s:.2f} s)")
    question = item["question"].strip()
    rec = QARecord(
        id=question_id(video.video_digest, question + "\x00" + "\x00".join(options)),
        video_id=video.video_id,
        video_path=video.video_path,
        video_digest=video.video_digest,
        duration_s=video.duration_s,
        clip_start_s=start,
        clip_end_s=end,
        num_frames=video.num_frames,
        sample_fps=video.sample_fps,
        question=question,
        options=options,
        answer=_normalise_answer(item),
        answer_type=item["answer_type"],
        category=item["category"],
        subcategory=item.get("subcategory", ""),
        reasoning=item["reasoning"].strip(),
        source=source,
        generator=generator,
    )
    return rec.validate()


def parse_qa_reply(reply: str | dict, video: VideoRef, source: str, generator: str
                   ) -> tuple[list[QARecord], list[str]]:
    """Reply (text or parsed) -> (valid records, per-item error messages).

    Raises ReplyError when the reply as a whole is unusable (not JSON, wrong shape)."""
    data = extract_json(reply) if isinstance(reply, str) else reply
    check_schema(data)
    records, errors = [], []
    seen: set[str] = set()
    for i, item in enumerate(data["questions"]):
        try:
            rec = item_to_record(item, video, source, generator)
        except RecordError as exc:
            errors.append(f"questions/{i}: {exc}")
            continue
        if rec.id in seen:
            errors.append(f"questions/{i}: duplicate of an earlier question")
            continue
        seen.add(rec.id)
        records.append(rec)
    return records, errors


def generator_json(**parts: Any) -> str:
    """Stable JSON string for QARecord.generator (sorted keys: equal inputs, equal strings)."""
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))
