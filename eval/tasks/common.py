"""Helpers the benchmark loaders share: reading released annotation files, finding videos,
parsing subtitles. Errors name the file and what is wrong with it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.task import LETTERS, EvalItem, SubtitleLine, TaskError

VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise TaskError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not valid JSON ({exc})") from exc


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet, CSV, JSON (list) or JSONL annotation file."""
    if not path.is_file():
        raise TaskError(f"{path}: annotation file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        return frame.to_dict(orient="records")
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path}:{n}: not valid JSON ({exc})") from exc
        return rows
    data = read_json(path)
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def first_existing(root: Path, names: Iterable[str], what: str) -> Path:
    names = list(names)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise TaskError(f"{root}: no {what} found (looked for {', '.join(names)})")


def require(row: dict[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise TaskError(
            f"{where}: missing field(s) {', '.join(missing)} (is this the right benchmark?)"
        )


def find_video(folder: Path, stem_or_name: str) -> tuple[str, str]:
    """(path, error): the file `folder/name` if the name has an extension, else the first of
    `stem` + the usual extensions. A missing file gives the expected path and an error."""
    name = str(stem_or_name)
    if Path(name).suffix:
        path = folder / name
        return str(path), "" if path.is_file() else f"video file not found: {path}"
    for ext in VIDEO_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return str(path), ""
    return str(
        folder / f"{name}.mp4"
    ), f"video file not found: {folder / name}.* ({', '.join(VIDEO_EXTENSIONS)})"


class VideoIndex:
    """Finds a benchmark's videos when a release ships them as archives whose folder layout is
    not fixed (lmms-lab's HF copies: videos.zip, video_part_*.zip): first the listed folders,
    flat, then anywhere under `root` by file name or stem (the tree is walked once, on the first
    miss)."""

    def __init__(self, root: Path, folders: Iterable[str]) -> None:
        self.root = Path(root)
        self.folders = [self.root / f for f in folders]
        self._by_name: dict[str, Path] | None = None
        self._by_stem: dict[str, Path] = {}

    def _walk(self) -> None:
        self._by_name = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix in VIDEO_EXTENSIONS and path.is_file():
                self._by_name.setdefault(path.name, path)
                self._by_stem.setdefault(path.stem, path)

    def find(self, name: str) -> tuple[str, str]:
        """(path, error) as `find_video` gives them."""
        name = str(name)
        for folder in self.folders:
            path, error = find_video(folder, name)
            if not error:
                return path, ""
        if self._by_name is None:
            self._walk()
        assert self._by_name is not None
        hit = self._by_name.get(name) if Path(name).suffix else self._by_stem.get(name)
        if hit is not None:
            return str(hit), ""
        where = ", ".join(str(f) for f in self.folders) or str(self.root)
        return str(self.folders[0] / name if self.folders else self.root / name), (
            f"video file not found: {name} (looked in {where} and anywhere under {self.root})"
        )


def parquet_rows(root: Path, pattern: str, what: str) -> tuple[Path, list[dict[str, Any]]]:
    """Rows of the parquet shard(s) matching `pattern` under `root` (HF `split-0000N-of-M`
    files, read in name order), and the first file's path (named in errors)."""
    files = sorted(root.glob(pattern))
    if not files:
        raise TaskError(f"{root}: no {what} found (looked for {pattern})")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(read_rows(f))
    return files[0], rows


_OPTION_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[\.\):])\s*")


def strip_option_prefix(text: str, index: int) -> str:
    """ "A. a dog" -> "a dog" (Video-MME ships options with their letters); the prefix must be
    the letter of the option's position, otherwise the text is kept whole."""
    m = _OPTION_PREFIX.match(text)
    if m and (m.group(1) or m.group(2)) == LETTERS[index]:
        return text[m.end() :].strip()
    return text.strip()


def letter_of(index: Any, n_options: int, where: str) -> str:
    try:
        i = int(index)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{where}: answer index {index!r} is not an integer") from exc
    if not 0 <= i < n_options:
        raise TaskError(f"{where}: answer index {i} outside the {n_options} options")
    return LETTERS[i]


def letter_of_text(answer: str, options: list[str], where: str) -> str:
    """The letter of the option whose text is `answer` (MLVU and VNBench give answers as text)."""
    for i, text in enumerate(options):
        if text == answer:
            return LETTERS[i]
    stripped = [o.strip().lower() for o in options]
    if answer.strip().lower() in stripped:
        return LETTERS[stripped.index(answer.strip().lower())]
    raise TaskError(f"{where}: answer {answer!r} is not one of the options {options}")


# -- subtitles --------------------------------------------------------------------------------------
_TAG = re.compile(r"<[^>]+>")
_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")


def _srt_seconds(text: str) -> float:
    m = _SRT_TIME.search(text)
    if not m:
        raise ValueError(f"bad SRT time {text!r}")
    h, mnt, s, ms = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_srt(path: Path) -> list[SubtitleLine]:
    """SubRip cues with formatting tags removed (Video-MME wraps each line in <font>)."""
    try:
        raw = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise TaskError(f"{path}: cannot read subtitles ({exc})") from exc
    lines: list[SubtitleLine] = []
    for n, block in enumerate(re.split(r"\r?\n\s*\r?\n", raw.strip()), 1):
        rows = [r for r in block.splitlines() if r.strip()]
        timing = next((i for i, r in enumerate(rows) if "-->" in r), None)
        if timing is None:
            continue
        try:
            start, end = (_srt_seconds(p) for p in rows[timing].split("-->"))
        except ValueError as exc:
            raise TaskError(f"{path}: cue {n}: {exc}") from exc
        if end < start:
            raise TaskError(f"{path}: cue {n}: ends ({end:g} s) before it starts ({start:g} s)")
        text = " ".join(_TAG.sub("", r).strip() for r in rows[timing + 1 :]).strip()
        lines.append(SubtitleLine(start, end, text))
    if raw.strip() and not lines:  # text, but not SubRip: not "a video without subtitles"
        raise TaskError(f"{path}: not a SubRip file (no 'start --> end' timing line)")
    return lines


def hms_seconds(text: str) -> float:
    """ "00:01:02.5" -> 62.5 (LongVideoBench's subtitle times)."""
    parts = str(text).split(":")
    value = 0.0
    for p in parts:
        value = value * 60 + float(p)
    return value


def set_breakdown(item: EvalItem, **values: Any) -> EvalItem:
    item.breakdown.update({k: str(v) for k, v in values.items() if v not in (None, "")})
    return item
