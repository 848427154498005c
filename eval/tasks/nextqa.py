"""NExT-QA multiple choice (Xiao et al. 2021): 5-option causal / temporal / descriptive
questions about everyday videos. The test split is used when present, else val.

Released files (github.com/doc-doc/NExT-QA), read as they are:
    test.csv (or val.csv)   video, frame_count, width, height, question, answer (0-4), qid,
                            type (CW CH TN TC TP DC DL DO), a0 ... a4
    map_vid_vidorID.json    {"<video>": "<folder>/<vidor id>"}
    NExTVideo/<folder>/<vidor id>.mp4
  or lmms-lab's HF copy (huggingface.co/datasets/lmms-lab/NExTQA, what lmms-eval reads):
    MC/test-*.parquet       the same columns (config MC, split test)
    NExTVideo/<video>.mp4   (videos.zip; also found under videos/ or anywhere below)
"""

from __future__ import annotations

from pathlib import Path

from eval.task import LETTER_PROMPT, EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import (
    VideoIndex,
    find_video,
    first_existing,
    letter_of,
    parquet_rows,
    read_json,
    read_rows,
    require,
    set_breakdown,
)

FIELDS = ("video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4")
GROUPS = {"C": "Causal", "T": "Temporal", "D": "Descriptive"}
LAYOUT = __doc__.split("read as they are:\n")[1]
LMMS_GLOB = "MC/test-*.parquet"


def load_nextqa(root: Path) -> list[EvalItem]:
    if not (root / "map_vid_vidorID.json").is_file() and any(root.glob(LMMS_GLOB)):
        path, rows = parquet_rows(root, LMMS_GLOB, "NExT-QA MC test parquet")
        return _items(path, rows, None, VideoIndex(root, ("NExTVideo", "videos")), "lmms-lab", 0)
    path = first_existing(root, ("test.csv", "val.csv"), "NExT-QA split file")
    video_map = read_json(root / "map_vid_vidorID.json")
    return _items(path, read_rows(path), video_map, None, path.stem, 2)


def _items(path: Path, rows: list[dict], video_map: dict | None, index: VideoIndex | None,
           split: str, first_row: int) -> list[EvalItem]:
    items = []
    for n, row in enumerate(rows):
        where = f"{path} row {n + first_row}"
        require(row, FIELDS, where)
        video = str(row["video"])
        if video_map is None:  # lmms-lab's copy: videos named by their NExT-QA id, flat
            assert index is not None
            video_path, error = index.find(video)
        elif video not in video_map:
            raise TaskError(f"{where}: video {video} is not in map_vid_vidorID.json")
        else:
            video_path, error = find_video(path.parent / "NExTVideo", video_map[video])
        options = [str(row[f"a{i}"]).strip() for i in range(5)]
        qtype = str(row["type"]).strip()
        item = EvalItem(
            qid=f"{video}_{row['qid']}",
            video_path=video_path,
            question=str(row["question"]).strip().rstrip("?") + "?",
            answer=letter_of(row["answer"], 5, where),
            options=options,
            cluster=video,
            meta={"split": split},
            error=error,
        )
        items.append(set_breakdown(item, type=qtype, group=GROUPS.get(qtype[:1], qtype)))
    return items


register(
    TaskSpec(
        name="nextqa",
        loader=load_nextqa,
        prompt_template=LETTER_PROMPT,
        answer_type="multiple_choice",
        breakdown_keys=("group", "type"),
        max_new_tokens=16,
        description="NExT-QA multiple choice: causal / temporal / descriptive questions",
        layout=LAYOUT,
        markers=("map_vid_vidorID.json", LMMS_GLOB),
        folder_names=("nextqa", "NExT-QA", "NExTQA"),
    )
)
