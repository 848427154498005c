"""MLVU dev (Zhou et al. 2024): long videos (3 min - 2 h), 7 multiple-choice tasks - plot QA,
needle QA, ego reasoning, action count, action order, anomaly recognition, topic reasoning.
The headline is the mean over tasks (M-Avg), as the paper reports it.

Released files (huggingface.co/datasets/MLVU/MVLU, folder MLVU/), read as they are:
    json/1_plotQA.json ... json/7_topic_reasoning.json
        list of {video, duration, question, candidates, answer, question_type}; `answer` is the
        text of the right candidate
    video/<json stem>/<video>   e.g. video/1_plotQA/movie101_66.mp4
  or the HF copy lmms-eval reads (huggingface.co/datasets/sy1998/MLVU_dev, task mlvu_dev):
    mlvu/test-*.parquet   one row per question: video_name, duration, question (the options
        follow as "(A) ..." lines), candidates, answer (the letter), task_type, question_id
    the videos of its zips (video_part_*.zip, action_count.zip), found by file name anywhere
The generation tasks (8_sub_scene, 9_summary) are not multiple choice and are not loaded.
A folder holding only some of the 7 task files is evaluated on those, and metrics.json and the
console name the missing ones: M-Avg is then over the present tasks only, and says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eval.task import LETTERS, EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import (
    VideoIndex,
    find_video,
    letter_of_text,
    parquet_rows,
    read_rows,
    require,
    set_breakdown,
)

TASK_FILES = (
    "1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning",
)  # fmt: skip
FIELDS = ("video", "question", "candidates", "answer")
LAYOUT = __doc__.split("read as they are:\n")[1].split("The generation")[0]


LMMS_GLOB = "mlvu/test-*.parquet"
TASK_TYPES = tuple(stem.split("_", 1)[1] for stem in TASK_FILES)  # plotQA ... topic_reasoning
_OPTION_LINE = re.compile(r"^\s*\([A-Z]\)\s")


def _lmms(root: Path) -> bool:
    return not any((root / "json").glob("*.json")) and any(root.glob(LMMS_GLOB))


def mlvu_coverage(root: Path) -> dict[str, Any]:
    """Which of the 7 tasks are under `root` - task files in json/, or task types among the
    rows of the HF parquet (the headline averages the present)."""
    if _lmms(root):
        _, rows = parquet_rows(root, LMMS_GLOB, "MLVU dev parquet")
        seen = {str(r.get("task_type")) for r in rows}
        return {
            "parts": "task types",
            "present": [t for t in TASK_TYPES if t in seen],
            "missing": [t for t in TASK_TYPES if t not in seen],
        }
    present = [stem for stem in TASK_FILES if (root / "json" / f"{stem}.json").is_file()]
    return {
        "parts": "task files",
        "present": [f"{stem}.json" for stem in present],
        "missing": [f"{stem}.json" for stem in TASK_FILES if stem not in present],
    }


def bare_question(text: str, options: list[str]) -> str:
    """The question without the "(A) ..." option lines the HF copy appends to it."""
    lines = str(text).split("\n")
    cut = next((i for i, ln in enumerate(lines) if _OPTION_LINE.match(ln)), len(lines))
    return "\n".join(lines[:cut]).strip()


def load_mlvu_lmms(root: Path) -> list[EvalItem]:
    path, rows = parquet_rows(root, LMMS_GLOB, "MLVU dev parquet")
    index = VideoIndex(root, ("video",))
    items = []
    for n, row in enumerate(rows):
        where = f"{path} row {n}"
        require(row, ("video_name", "question", "candidates", "answer", "task_type"), where)
        options = [str(c) for c in row["candidates"]]
        answer = str(row["answer"]).strip()
        letter = (answer if len(answer) == 1 and answer in LETTERS[: len(options)]
                  else letter_of_text(answer, options, where))  # fmt: skip
        task_type = str(row["task_type"])
        video_path, error = index.find(str(row["video_name"]))
        item = EvalItem(
            qid=str(row.get("question_id") or f"{task_type}_{n}"),
            video_path=video_path,
            question=bare_question(row["question"], options),
            answer=letter,
            options=options,
            cluster=f"{task_type}/{row['video_name']}",
            meta={"duration": row.get("duration"), "release": "MLVU_dev"},
            error=error,
        )
        items.append(set_breakdown(item, question_type=task_type))
    return items


def load_mlvu(root: Path) -> list[EvalItem]:
    if _lmms(root):
        return load_mlvu_lmms(root)
    present = [stem for stem in TASK_FILES if (root / "json" / f"{stem}.json").is_file()]
    if not present:
        raise TaskError(f"{root}/json: none of {', '.join(f + '.json' for f in TASK_FILES)}")
    items = []
    for stem in present:
        path = root / "json" / f"{stem}.json"
        for n, row in enumerate(read_rows(path)):
            where = f"{path} record {n}"
            require(row, FIELDS, where)
            options = [str(c) for c in row["candidates"]]
            video_path, error = find_video(root / "video" / stem, row["video"])
            item = EvalItem(
                qid=f"{stem}_{n}",
                video_path=video_path,
                question=row["question"],
                answer=letter_of_text(str(row["answer"]), options, where),
                options=options,
                cluster=f"{stem}/{row['video']}",
                meta={"duration": row.get("duration")},
                error=error,
            )
            items.append(
                set_breakdown(item, question_type=row.get("question_type") or stem.split("_", 1)[1])
            )
    return items


register(
    TaskSpec(
        name="mlvu",
        loader=load_mlvu,
        prompt_template=(
            "Carefully watch this video and pay attention to every detail. Based on your "
            "observations, select the best option that accurately addresses the question.\n"
            "Question: {question}\nOptions:\n{options}\nOnly give the best option.\nBest option:"
        ),
        option_format="({letter}) {text}",
        answer_type="multiple_choice",
        breakdown_keys=("question_type",),
        headline="macro",
        max_new_tokens=16,
        description="MLVU dev: 7 multiple-choice long-video tasks (headline: mean over tasks)",
        layout=LAYOUT,
        markers=("json/*_plotQA.json", "json/*_needle.json", "json/*_topic_reasoning.json",
                 LMMS_GLOB),
        folder_names=("MLVU", "mlvu", "MLVU/MLVU", "MVLU/MLVU", "MLVU_dev"),
        coverage_fn=mlvu_coverage,
    )
)
