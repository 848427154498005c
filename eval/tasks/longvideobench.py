"""LongVideoBench (Wu et al. 2024): 3,763 videos up to an hour, 6,678 referring-reasoning
questions with 4-5 options, 17 question categories, 4 duration groups; interleaved subtitles.

Released files (huggingface.co/datasets/longvideobench/LongVideoBench), read as they are:
    lvb_val.json            list of {video_id, question, question_wo_referring_query, candidates,
                            correct_choice, position, topic_category, question_category, level,
                            id, video_path, subtitle_path, duration_group,
                            starting_timestamp_for_subtitles, duration, view_count}
    (or validation-00000-of-00001.parquet: the same with option0..option4, "N/A" when unused)
    videos/<video_path>     the videos (videos.tar.part.* joined and unpacked)
    subtitles/<subtitle_path>  JSON list of {"start": "hh:mm:ss.ms", "end": ..., "line": ...} or
                            {"timestamp": [start_s, end_s], "text": ...}
Subtitle times are shifted by starting_timestamp_for_subtitles, as the official loader does.
Subtitle files are read only when a run shows subtitles (--subtitles): a malformed one fails its
video's questions, named with the reason, never the loading of the benchmark.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from eval.task import (
    LETTER_PROMPT,
    SUBTITLE_HEADER,
    EvalItem,
    SubtitleFile,
    SubtitleLine,
    TaskError,
    TaskSpec,
    register,
)
from eval.tasks.common import (
    find_video,
    hms_seconds,
    letter_of,
    read_json,
    read_rows,
    require,
    set_breakdown,
)

FIELDS = (
    "id",
    "video_id",
    "question",
    "correct_choice",
    "video_path",
    "question_category",
    "duration_group",
)
LAYOUT = __doc__.split("read as they are:\n")[1].split("Subtitle times")[0]


def parse_lvb_subtitles(
    path: Path, offset: float = 0.0, duration: float = 0.0
) -> list[SubtitleLine]:
    """A LongVideoBench subtitle JSON, times shifted by `offset`. Anything unreadable is a
    TaskError naming the file (and the entry): the runner records it against this video only."""
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError) as exc:  # read_json only turns bad JSON into TaskError
        raise TaskError(f"{path}: cannot read subtitles ({exc})") from exc
    if not isinstance(data, list):
        raise TaskError(f"{path}: not a LongVideoBench subtitle file (a JSON list of lines)")
    lines = []
    for n, entry in enumerate(data):
        try:
            if "timestamp" in entry:
                start, end = entry["timestamp"]
                end = duration + offset if end is None else end  # an open last line runs to the end
                text = entry["text"]
            else:
                start, end, text = (
                    hms_seconds(entry["start"]),
                    hms_seconds(entry["end"]),
                    entry["line"],
                )
            # converted inside the try: a non-numeric time is this file's error, not a crash
            start_s, end_s = float(start) - offset, float(end) - offset
        except (KeyError, TypeError, ValueError) as exc:
            raise TaskError(f"{path} entry {n}: not a LongVideoBench subtitle ({exc!r})") from exc
        lines.append(SubtitleLine(start_s, end_s, str(text).strip()))
    return lines


def _candidates(row: dict[str, Any]) -> list[str]:
    if "candidates" in row:
        return [str(c) for c in row["candidates"]]
    return [str(row[f"option{i}"]) for i in range(5) if row.get(f"option{i}", "N/A") != "N/A"]


def load_longvideobench(root: Path) -> list[EvalItem]:
    path = root / "lvb_val.json"
    if not path.is_file():
        path = root / "validation-00000-of-00001.parquet"
    items = []
    # one SubtitleFile per (file, shift), shared by that video's questions: parsed once, and
    # only if a run shows subtitles
    subtitle_files: dict[tuple[Path, float, float], SubtitleFile] = {}
    for n, row in enumerate(read_rows(path)):
        where = f"{path} record {n}"
        require(row, FIELDS, where)
        options = _candidates(row)
        video_path, error = find_video(root / "videos", row["video_path"])
        offset = float(row.get("starting_timestamp_for_subtitles") or 0.0)
        subs = row.get("subtitle_path")
        sub_file = None
        if subs and (root / "subtitles" / subs).is_file():  # none: the video has no subtitles
            key = (root / "subtitles" / subs, offset, float(row.get("duration") or 0))
            if key not in subtitle_files:
                parser = partial(parse_lvb_subtitles, offset=key[1], duration=key[2])
                subtitle_files[key] = SubtitleFile(key[0], parser)
            sub_file = subtitle_files[key]
        item = EvalItem(
            qid=str(row["id"]),
            video_path=video_path,
            question=row["question"],
            answer=letter_of(row["correct_choice"], len(options), where),
            options=options,
            cluster=str(row["video_id"]),
            subtitle_file=sub_file,
            meta={"level": row.get("level"), "position": row.get("position")},
            error=error,
        )
        items.append(
            set_breakdown(
                item,
                duration_group=row["duration_group"],
                question_category=row["question_category"],
                topic_category=row.get("topic_category"),
            )
        )
    return items


register(
    TaskSpec(
        name="longvideobench",
        loader=load_longvideobench,
        prompt_template=LETTER_PROMPT,
        subtitle_template=SUBTITLE_HEADER + LETTER_PROMPT,
        answer_type="multiple_choice",
        breakdown_keys=("duration_group", "question_category", "topic_category"),
        max_new_tokens=32,
        description="LongVideoBench (validation): referring reasoning over videos up to 1 h",
        layout=LAYOUT,
        markers=("lvb_val.json", "validation-00000-of-00001.parquet"),
        folder_names=("longvideobench", "LongVideoBench"),
    )
)
