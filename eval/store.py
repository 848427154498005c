"""predictions.jsonl: one JSON line per question, appended as answers arrive, so a killed run
loses at most the batch in flight and resumes where it stopped.

On open, a final line cut short by a kill is dropped (the file is truncated back to the last
complete line) and its question is asked again; a question is never recorded twice. Rewrites
(after judging) go through a temporary file and an atomic rename.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class PredictionStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.dropped_partial = False

    def load(self, repair: bool = True) -> dict[str, dict[str, Any]]:
        """{qid: record} of the complete lines (repairing a torn tail, see the module doc).
        `repair=False` reads another process's file: an unterminated last line is then only
        skipped, never cut off (its writer may be in the middle of appending it)."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        records: dict[str, dict[str, Any]] = {}
        good_end = 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # no newline: the writer was killed mid-line
            line = data[pos:nl]
            try:
                rec = json.loads(line) if line.strip() else None
            except json.JSONDecodeError as exc:
                # Appends end with a newline, so a kill can only tear the unterminated tail; a
                # broken line that ends with one is damage we must not paper over.
                n = data[:pos].count(b"\n") + 1
                raise ValueError(
                    f"{self.path}:{n}: not valid JSON ({exc}); fix or remove the line"
                ) from exc
            if rec is not None:
                records.setdefault(str(rec["qid"]), rec)
            pos = good_end = nl + 1
        if good_end < len(data) and repair:
            self.dropped_partial = True
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
