"""Our own benchmarks, in the QARecord schema (data_gen/schema.py): the `eval` split of a
LongVideo-Reason dataset, and the hidden-answer benchmark written by `longrl synth`.

Both are asked in the training prompt format (`training.prompts.format_question`), so a model
trained by longrl is evaluated on exactly the text it was trained on; answer types are mixed
(multiple choice, numeric, open-ended - the last graded by the LLM judge).

LongVideo-Reason dataset folder (--data), read in this order:
    eval/            a `datasets.save_to_disk` folder of the split, or
    eval.parquet     (or eval/*.parquet) the split as parquet, or
    eval.jsonl       QARecord dicts, one per line (video_path absolute or relative to --data), or
    test.jsonl       the released eval set as published (HF LongVideo-Reason/longvideo-reason):
                     {problem_id, problem (question + "A. ..." option lines), problem_type,
                     videos: "longvila_videos/<id>.<ext>", answer: "<answer>B</answer>", ...};
                     videos from the longvideo_eval_videos shards, under longvila_videos/ or the
                     flat longvideo_eval_subset<N>/ folders the tarballs extract to
`longrl synth` folder (--data):
    manifest.json, questions.jsonl (QARecord dicts, video_path relative to the folder), videos
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from data_gen.import_lvr import row_to_record
from data_gen.schema import QARecord, RecordError
from eval.task import EvalItem, TaskError, TaskSpec, register, training_style_question
from eval.tasks.common import VIDEO_EXTENSIONS, read_rows, set_breakdown

LAYOUT = __doc__.split("read in this order:\n")[1]


def record_to_item(rec: QARecord, root: Path, where: str) -> EvalItem:
    try:
        rec.validate()
    except RecordError as exc:
        raise TaskError(f"{where}: {exc}") from exc
    path = Path(rec.video_path)
    path = path if path.is_absolute() else root / path
    item = EvalItem(
        qid=rec.id,
        video_path=str(path),
        question=rec.question,
        answer=str(rec.answer),
        answer_type=rec.answer_type,
        options=list(rec.options),
        cluster=rec.video_id or str(path),
        clip_start_s=float(rec.clip_start_s or 0.0),
        clip_end_s=float(rec.clip_end_s)
        if rec.clip_end_s and rec.clip_end_s > rec.clip_start_s
        else None,
        meta={"source": rec.source, "video_digest": rec.video_digest},
        error="" if path.is_file() else f"video file not found: {path}",
    )
    return set_breakdown(
        item, category=rec.category, subcategory=rec.subcategory, answer_type=rec.answer_type
    )


Row = tuple[str, dict[str, Any] | None, str]  # (where, row or None, why it cannot be read)


def _jsonl_rows(path: Path) -> list[Row]:
    """Rows of a JSONL file, each named file:line; a line that is not a JSON object is kept as
    an unreadable row (recorded by the loader) instead of stopping the whole file."""
    out: list[Row] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((where, None, f"not valid JSON ({exc.msg}, column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            out.append((where, None, f"expected a JSON object, got {type(row).__name__}"))
        else:
            out.append((where, row, ""))
    return out


def _eval_split_rows(root: Path) -> list[Row]:
    split = root / "eval"
    if (split / "dataset_info.json").is_file() or (split / "state.json").is_file():
        import datasets

        rows = [dict(r) for r in datasets.load_from_disk(str(split))]
        return [(f"{split} record {n}", r, "") for n, r in enumerate(rows)]
    parquet = (
        [root / "eval.parquet"]
        if (root / "eval.parquet").is_file()
        else sorted(split.glob("*.parquet"))
    )
    if parquet:
        return [(f"{p} record {n}", r, "") for p in parquet for n, r in enumerate(read_rows(p))]
    for name in ("eval.jsonl", "test.jsonl"):
        if (root / name).is_file():
            return _jsonl_rows(root / name)
    raise TaskError(
        f"{root}: no eval split (eval/ saved dataset, eval.parquet, eval/*.parquet, eval.jsonl) "
        "and no released test.jsonl"
    )


def is_release_row(row: dict[str, Any]) -> bool:
    """The published schema (problem/videos) rather than our QARecord (question/video_path)."""
    return "problem" in row and "videos" in row and "question" not in row


class _VideoFinder:
    """Where a released `videos` path lies: as given under --data, or by file name in
    longvila_videos/, the flat longvideo_eval_subset<N>/ folders the released tarballs extract
    to, or videos/ - the same stem with another extension counts (re-encoded copies)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        subsets = sorted(p for p in root.glob("longvideo_eval_subset*") if p.is_dir())
        self.dirs = [root, root / "longvila_videos", *subsets,
                     *(p / "longvila_videos" for p in subsets), root / "videos"]  # fmt: skip
        self.dirs = [d for d in self.dirs if d.is_dir()]

    def find(self, rel: str) -> tuple[str, str]:
        given = Path(rel) if Path(rel).is_absolute() else self.root / rel
        if given.is_file():
            return str(given), ""
        name = Path(rel).name
        stem = Path(rel).stem
        for d in self.dirs:
            for candidate in (d / name, *(d / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS)):
                if candidate.is_file():
                    return str(candidate), ""
        looked = ", ".join(str(d) for d in self.dirs) or str(self.root)
        return str(given), f"video file not found: {rel} (looked for {name} in {looked})"


