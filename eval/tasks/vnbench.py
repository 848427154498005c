"""VNBench (Zhao et al. 2024, VideoNIAH): needles inserted into videos - retrieval, ordering and
counting, each question asked 4 times with shuffled options. As in the official scoring, a
question counts as right only if all 4 tries are right, and the headline is the mean over
needle types.

Released files (huggingface.co/datasets/Joez1717/VNBench), read as they are:
    VNBench-main-4try.json   list of {video, question, options, needle_time, gt, gt_option,
                             length, type, try}; `gt` is the text of the right option
    the videos at the relative path in `video` (also looked up by file name in VNBench_new/
    and videos/, the folders the release is usually unpacked to)
"""

from __future__ import annotations

from pathlib import Path

from eval.task import LETTER_PROMPT, LETTERS, EvalItem, TaskError, TaskSpec, register
from eval.tasks.common import letter_of_text, read_rows, require, set_breakdown

FIELDS = ("video", "question", "options", "type", "try")
TASK_OF_PREFIX = {"ret": "retrieval", "ord": "ordering", "cnt": "counting"}
LAYOUT = __doc__.split("read as they are:\n")[1]


def _video(root: Path, rel: str) -> tuple[str, str]:
    rel = rel.lstrip("./") if rel.startswith(("./", "/")) else rel
    name = Path(rel).name
    tried = [root / rel, root / "VNBench_new" / name, root / "videos" / name]
    for path in tried:
        if path.is_file():
            return str(path), ""
    return str(tried[0]), f"video file not found: {' or '.join(str(p) for p in tried)}"


def _answer(row: dict, options: list[str], where: str) -> str:
    if "gt" in row and str(row["gt"]) in options:
        return letter_of_text(str(row["gt"]), options, where)
    gt_option = row.get("gt_option")
    if isinstance(gt_option, int) and 0 <= gt_option < len(options):
        return LETTERS[gt_option]
    if isinstance(gt_option, str) and gt_option.strip().upper() in LETTERS[: len(options)]:
        return gt_option.strip().upper()
    raise TaskError(
        f"{where}: neither gt {row.get('gt')!r} nor gt_option {gt_option!r} names an option"
    )


def load_vnbench(root: Path) -> list[EvalItem]:
    path = root / "VNBench-main-4try.json"
    items = []
    for n, row in enumerate(read_rows(path)):
        where = f"{path} record {n}"
        require(row, FIELDS, where)
        options = [str(o) for o in row["options"]]
        video_path, error = _video(root, str(row["video"]))
        stem = Path(str(row["video"])).stem
        needle = str(row["type"])
        item = EvalItem(
            qid=f"{stem}_{needle}_{row['try']}",
            video_path=video_path,
            question=row["question"],
            answer=_answer(row, options, where),
            options=options,
            cluster=stem,
            group=f"{stem}_{needle}",
            meta={
                "needle_time": row.get("needle_time"),
                "length": row.get("length"),
                "try": row["try"],
            },
            error=error,
        )
        items.append(set_breakdown(item, type=needle, task=TASK_OF_PREFIX.get(needle[:3], needle)))
    return items


register(
    TaskSpec(
        name="vnbench",
        loader=load_vnbench,
        prompt_template=LETTER_PROMPT,
        answer_type="multiple_choice",
        breakdown_keys=("type", "task"),
        group_all=True,
        headline="macro",
        max_new_tokens=16,
        description="VNBench: needle retrieval / ordering / counting, 4 shuffled tries must all be right",
        layout=LAYOUT,
        markers=("VNBench-main-4try.json",),
        folder_names=("vnbench", "VNBench"),
    )
)
