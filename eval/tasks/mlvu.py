"""MLVU dev (Zhou et al. 2024): long videos (3 min - 2 h), 7 multiple-choice tasks - plot QA,
needle QA, ego reasoning, action count, action order, anomaly recognition, topic reasoning.
The headline is the mean over tasks (M-Avg), as the paper reports it.

Released files (huggingface.co/datasets/MLVU/MVLU, folder MLVU/), read as they are:
    json/1_plotQA.json ... json/7_topic_reasoning.json
        list of {video, duration, question, candidates, answer, question_type}; `answer` is the
        text of the right candidate
    video/<json stem>/<video>   e.g. video/1_plotQA/movie101_66.mp4
The generation tasks (8_sub_scene, 9_summary) are not multiple choice and are not loaded.
A folder holding only some of the 7 task files is evaluated on those, and metrics.json and the
console name the missing ones: M-Avg is then over the present tasks only, and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.task import EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import find_video, letter_of_text, read_rows, require, set_breakdown

TASK_FILES = (
    "1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning",
)  # fmt: skip
FIELDS = ("video", "question", "candidates", "answer")
LAYOUT = __doc__.split("read as they are:\n")[1].split("The generation")[0]


def mlvu_coverage(root: Path) -> dict[str, Any]:
    """Which of the 7 task files are under `root`/json (the headline averages the present)."""
    present = [stem for stem in TASK_FILES if (root / "json" / f"{stem}.json").is_file()]
    return {
        "parts": "task files",
        "present": [f"{stem}.json" for stem in present],
        "missing": [f"{stem}.json" for stem in TASK_FILES if stem not in present],
    }


def load_mlvu(root: Path) -> list[EvalItem]:
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
        markers=("json/*_plotQA.json", "json/*_needle.json", "json/*_topic_reasoning.json"),
        folder_names=("MLVU", "mlvu", "MLVU/MLVU", "MVLU/MLVU"),
        coverage_fn=mlvu_coverage,
    )
)