_LETTER = re.compile(r"\(?([A-Ha-h])[).:]?")


def release_row_to_item(row: dict[str, Any], root: Path, where: str, videos: _VideoFinder) -> EvalItem:
    """One released row as an EvalItem (qid = problem_id, options split off the problem text,
    answer without its <answer> tags, category from problem_type). Raises TaskError naming
    `where` and the reason."""
    if row.get("problem_id") is None:
        raise TaskError(f"{where}: no problem_id")
    try:
        rec = row_to_record(row, root, root.name, None)  # the import's mapping, no probing
    except (RecordError, TypeError, ValueError) as exc:
        raise TaskError(f"{where} (problem_id {row['problem_id']}): {exc}") from exc
    if not rec.options and _LETTER.fullmatch(rec.answer):
        raise TaskError(
            f"{where} (problem_id {row['problem_id']}): answer is option {rec.answer!r} but the "
            "problem has no 'A. ...' option lines (released without options)"
        )
    vids = row["videos"][0] if isinstance(row["videos"], list) else row["videos"]
    path, error = videos.find(str(vids))
    item = EvalItem(
        qid=str(row["problem_id"]),
        video_path=path,
        question=rec.question,
        answer=rec.answer,
        answer_type=rec.answer_type,
        options=list(rec.options),
        cluster=rec.video_id,
        meta={"source": "longvideo-reason-release", "problem_type": row.get("problem_type")},
        error=f"{where} (problem_id {row['problem_id']}): {error}" if error else "",
    )
    return set_breakdown(item, category=rec.category, subcategory=rec.subcategory,
                         answer_type=rec.answer_type)  # fmt: skip


def unreadable_item(qid: str, why: str) -> EvalItem:
    """A row the loader cannot read, kept as an error for that question (recorded in
    predictions.jsonl and metrics.json's error examples) so the other rows still run."""
    return EvalItem(qid=qid, video_path="", question="", answer="", error=why)


def _row_qid(row: dict[str, Any] | None, where: str, root: Path) -> str:
    if row and row.get("problem_id") is not None:
        return str(row["problem_id"])
    if row and row.get("id"):
        return str(row["id"])
    # relative to --data, so a moved folder resumes with the same id
    return "unreadable:" + where.removeprefix(f"{root}/")


def load_longvideo_reason(root: Path) -> list[EvalItem]:
    videos: _VideoFinder | None = None
    items = []
    for where, row, why in _eval_split_rows(root):
        try:
            if row is None:
                raise TaskError(f"{where}: {why}")
            if is_release_row(row):
                videos = videos or _VideoFinder(root)
                items.append(release_row_to_item(row, root, where, videos))
            else:
                items.append(record_to_item(QARecord.from_dict(row), root, f"{where}"))
        except (TaskError, TypeError, ValueError, KeyError, AttributeError) as exc:
            reason = str(exc) if isinstance(exc, TaskError) else f"{where}: cannot read ({exc!r})"
            items.append(unreadable_item(_row_qid(row, where, root), reason))
    return items


def load_synth(root: Path) -> list[EvalItem]:
    manifest = root / "manifest.json"
    try:
        fmt = json.loads(manifest.read_text()).get("format")
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"{manifest}: cannot read the synth manifest ({exc})") from exc
    if fmt == "longrl-synth-text":  # text problems, no videos: their own benchmark
        raise TaskError(f"{root} is a `longrl synth --kind text` folder: use --benchmark synth_text")
    if fmt != "longrl-synth":
        raise TaskError(f"{manifest}: format {fmt!r} is not longrl-synth")
    path = root / "questions.jsonl"
    return [
        record_to_item(QARecord.from_dict(r), root, f"{path} line {n + 1}")
        for n, r in enumerate(read_rows(path))
    ]


COMMON = dict(
    prompt_template="{question}\n{options}",  # shown in docs; prompt_fn renders the training text
    prompt_fn=training_style_question,
    answer_type="mixed",
    breakdown_keys=("category", "subcategory", "answer_type"),
    native_style="reasoning",
    max_new_tokens=512,
)

register(
    TaskSpec(
        name="longvideo_reason",
        loader=load_longvideo_reason,
        description="LongVideo-Reason: our eval split or the released test.jsonl - Temporal / "
        "Goal & Purpose / Spatial / Plot & Narrative",
        layout=LAYOUT.split("`longrl synth`")[0],
        markers=("eval", "eval.parquet", "eval.jsonl", "test.jsonl"),
        folder_names=("longvideo_reason", "longvideo-reason", "dataset"),
        **COMMON,
    )
)
register(
    TaskSpec(
        name="synth",
        loader=load_synth,
        description="`longrl synth` hidden-answer benchmark: procedural videos with ground-truth events",
        layout="`longrl synth` " + LAYOUT.split("`longrl synth`")[1],
        markers=("manifest.json",),
        folder_names=("synth",),
        **COMMON,
    )
)
