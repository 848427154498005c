"""ActivityNet-QA (Yu et al. 2019): open-ended questions about ActivityNet videos, graded by an
LLM judge with the Video-ChatGPT protocol lmms-eval runs (is the prediction a meaningful match
of the reference? yes/no plus a 0-5 score): `judge.prompt: auto` picks the `activitynet_qa_lmms`
prompt for this task (eval.judge.TASK_PROMPTS); metrics.json then gives the yes-rate and mean
score with judge failures excluded and counted as "no"/0 (lmms-eval's convention). Our question
prompt puts the instruction on a new line, lmms-eval's after a space (eval/lmms_prompts.py).
The test split is used when present, else val.

Released files (github.com/MILVLG/activitynet-qa, dataset/), read as they are:
    test_q.json   list of {video_name, question, question_id}
    test_a.json   list of {answer, type, question_id}; type 0 motion, 1 spatial relation,
                  2 temporal relation, 3 yes/no, 4 color, 5 object, 6 location, 7 number, 8 other
    all_test/v_<video_name>.{mp4,mkv,webm} (or videos/), the ActivityNet videos
  or lmms-lab's HF copy (huggingface.co/datasets/lmms-lab/ActivityNetQA, lmms-eval's):
    data/test-*.parquet   one row per question: video_name, question, answer, question_id, type
    all_test/v_<video_name>.{mp4,mkv,webm}   (the v*.zip parts; also found anywhere below)
"""

from __future__ import annotations

from pathlib import Path

from eval.task import EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import VideoIndex, parquet_rows, read_rows, require, set_breakdown

TYPES = {
    0: "motion", 1: "spatial_relation", 2: "temporal_relation", 3: "yes_no", 4: "color",
    5: "object", 6: "location", 7: "number", 8: "other",
}  # fmt: skip
LAYOUT = __doc__.split("read as they are:\n")[1]
LMMS_GLOB = "data/test-*.parquet"


def load_activitynetqa(root: Path) -> list[EvalItem]:
    released = (root / "test_q.json").is_file() or (root / "val_q.json").is_file()
    if not released and any(root.glob(LMMS_GLOB)):
        path, questions = parquet_rows(root, LMMS_GLOB, "ActivityNet-QA test parquet")
        split, answers, label = "test", None, str(path)
    else:
        split = "test" if (root / "test_q.json").is_file() else "val"
        questions, label = read_rows(root / f"{split}_q.json"), str(root / f"{split}_q.json")
        answers = {}
        for n, row in enumerate(read_rows(root / f"{split}_a.json")):
            require(row, ("question_id", "answer"), f"{root / f'{split}_a.json'} record {n}")
            answers[str(row["question_id"])] = row
    index = VideoIndex(root, ("all_test", "videos"))
    items = []
    for n, row in enumerate(questions):
        where = f"{label} record {n}"
        require(row, ("video_name", "question", "question_id"), where)
        qid = str(row["question_id"])
        if answers is None:  # lmms-lab's rows carry their answer
            require(row, ("answer",), where)
            answers_row = row
        elif qid not in answers:
            raise TaskError(f"{where}: question {qid} has no answer in {split}_a.json")
        else:
            answers_row = answers[qid]
        name = str(row["video_name"])
        video_path, error = index.find(name if name.startswith("v_") else f"v_{name}")
        qtype = answers_row.get("type")
        item = EvalItem(
            qid=qid,
            video_path=video_path,
            question=str(row["question"]).strip().rstrip("?") + "?",
            answer=str(answers_row["answer"]),
            cluster=name,
            meta={"split": split},
            error=error,
        )
        items.append(
            set_breakdown(
                item, type=TYPES.get(int(qtype), str(qtype)) if qtype is not None else None
            )
        )
    return items


register(
    TaskSpec(
        name="activitynetqa",
        loader=load_activitynetqa,
        prompt_template="{question}\nAnswer the question using a single word or phrase.",
        answer_type="open_ended",
        metric="llm_judge",
        breakdown_keys=("type",),
        max_new_tokens=32,
        description="ActivityNet-QA: open-ended answers graded by an LLM judge",
        layout=LAYOUT,
        markers=("test_q.json", "val_q.json", LMMS_GLOB),
        folder_names=("activitynetqa", "ActivityNet-QA", "activitynet-qa", "ActivityNetQA"),
    )
)
