"""RL records and the seeded prompt sampler (its state is saved with every checkpoint).

`--data` is any of: a folder holding the split as a `datasets` folder (`<split>/`), a parquet or
JSONL file (`<split>.parquet`, `<split>.jsonl`), a `longrl synth` folder (`questions.jsonl`), or
a .parquet/.jsonl file itself. Records that break the schema are reported with their reason and
left out; a run with none left is an error.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_gen.schema import QARecord, RecordError


class DataError(ValueError):
    pass


def _rows_from(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        from datasets import load_from_disk

        return [dict(r) for r in load_from_disk(str(path))]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
        if not Path(rec.video_path).is_absolute():
            rec.video_path = str((root / rec.video_path).resolve())
        records.append(rec)
        if max_records and len(records) >= max_records:
            break
    if not records:
        raise DataError(f"{source}: no usable records ({len(rejected)} rejected"
                        + (f"; first: {rejected[0]}" if rejected else "") + ")")
    return LoadedRecords(records, source, rejected)


class PromptSampler:
    """Epochs over the records in a seeded order; skips records marked bad (unreadable video).

    The state (epoch, position, bad ids) is plain data saved in checkpoints, so a resumed run
    draws exactly the prompts the uninterrupted run would have drawn.
    """

    def __init__(self, records: list[QARecord], seed: int, shuffle: bool = True) -> None:
        self.records = records
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.pos = 0, 0
        self.bad: dict[str, str] = {}
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.records)))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def next(self, n: int) -> list[QARecord]:
        out: list[QARecord] = []
        usable = len(self.records) - len(self.bad)
        if usable <= 0:
            raise DataError(f"every record was rejected; last reasons: {list(self.bad.values())[-3:]}")
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            rec = self.records[self._order[self.pos]]
            self.pos += 1
            if rec.id not in self.bad:
                out.append(rec)
        return out

    def mark_bad(self, record: QARecord, reason: str) -> None:
        self.bad[record.id] = reason

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "bad": dict(self.bad)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos, self.bad = state["epoch"], state["pos"], dict(state["bad"])
        self._order = self._make_order()
