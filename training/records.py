"""QA records for training (SFT and GRPO read them the same way).

`data` is any of: a folder holding the split as a `datasets` folder (`<split>/`), a parquet or
JSONL file (`<split>.parquet`, `<split>.jsonl`), a `longrl synth` folder (`questions.jsonl`), or
a .parquet/.jsonl file itself. Records that break the schema are reported with their reason and
left out; a load with none left is an error. Relative video paths are resolved against
`video_root` (default: the data folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.jsonl import JsonlError, read_jsonl
from data_gen.schema import QARecord, RecordError


class DataError(ValueError):
    """No usable records: a missing split, an unreadable file, or every record rejected."""


def _rows_from(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        from datasets import load_from_disk

        return [dict(r) for r in load_from_disk(str(path))]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        try:  # input data: a broken line anywhere (also the last) is named, not dropped
            return read_jsonl(path, torn_ok=False)
        except JsonlError as exc:
            raise DataError(str(exc)) from None
    raise DataError(f"{path}: not a datasets folder, .parquet or .jsonl file")


def find_split(data: Path, split: str) -> Path:
    if data.is_file():
        return data
    for cand in (data / split, data / f"{split}.parquet", data / f"{split}.jsonl",
                 data / "questions.jsonl"):
        if cand.exists():
            return cand
    raise DataError(f"{data}: no split {split!r} found (looked for {split}/, {split}.parquet, "
                    f"{split}.jsonl, questions.jsonl)")


@dataclass
class LoadedRecords:
    records: list[QARecord]
    source: Path
    rejected: list[str] = field(default_factory=list)  # "record <id>: reason"


def load_records(data: str | Path, split: str = "rl", video_root: str = "",
                 answer_types: list[str] | None = None, max_records: int = 0) -> LoadedRecords:
    data = Path(data)
    source = find_split(data, split)
    root = Path(video_root) if video_root else (data if data.is_dir() else data.parent)
    records, rejected = [], []
    for i, row in enumerate(_rows_from(source)):
        try:
            rec = QARecord.from_dict(row).validate()
        except (RecordError, TypeError) as exc:
            rejected.append(f"row {i}: {exc}")
            continue
        if answer_types and rec.answer_type not in answer_types:
            continue
        if rec.has_video and not Path(rec.video_path).is_absolute():
            rec.video_path = str((root / rec.video_path).resolve())
        records.append(rec)
        if max_records and len(records) >= max_records:
            break
    if not records:
        raise DataError(f"{source}: no usable records ({len(rejected)} rejected"
                        + (f"; first: {rejected[0]}" if rejected else "") + ")")
    return LoadedRecords(records, source, rejected)
