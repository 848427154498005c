"""Perception Test multiple-choice video QA (Patraucean et al. 2023), validation split:
3-option questions about memory, abstraction, physics and semantics skills.

Released files (github.com/google-deepmind/perception_test), read as they are:
    mc_question_valid.json   {"<video_id>": {"metadata": {"video_id", "num_frames", ...},
                              "mc_question": [{"id", "question", "options", "answer_id",
                              "area", "reasoning", "tag"}], ...}}  (mc_question_valid_annotations.zip)
    videos/<video_id>.mp4    (valid_videos.zip)
"""

from __future__ import annotations

from pathlib import Path

from eval.task import LETTER_PROMPT, EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import find_video, letter_of, read_json, require, set_breakdown

LAYOUT = __doc__.split("read as they are:\n")[1]


def load_perceptiontest(root: Path) -> list[EvalItem]:
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
        markers=("mc_question_valid.json",),
        folder_names=("perceptiontest", "perception_test", "PerceptionTest"),
    )
)
