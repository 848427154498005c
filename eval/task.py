"""Benchmarks as registered, declarative tasks (the lm-evaluation-harness shape).

A `TaskSpec` says everything the runner needs to know about a benchmark: how to read its released
files (`loader`), how to ask the question (`prompt_template`, `option_format`,
`subtitle_template`), what kind of answer it expects (`answer_type`) and how to read it
(`filters`), how to score it (`metric`, `group_all`, `headline`) and how to break the score down
(`breakdown_keys`). Loaders turn the benchmark's own records into `EvalItem`s; nothing else in
the harness knows a benchmark's file format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.filters import MCQ_CHAIN, NUMBER_CHAIN, OPEN_CHAIN, check_chain

ANSWER_TYPES = ("multiple_choice", "numeric", "open_ended")
TASK_ANSWER_TYPES = (*ANSWER_TYPES, "mixed")  # mixed: each item says its own type
METRICS = ("accuracy", "llm_judge")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_FILTERS = {"multiple_choice": MCQ_CHAIN, "numeric": NUMBER_CHAIN, "open_ended": OPEN_CHAIN}


class TaskError(ValueError):
    """A benchmark folder that cannot be read as that benchmark (missing file, wrong schema)."""


@dataclass
class SubtitleLine:
    start_s: float
    end_s: float
    text: str


class SubtitleFile:
    """A video's subtitle file, read on first use: only runs that show subtitles read them, so a
    malformed file cannot stop a benchmark from loading (it fails the questions that need it).
    One object per file, shared by that video's questions, so it is parsed once."""

    def __init__(self, path: Path, parser: Callable[[Path], list[SubtitleLine]]) -> None:
        self.path = Path(path)
        self.parser = parser
        self._lines: list[SubtitleLine] | None = None
        self._error: TaskError | None = None

    def lines(self) -> list[SubtitleLine]:
        """The parsed lines; TaskError naming the file and what is wrong (raised every call)."""
        if self._error is None and self._lines is None:
            try:
                self._lines = self.parser(self.path)
            except TaskError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._lines or []


@dataclass
class EvalItem:
    """One question, whatever the benchmark.

    `answer` is the option letter for multiple choice, the number as written for numeric, the
    reference text for open-ended. `cluster` names the video (questions about one video are
    correlated: the bootstrap resamples videos). `group` ties VNBench's shuffled tries of one
    question together. `error` is set by the loader when the item cannot be run (its video file
    is missing): the runner records it as an error for this question, never a substitute.
    Subtitles: `subtitles` holds lines read with the annotations, `subtitle_file` a file read when
    a run shows subtitles; both None means the video has no subtitles (see `subtitle_lines`).
    """

    qid: str
    video_path: str
    question: str
    answer: str
    answer_type: str = "multiple_choice"
    options: list[str] = field(default_factory=list)
    breakdown: dict[str, str] = field(default_factory=dict)
    cluster: str = ""
    group: str = ""
    clip_start_s: float = 0.0
    clip_end_s: float | None = None
    subtitles: list[SubtitleLine] | None = None
    subtitle_file: SubtitleFile | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    modality: str = "video"  # "text": no video (text benchmarks); the engines ask without one

    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    def subtitle_lines(self) -> list[SubtitleLine] | None:
        """The video's subtitle lines; None when it has no subtitles (no file). A malformed file
        raises TaskError naming it."""
        if self.subtitle_file is not None:
            return self.subtitle_file.lines()
        return self.subtitles


