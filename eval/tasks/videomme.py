"""Video-MME (Fu et al. 2024): 900 videos, 2,700 four-option questions; short / medium / long
videos, 6 domains, 12 task types; with or without subtitles.

Released files (huggingface.co/datasets/lmms-lab/Video-MME), read as they are:
    videomme/test-00000-of-00001.parquet   video_id, duration, domain, sub_category, url, videoID,
                                           question_id, task_type, question, options, answer
    data/<videoID>.mp4                     the videos (videos_chunked_*.zip unpacked)
    subtitle/<videoID>.srt                 subtitles (subtitle.zip unpacked); some videos have none
                                           (read only with --subtitles; a malformed one fails
                                           its video's questions, named, not the benchmark)
Options come as "A. text"; the answer is a letter. Prompts are the official ones (as in lmms-eval).
"""

from __future__ import annotations

from pathlib import Path

from eval.task import EvalItem, SubtitleFile, TaskError, TaskSpec, register
from eval.tasks.common import (
    find_video,
    parse_srt,
    read_rows,
    require,
    set_breakdown,
    strip_option_prefix,
)

FIELDS = (
    "videoID",
    "question_id",
    "duration",
    "domain",
    "task_type",
    "question",
    "options",
    "answer",
)
LAYOUT = __doc__.split("read as they are:\n")[1].split("Options come")[0]

INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video{extra}. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)


def load_videomme(root: Path) -> list[EvalItem]:
    files = sorted((root / "videomme").glob("test-*.parquet"))
    if not files:
        raise TaskError(f"{root}/videomme: no test-*.parquet")
    items: list[EvalItem] = []
    subtitle_files: dict[Path, SubtitleFile] = {}  # one per video, shared by its questions
    for path in files:
        for n, row in enumerate(read_rows(path)):
            where = f"{path} row {n}"
            require(row, FIELDS, where)
            options = [strip_option_prefix(o, i) for i, o in enumerate(row["options"])]
            video_path, error = find_video(root / "data", row["videoID"])
            srt = root / "subtitle" / f"{row['videoID']}.srt"
            if srt not in subtitle_files and srt.is_file():  # parsed only if a run shows them
                subtitle_files[srt] = SubtitleFile(srt, parse_srt)
            item = EvalItem(
                qid=str(row["question_id"]),
                video_path=video_path,
                question=row["question"],
                answer=str(row["answer"]).strip(),
                options=options,
                cluster=str(row["videoID"]),
                subtitle_file=subtitle_files.get(srt),
                meta={"video_id": row.get("video_id"), "sub_category": row.get("sub_category")},
                error=error,
            )
            if item.answer not in item.letters():
                raise TaskError(f"{where}: answer {item.answer!r} is not an option letter")
            items.append(
                set_breakdown(
                    item, duration=row["duration"], domain=row["domain"], task_type=row["task_type"]
                )
            )
    return items


register(
    TaskSpec(
        name="videomme",
        loader=load_videomme,
        prompt_template=INSTRUCTION.format(extra="")
        + "\n{question}\n{options}\nThe best answer is:",
        subtitle_template="This video's subtitles are listed below:\n{subtitles}\n"
        + INSTRUCTION.format(extra=" and the subtitles")
        + "\n{question}\n{options}\nThe best answer is:",
        answer_type="multiple_choice",
        breakdown_keys=("duration", "domain", "task_type"),
        max_new_tokens=16,
        description="Video-MME: short/medium/long videos, 6 domains, 12 task types (--subtitles: with subtitles)",
        layout=LAYOUT,
        markers=("videomme/test-*.parquet",),
        folder_names=("videomme", "Video-MME", "video-mme"),
    )
)
