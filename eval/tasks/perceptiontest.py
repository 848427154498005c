"""Perception Test multiple-choice video QA (Patraucean et al. 2023), validation split:
3-option questions about memory, abstraction, physics and semantics skills.

Released files (github.com/google-deepmind/perception_test), read as they are:
    mc_question_valid.json   {"<video_id>": {"metadata": {"video_id", "num_frames", ...},
                              "mc_question": [{"id", "question", "options", "answer_id",
                              "area", "reasoning", "tag"}], ...}}  (mc_question_valid_annotations.zip)
    videos/<video_id>.mp4    (valid_videos.zip)
  or lmms-lab's HF copy (huggingface.co/datasets/lmms-lab/PerceptionTest_Val, lmms-eval's):
    mc_question_val/validation-*.parquet   one row per question: video_name, question,
                             question_id, options, answer_id, area, reasoning, tag
    videos/<video_name>.mp4  (also found anywhere below)
"""

from __future__ import annotations

from pathlib import Path

from eval.task import LETTER_PROMPT, EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import (
    VideoIndex,
    find_video,
    letter_of,
    parquet_rows,
    read_json,
    require,
    set_breakdown,
)

LAYOUT = __doc__.split("read as they are:\n")[1]
LMMS_GLOB = "mc_question_val/validation-*.parquet"


def load_perceptiontest_lmms(root: Path) -> list[EvalItem]:
    path, rows = parquet_rows(root, LMMS_GLOB, "Perception Test mc_question_val parquet")
    index = VideoIndex(root, ("videos",))
    items = []
    for n, row in enumerate(rows):
        where = f"{path} row {n}"
        require(row, ("video_name", "question", "question_id", "options", "answer_id"), where)
        vid, qid = str(row["video_name"]), str(row["question_id"])
        video_path, error = index.find(vid)
        options = [str(o) for o in row["options"]]
        item = EvalItem(
            # the original release's id (video_<n>_<question index>) when the row carries it
            qid=qid if qid.startswith(vid) else f"{vid}_{qid}",
            video_path=video_path,
            question=row["question"],
            answer=letter_of(row["answer_id"], len(options), where),
            options=options,
            cluster=vid,
            meta={"tag": list(row.get("tag") or []), "release": "lmms-lab"},
            error=error,
        )
        items.append(set_breakdown(item, area=row.get("area"), reasoning=row.get("reasoning")))
    return items


def load_perceptiontest(root: Path) -> list[EvalItem]:
    if not (root / "mc_question_valid.json").is_file() and any(root.glob(LMMS_GLOB)):
        return load_perceptiontest_lmms(root)
    path = root / "mc_question_valid.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise TaskError(f"{path}: expected a mapping video_id -> annotations")
    items = []
    for video_id, entry in data.items():
        require(entry, ("mc_question",), f"{path} video {video_id}")
        vid = entry.get("metadata", {}).get("video_id", video_id)
        video_path, error = find_video(root / "videos", vid)
        for q in entry["mc_question"]:
            where = f"{path} video {video_id} question {q.get('id')}"
            require(q, ("id", "question", "options", "answer_id"), where)
            options = [str(o) for o in q["options"]]
            item = EvalItem(
                qid=f"{vid}_{q['id']}",
                video_path=video_path,
                question=q["question"],
                answer=letter_of(q["answer_id"], len(options), where),
                options=options,
                cluster=vid,
                meta={"tag": q.get("tag", [])},
                error=error,
            )
            items.append(set_breakdown(item, area=q.get("area"), reasoning=q.get("reasoning")))
    return items


register(
    TaskSpec(
        name="perceptiontest",
        loader=load_perceptiontest,
        prompt_template=LETTER_PROMPT,
        answer_type="multiple_choice",
        breakdown_keys=("area", "reasoning"),
        max_new_tokens=16,
        description="Perception Test (validation) multiple-choice QA by skill area and reasoning type",
        layout=LAYOUT,
        markers=("mc_question_valid.json", LMMS_GLOB),
        folder_names=("perceptiontest", "perception_test", "PerceptionTest", "PerceptionTest_Val"),
    )
)
