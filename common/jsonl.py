"""Reading append-only JSONL files safely (metrics, samples, caches, predictions, data).

Writers append whole lines ending in a newline, so a kill, power loss or full disk can only tear
the last, unterminated line. `read_jsonl` drops such a torn tail with a warning naming the file
(and, with `repair=True`, cuts it off the file so later appends start on a clean line). A broken
line anywhere else is damage that must not be papered over: it raises `JsonlError` naming the
file and the line number, in one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("longrl.jsonl")


class JsonlError(ValueError):
    """A JSONL file damaged before its last line (or a line that is not an object)."""


def read_jsonl(path: str | Path, *, repair: bool = False, missing_ok: bool = True,
               objects: bool = True, torn_ok: bool = True) -> list[Any]:
    """The parsed lines of `path` (blank lines skipped).

    A torn final line (no trailing newline, not valid JSON) is dropped with a warning and, with
    `repair`, truncated from the file. Any other invalid line raises `JsonlError` with
    `path:line`. `objects` requires every line to be a JSON object. `torn_ok=False` (input data, not
    append logs) refuses a broken last line too. A missing file gives [] when
    `missing_ok`, else `JsonlError`."""
    p = Path(path)
    if not p.is_file():
        if missing_ok:
            return []
        raise JsonlError(f"{p}: no such file")
    data = p.read_bytes()
    rows: list[Any] = []
    pos, lineno = 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl
        lineno += 1
        raw = data[pos:end]
        if raw.strip(b" \t\r\x00"):
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if nl < 0 and torn_ok:  # the unterminated tail: a torn write
                    log.warning("%s:%d: dropped a torn last line (%d bytes, interrupted write)%s",
                                p, lineno, len(raw), "; file repaired" if repair else "")
                    if repair:
                        with p.open("r+b") as fh:
                            fh.truncate(pos)
                    break
                msg = getattr(exc, "msg", str(exc))
                raise JsonlError(f"{p}:{lineno}: not valid JSON ({msg}); fix or remove the line "
                                 "(only a torn last line is dropped automatically)") from None
            if objects and not isinstance(row, dict):
                raise JsonlError(f"{p}:{lineno}: expected a JSON object, got "
                                 f"{type(row).__name__}; fix or remove the line")
            rows.append(row)
            if nl < 0 and repair:  # a complete object without newline: terminate it
                with p.open("ab") as fh:
                    fh.write(b"\n")
        elif nl < 0 and raw and repair:  # a tail of NULs/blanks from a torn write
            with p.open("r+b") as fh:
                fh.truncate(pos)
        if nl < 0:
            break
        pos = nl + 1
    return rows


def append_jsonl(path: str | Path, rows: list[Any]) -> None:
    """Append rows as whole lines in one write (the format `read_jsonl` expects)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not text:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as fh:
        fh.write(text)
