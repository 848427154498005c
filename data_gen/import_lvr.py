"""`longrl data import`: the released LongVideo-Reason files -> QARecords -> splits.

Released rows (huggingface.co/datasets/LongVideo-Reason/longvideo-reason, train.jsonl /
test.jsonl, or a JSON list with the same rows) look like:

    {"problem_id": 0, "problem": "What is ...?\nA. ...\nB. ...\nC. ...\nD. ...",
     "data_type": "video", "problem_type": "goal", "reasoning": "...",
     "videos": "longvila_videos/I_Q3ajyOrcI.mp4", "answer": "<answer>B</answer>"}

Mapping: the option lines ("A. ...") become `options` (without letters) and the text before
them `question`; `answer` loses its <answer> tags; a question without options is numeric when
its answer is a number, else open-ended. `problem_type` names the category (temporal, goal /
purpose, spatial, plot / narrative, matched by word). `videos` is relative to --video-dir.
Rows that cannot be mapped (unknown category, answer letter not among the options, several
videos, a missing or broken video when probing) are written to rejects.jsonl with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from common.jsonl import JsonlError, read_jsonl
from data_gen.qa_format import generator_json
from data_gen.schema import QARecord, RecordError, question_id
from data_gen.sources import Reject, probe
from data_gen.splits import assign_videos, save_splits
from data_gen.video_io import VideoError

_OPTION = re.compile(r"^\s*\(?([A-H])[.):]\s*(.*\S)\s*$")
_CATEGORY_WORDS = (("temporal", "Temporal"), ("goal", "Goal & Purpose"), ("purpose", "Goal & Purpose"),
                   ("spatial", "Spatial"), ("plot", "Plot & Narrative"), ("narrative", "Plot & Narrative"))
SOURCE = "longvideo-reason"


class ImportError_(ValueError):  # noqa: N801 - `ImportError` is a builtin
    pass


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ImportError_(f"{path}: no such file (give the released train.jsonl/test.jsonl or a JSON list)")
    if path.suffix == ".jsonl":
        try:
            return read_jsonl(path, torn_ok=False)
        except JsonlError as exc:
            raise ImportError_(str(exc)) from None
    text = path.read_text(errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportError_(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); expected a JSON list "
                           "of rows or a .jsonl file") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ImportError_(f"{path}: expected a JSON list of rows or a .jsonl file")
    return data


def category_of(problem_type: str) -> str | None:
    low = str(problem_type or "").lower()
    for word, cat in _CATEGORY_WORDS:
        if word in low:
            return cat
    return None


def split_problem(problem: str) -> tuple[str, list[str]]:
    """Question text and option texts (letters A, B, ... in order) of a released `problem`."""
    lines = problem.strip().splitlines()
    options: list[str] = []
    first = None
    for i, line in enumerate(lines):
        m = _OPTION.match(line)
        if m and m.group(1) == "ABCDEFGH"[len(options)]:
            first = i if first is None else first
            options.append(m.group(2))
        elif options and line.strip():
            options[-1] += " " + line.strip()  # an option text wrapped onto the next line
    question = "\n".join(lines[:first] if first is not None else lines).strip()
    return question, options


def row_to_record(row: dict, video_dir: Path, source_name: str, info: dict | None) -> QARecord:
    vids = row.get("videos")
    if isinstance(vids, list):
        if len(vids) != 1:
            raise RecordError(f"{len(vids)} videos in one row (one is supported)")
        vids = vids[0]
    if not isinstance(vids, str) or not vids:
        raise RecordError("no `videos` path")
    cat = category_of(row.get("problem_type", "")) or category_of(row.get("category", ""))
    if cat is None:
        raise RecordError(f"unknown problem_type {row.get('problem_type')!r}")
    question, options = split_problem(str(row.get("problem", "")))
    answer = re.sub(r"</?answer>", "", str(row.get("answer", ""))).strip()
    if options:
        answer_type = "multiple_choice"
        m = re.fullmatch(r"\(?([A-Ha-h])[).:]?", answer)
        answer = m.group(1).upper() if m else answer  # anything else fails validation, named
    else:
        try:
            float(answer)
            answer_type = "numeric"
        except ValueError:
            answer_type = "open_ended"
    path = (video_dir / vids).resolve()
    digest = info["digest"] if info else ""
    duration = info["duration_s"] if info else 0.0
    rec = QARecord(
        id=question_id(digest or str(vids), question + "\x00" + "\x00".join(options)),
        video_id=Path(vids).stem, video_path=str(path), video_digest=digest, duration_s=duration,
        clip_start_s=0.0, clip_end_s=duration, question=question, options=options, answer=answer,
        answer_type=answer_type, category=cat, subcategory=str(row.get("problem_type", "")),
        reasoning=str(row.get("reasoning") or "").strip(), source=SOURCE,
        generator=generator_json(format="longvideo-reason", file=source_name,
                                 problem_id=row.get("problem_id")))
    return rec.validate()


def import_longvideo_reason(source: str | Path, out: str | Path, video_dir: str | Path, split: str | None = None,
                            probe: bool = True, seed: int = 0,
                            shares: dict[str, float] | None = None) -> tuple[dict[str, int], int]:
    from data_gen.build_report import write_reports

    src, out_dir, vdir = Path(source), Path(out), Path(video_dir)
    if not src.is_file():
        raise FileNotFoundError(f"--source {src} does not exist")
    if split not in (None, "sft", "rl", "eval"):
        raise ImportError_(f"--split {split!r} is not sft, rl or eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(src)
    infos: dict[str, dict | Reject] = {}
    records, rejects = [], []
    seen: dict[str, str] = {}
    for n, row in enumerate(rows):
        where = f"{src.name} row {n} (problem_id {row.get('problem_id')})"
        vids = row.get("videos")
        vid_path = vids[0] if isinstance(vids, list) and len(vids) == 1 else vids
        info = None
        if probe and isinstance(vid_path, str):
            if vid_path not in infos:
                try:
                    item = _probe(vdir / vid_path)
                    infos[vid_path] = {"digest": item.digest, "duration_s": item.duration_s}
                except VideoError as exc:
                    infos[vid_path] = Reject("probe", str(vdir / vid_path), exc.reason, Path(vid_path).stem)
            if isinstance(infos[vid_path], Reject):
                rejects.append(Reject("import", where, f"video: {infos[vid_path].reason}", kind="question"))
                continue
            info = infos[vid_path]
        try:
            rec = row_to_record(row, vdir, src.name, info)
        except RecordError as exc:
            rejects.append(Reject("import", where, str(exc), kind="question"))
            continue
        if rec.id in seen:
            rejects.append(Reject("import", where, f"duplicate of {seen[rec.id]}", kind="question"))
            continue
        seen[rec.id] = where
        records.append(rec)
    write_reports(out_dir, rejects)
    if not records:
        raise ImportError_(f"{src}: no row could be imported ({len(rejects)} rejected, see {out_dir / 'rejects.jsonl'})")
    keys = {r.video_id: (r.video_digest or r.video_path) for r in records}
    if split:
        assignment = dict.fromkeys(keys, split)
    else:
        assignment = assign_videos(keys, shares or {"sft": 0.35, "rl": 0.55, "eval": 0.10}, seed)
    return save_splits(records, assignment, out_dir), len(rejects)


def _probe(path: Path):
    return probe(path.stem, path)