Loader = Callable[[Path], list[EvalItem]]


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark, declaratively. See the module docstring; `layout` documents the files the
    loader expects under --data (shown in errors and `longrl eval --list`)."""

    name: str
    loader: Loader
    prompt_template: str  # str.format fields: {question}, {options}
    answer_type: str
    metric: str = "accuracy"
    breakdown_keys: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    option_format: str = "{letter}. {text}"
    subtitle_template: str = ""  # full prompt with {subtitles} too; empty: no subtitles
    instructions: dict[str, str] = field(default_factory=dict)  # {instruction} per answer type
    max_new_tokens: int = 32
    group_all: bool = False  # a group counts as correct only if all its items are (VNBench)
    headline: str = "micro"  # "micro": over questions; "macro": mean over breakdown_keys[0]
    description: str = ""
    layout: str = ""
    markers: tuple[str, ...] = ()  # globs (relative); any match identifies the benchmark's folder
    folder_names: tuple[str, ...] = ()  # sub-folders of --data where the benchmark may live
    prompt_fn: Callable[[EvalItem], str] | None = (
        None  # renders the question instead of the template
    )
    native_style: str = "benchmark"  # prompt style of `--prompt-style auto` for this task
    # which released parts (MLVU's task files) are present under the benchmark's folder:
    # root -> {"parts": what they are, "present": [...], "missing": [...]}; None: one file
    coverage_fn: Callable[[Path], dict[str, Any]] | None = None
    modality: str = "video"  # "text": questions without video, for any model (text LMs too)
    # a named exact grader (eval.filters.GRADERS) instead of the answer type's comparison:
    # the text math benchmarks' exact numbers / normalised LaTeX; "": by answer type
    grader: str = ""
    needs_data: bool = True  # False: the task can build its questions without --data
    accepts_file: bool = False  # --data may name the benchmark's file itself (GSM8K/MATH jsonl)

    @property
    def supports_subtitles(self) -> bool:
        return bool(self.subtitle_template)

    def filter_chain(self, answer_type: str | None = None) -> tuple[str, ...]:
        """The extraction chain for an item of `answer_type` (the task's own type by default)."""
        if self.filters:
            return self.filters
        return DEFAULT_FILTERS[answer_type or self.answer_type]

    def render_options(self, options: Sequence[str]) -> str:
        return "\n".join(
            self.option_format.format(letter=LETTERS[i], text=text)
            for i, text in enumerate(options)
        )

    def render_prompt(
        self, item: EvalItem, subtitles: str | None = None, style: str = "benchmark"
    ) -> str:
        """The user text for `item`. Style "benchmark" is the benchmark's official prompt;
        "reasoning" is the training prompt format (the model was trained to think, then answer).
        `subtitles` (already selected lines) only when the run asks for them and the task has
        them."""
        with_subs = subtitles is not None and self.supports_subtitles
        if style == "lmms":  # lmms-eval's exact text (eval/lmms_prompts.py), not stripped
            from eval.lmms_prompts import lmms_prompt

            # lmms-eval shows an empty block when a subtitled video has none at the frames
            shown = ("" if subtitles == NO_SUBTITLES_AT_FRAMES else subtitles) if with_subs else None
            text = lmms_prompt(self.name, item, shown)
            if text is not None:
                return text
            style = "benchmark"  # lmms-eval has no such benchmark: its own prompt
        if style == "reasoning" or self.prompt_fn is not None:
            body = (self.prompt_fn or training_style_question)(item)
            if with_subs:
                body = SUBTITLE_HEADER.format(subtitles=subtitles or NO_SUBTITLES) + body
            return body.strip()
        fields = {
            "question": item.question.strip(),
            "options": self.render_options(item.options),
            "instruction": self.instructions.get(item.answer_type, ""),
        }
        if with_subs:
            return self.subtitle_template.format(
                subtitles=subtitles or NO_SUBTITLES, **fields
            ).strip()
        return self.prompt_template.format(**fields).strip()

    def resolve_root(self, data_dir: Path) -> Path:
        """The benchmark's folder: `data_dir` itself or one of `folder_names` under it, whichever
        holds one of `markers`."""
        if self.accepts_file and data_dir.is_file():
            return data_dir
        candidates = [data_dir] + [data_dir / n for n in self.folder_names]
        for root in candidates:
            if not self.markers or any(any(root.glob(m)) for m in self.markers):
                return root
        raise TaskError(
            f"{self.name}: no benchmark files under {data_dir} (looked for {' or '.join(self.markers)} in "
            f"{', '.join(str(c) for c in candidates)}). Expected layout:\n{self.layout}"
        )

    def coverage(self, data_dir: Path) -> dict[str, Any] | None:
        """What of the release is under `data_dir` (see `coverage_fn`); None for one-file tasks."""
        if self.coverage_fn is None:
            return None
        return self.coverage_fn(self.resolve_root(Path(data_dir)))

    def load(self, data_dir: Path) -> list[EvalItem]:
        items = self.loader(self.resolve_root(Path(data_dir)))
        seen: set[str] = set()
        for item in items:
            if item.qid in seen:
                raise TaskError(f"{self.name}: question id {item.qid!r} appears twice")
            seen.add(item.qid)
            if not item.cluster:  # a text question is its own cluster (no video shared)
                item.cluster = item.video_path or item.qid
            if self.answer_type != "mixed":
                item.answer_type = self.answer_type
        return items


SUBTITLE_HEADER = "This video's subtitles are listed below:\n{subtitles}\n"
# lmms-eval's multiple-choice prompt, shared by the benchmarks that use it verbatim.
LETTER_PROMPT = (
    "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
)
NO_SUBTITLES = "No subtitles available"  # the video has none (lmms-eval's text for Video-MME)
NO_SUBTITLES_AT_FRAMES = "No subtitles at the sampled frames"  # it has some, none on screen then
PROMPT_STYLES = ("benchmark", "reasoning", "lmms")
MODALITIES = ("video", "text")


def system_for(system: str | None, item: EvalItem) -> str | None:
    """The system prompt a question is asked with: a text question asked in the training format
    gets the text counterpart of the video system prompt, as training.prompts.build_messages
    gives text records (a model trained on text records is evaluated on their prompt)."""
    from training.prompts import SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT

    return TEXT_SYSTEM_PROMPT if item.modality == "text" and system == SYSTEM_PROMPT else system


def grade_answer(task: TaskSpec, answer: str | None, item: EvalItem) -> bool | None:
    """The task's own exact grading of an extracted answer (TaskSpec.grader); None when the task
    grades by answer type (the runner's comparison)."""
    if not task.grader:
        return None
    from eval.filters import grade

    return grade(task.grader, answer, item.answer)


def training_style_question(item: EvalItem) -> str:
    """The question as longrl's training shows it (lettered options, then what form the answer
    takes), via training.prompts.format_question."""
    from data_gen.schema import CATEGORIES, QARecord
    from training.prompts import format_question

    rec = QARecord(
        id=item.qid,
        video_id=item.cluster,
        video_path=item.video_path,
        question=item.question,
        answer=item.answer,
        answer_type=item.answer_type,
        category=CATEGORIES[0],
        options=list(item.options),
    )
    return format_question(rec)


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry, checking its declaration."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is registered twice")
    if spec.answer_type not in TASK_ANSWER_TYPES:
        raise ValueError(
            f"task {spec.name}: answer_type {spec.answer_type!r} not in {TASK_ANSWER_TYPES}"
        )
    if spec.metric not in METRICS:
        raise ValueError(f"task {spec.name}: metric {spec.metric!r} not in {METRICS}")
    if spec.headline not in ("micro", "macro") or (
        spec.headline == "macro" and not spec.breakdown_keys
    ):
        raise ValueError(
            f"task {spec.name}: headline {spec.headline!r} needs breakdown keys for macro"
        )
    for answer_type in ANSWER_TYPES if spec.answer_type == "mixed" else (spec.answer_type,):
        check_chain(spec.filter_chain(answer_type))
    if spec.grader:
        from eval.filters import GRADERS

        if spec.grader not in GRADERS:
            raise ValueError(f"task {spec.name}: grader {spec.grader!r} not in {sorted(GRADERS)}")
    if spec.modality not in MODALITIES:
        raise ValueError(f"task {spec.name}: modality {spec.modality!r} not in {MODALITIES}")
    if spec.native_style not in PROMPT_STYLES:
        raise ValueError(
            f"task {spec.name}: native_style {spec.native_style!r} not in {PROMPT_STYLES}"
        )
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    import eval.tasks  # noqa: F401 - registers the benchmark modules

    key = name.strip().lower()
    if key not in TASKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def list_tasks() -> list[TaskSpec]:
    import eval.tasks  # noqa: F401

    return [TASKS[k] for k in sorted(TASKS)]


def select_subtitles(lines: list[SubtitleLine] | None, times_s: Sequence[float] | None) -> str:
    """Subtitle text shown with the frames: the lines on screen at any sampled frame time
    (Video-MME's protocol); every line when the frame times are not known."""
    if not lines:
        return ""
    if times_s is None:
        chosen = lines
    else:
        chosen = [ln for ln in lines if any(ln.start_s <= t < ln.end_s for t in times_s)]
    out: list[str] = []
    for ln in chosen:
        if ln.text and (not out or out[-1] != ln.text):
            out.append(ln.text)
    return "\n".join(out)


def subtitle_text(
    lines: list[SubtitleLine] | None, times_s: Sequence[float] | None
) -> tuple[str, str]:
    """(text shown with the frames, status): "shown"; "no_subtitles" when the video has none (no
    file, or an empty one); "none_at_frames" when it has subtitles but no line is on screen at
    any sampled frame - told apart, so the model is never told a subtitled video has none."""
    if not lines:
        return NO_SUBTITLES, "no_subtitles"
    text = select_subtitles(lines, times_s)
    if not text:
        return NO_SUBTITLES_AT_FRAMES, "none_at_frames"
    return text, "shown"
