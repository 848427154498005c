"""Our own benchmarks, in the QARecord schema (data_gen/schema.py): the `eval` split of a
LongVideo-Reason dataset, and the hidden-answer benchmark written by `longrl synth`.

Both are asked in the training prompt format (`training.prompts.format_question`), so a model
trained by longrl is evaluated on exactly the text it was trained on; answer types are mixed
(multiple choice, numeric, open-ended - the last graded by the LLM judge).

LongVideo-Reason dataset folder (--data), read in this order:
    eval/            a `datasets.save_to_disk` folder of the split, or
    eval.parquet     (or eval/*.parquet) the split as parquet, or
    eval.jsonl       QARecord dicts, one per line
    video_path is absolute or relative to the dataset folder
`longrl synth` folder (--data):
    manifest.json, questions.jsonl (QARecord dicts, video_path relative to the folder), videos
"""

from __future__ import annotations

import json
from pathlib import Path

from data_gen.schema import QARecord, RecordError
from eval.task import EvalItem, TaskError, TaskSpec, register, training_style_question
from eval.tasks.common import read_rows, set_breakdown

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


def _eval_split_rows(root: Path) -> tuple[list[dict], str]:
    split = root / "eval"
    if (split / "dataset_info.json").is_file() or (split / "state.json").is_file():
        import datasets

        return [dict(r) for r in datasets.load_from_disk(str(split))], str(split)
    parquet = (
        [root / "eval.parquet"]
        if (root / "eval.parquet").is_file()
        else sorted(split.glob("*.parquet"))
    )
    if parquet:
        return [r for p in parquet for r in read_rows(p)], str(parquet[0])
    if (root / "eval.jsonl").is_file():
        return read_rows(root / "eval.jsonl"), str(root / "eval.jsonl")
    raise TaskError(
        f"{root}: no eval split (eval/ saved dataset, eval.parquet, eval/*.parquet or eval.jsonl)"
    )


def load_longvideo_reason(root: Path) -> list[EvalItem]:
    rows, where = _eval_split_rows(root)
    return [
        record_to_item(QARecord.from_dict(r), root, f"{where} record {n}")
        for n, r in enumerate(rows)
    ]


def load_synth(root: Path) -> list[EvalItem]:
    manifest = root / "manifest.json"
    try:
        fmt = json.loads(manifest.read_text()).get("format")
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"{manifest}: cannot read the synth manifest ({exc})") from exc
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
        description="LongVideo-Reason eval split (ours): Temporal / Goal & Purpose / Spatial / Plot & Narrative",
        layout=LAYOUT.split("`longrl synth`")[0],
        markers=("eval", "eval.parquet", "eval.jsonl"),
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
