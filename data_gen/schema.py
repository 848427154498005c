"""The LongVideo-Reason record: one question about one video, as every stage reads it.

data_gen writes it (built from captions or imported), training reads the `sft` and `rl` splits,
eval reads `eval` and the synthetic benchmark. Fields:

- id: unique question id (stable across runs: derived from video digest + question text).
- video_id: stable id of the video (file stem unless a manifest names it).
- video_path: path to the video file; relative paths resolve against the dataset's video root.
- video_digest: sha256 of the file's bytes (cache keys, lineage, "never another video").
- duration_s: length of the whole video in seconds.
- clip_start_s, clip_end_s: the span of the video the question is about (0 and duration_s for
  whole-video questions); the model is shown this span.
- num_frames, sample_fps: frame spec the question was made for; 0 means "use the stage config".
- question: the question text, without options.
- options: answer options for multiple choice, text only (letters are given by position: A, B...);
  empty for open-ended questions.
- answer: the letter for multiple choice ("B"), the number as written for numeric ("3.5"), the
  reference text for open-ended.
- answer_type: one of ANSWER_TYPES.
- category: one of CATEGORIES (LongVideo-Reason's four).
- subcategory: finer task type (e.g. the synthetic generator's "counting").
- reasoning: the chain of thought that leads to the answer (the CoT-SFT target).
- source: where the record came from ("synth-groundtruth", "llm", "longvideo-reason", ...).
- pass_rate: share of the difficulty filter's k attempts that were right; -1.0 if not filtered.
- generator: JSON string of the generator versions (prompt versions, models, code version).
- modality: "video" (the default) or "text": a text-only reasoning record (math/logic word
  problems, `longrl synth --kind text`, GSM8K/MATH imports) has no video - empty video_path,
  video_id, video_digest - and a TEXT_CATEGORIES category; it trains text-only LMs and VLMs.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

CATEGORIES = ("Temporal", "Goal & Purpose", "Spatial", "Plot & Narrative")
ANSWER_TYPES = ("multiple_choice", "numeric", "open_ended")
SPLITS = ("sft", "rl", "eval")
MODALITIES = ("video", "text")
TEXT_CATEGORIES = ("Math", "Logic")  # categories of text-only records
OPTION_LETTERS = string.ascii_uppercase
NOT_FILTERED = -1.0


class RecordError(ValueError):
    """A record that breaks the schema; the message names the record and the reason."""


@dataclass
class QARecord:
    id: str
    video_id: str
    video_path: str
    question: str
    answer: str
    answer_type: str
    category: str
    video_digest: str = ""
    duration_s: float = 0.0
    clip_start_s: float = 0.0
    clip_end_s: float = 0.0
    num_frames: int = 0
    sample_fps: float = 0.0
    options: list[str] = field(default_factory=list)
    subcategory: str = ""
    reasoning: str = ""
    source: str = ""
    pass_rate: float = NOT_FILTERED
    generator: str = "{}"
    modality: str = "video"

    @property
    def has_video(self) -> bool:
        return self.modality != "text"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QARecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = [f.name for f in fields(cls) if f.name not in known
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:  # a dataset without a column: name it (was a TypeError about __init__)
            who = f"record {data.get('id') or '<no id>'}"
            raise RecordError(f"{who}: missing field(s) {', '.join(missing)} (the dataset lacks the column)")
        rec = cls(**known)
        rec.options = list(rec.options or [])
        rec.modality = rec.modality or "video"  # files written before the field existed
        return rec

    def validate(self) -> QARecord:
        """Raise RecordError naming this record if any field breaks the schema."""
        who = f"record {self.id or '<no id>'} (video {self.video_id or '?'})"
        if not self.id:
            raise RecordError(f"{who}: empty id")
        if self.modality not in MODALITIES:
            raise RecordError(f"{who}: modality {self.modality!r} not in {MODALITIES}")
        if self.modality == "text":
            if self.video_path or self.video_id:
                raise RecordError(f"{who}: a text record must not name a video ({self.video_path or self.video_id!r})")
            if self.category not in TEXT_CATEGORIES:
                raise RecordError(f"{who}: category {self.category!r} not in {TEXT_CATEGORIES} (text record)")
        elif not self.video_path:
            raise RecordError(f"{who}: empty video_path")
        if not self.question.strip():
            raise RecordError(f"{who}: empty question")
        if not str(self.answer).strip():
            raise RecordError(f"{who}: empty answer")
        if self.answer_type not in ANSWER_TYPES:
            raise RecordError(f"{who}: answer_type {self.answer_type!r} not in {ANSWER_TYPES}")
        if self.modality == "video" and self.category not in CATEGORIES:
            raise RecordError(f"{who}: category {self.category!r} not in {CATEGORIES}")
        if self.answer_type == "multiple_choice":
            if len(self.options) < 2:
                raise RecordError(f"{who}: multiple choice needs at least 2 options")
            if len(self.options) > len(OPTION_LETTERS):
                raise RecordError(f"{who}: too many options ({len(self.options)})")
            letters = OPTION_LETTERS[: len(self.options)]
            if self.answer not in letters:
                raise RecordError(f"{who}: answer {self.answer!r} is not one of {list(letters)}")
            if len({o.strip().lower() for o in self.options}) != len(self.options):
                raise RecordError(f"{who}: duplicate options")
        elif self.options:
            raise RecordError(f"{who}: {self.answer_type} question must not have options")
        if self.answer_type == "numeric":
            try:
                float(self.answer)
            except ValueError as exc:
                raise RecordError(f"{who}: numeric answer {self.answer!r} is not a number") from exc
        if self.clip_end_s < self.clip_start_s:
            raise RecordError(f"{who}: clip_end_s < clip_start_s")
        if not (self.pass_rate == NOT_FILTERED or 0.0 <= self.pass_rate <= 1.0):
            raise RecordError(f"{who}: pass_rate {self.pass_rate} outside [0, 1]")
        return self

    def option_letters(self) -> str:
        return OPTION_LETTERS[: len(self.options)]

    def answer_text(self) -> str:
        """The answer as words: the option text for multiple choice, else the answer itself."""
        if self.answer_type == "multiple_choice":
            return self.options[OPTION_LETTERS.index(self.answer)]
        return self.answer


def question_id(video_digest: str, question: str, salt: str = "") -> str:
    """Stable id: the same question about the same video gets the same id in every run."""
    h = hashlib.sha256(f"{video_digest}\x00{question.strip()}\x00{salt}".encode()).hexdigest()
    return h[:16]


def features():
    """Explicit `datasets.Features` for the record (imported lazily: datasets is heavy)."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "video_id": Value("string"),
            "video_path": Value("string"),
            "video_digest": Value("string"),
            "duration_s": Value("float64"),
            "clip_start_s": Value("float64"),
            "clip_end_s": Value("float64"),
            "num_frames": Value("int32"),
            "sample_fps": Value("float64"),
            "question": Value("string"),
            "options": Sequence(Value("string")),
            "answer": Value("string"),
            "answer_type": Value("string"),
            "category": Value("string"),
            "subcategory": Value("string"),
            "reasoning": Value("string"),
            "source": Value("string"),
            "pass_rate": Value("float64"),
            "generator": Value("string"),
            "modality": Value("string"),
        }
    )
