"""Content-addressed cache of finished work units, so an interrupted build resumes exactly.

A unit (one clip's caption, one video's QA set, one rewrite, one filter verdict) is stored
under the sha256 of its kind and of everything that determines it - video digest, clip span,
frame spec, prompt name and digest, model - as one JSON file written atomically (temporary
file, fsync, rename). A run killed at any moment leaves finished units complete and unfinished
ones absent: the next run redoes exactly the missing ones. Keys and values never hold API keys
or endpoint URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    unreadable: int = 0


class UnitCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = CacheStats()

    def key(self, kind: str, parts: dict[str, Any]) -> str:
        return hashlib.sha256(f"{kind}\x00{_canonical(parts)}".encode()).hexdigest()

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.json"

    def get(self, kind: str, parts: dict[str, Any]) -> Any | None:
        path = self._path(kind, self.key(kind, parts))
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except (OSError, json.JSONDecodeError):
            # Cannot happen through put() (atomic rename); a damaged file is redone, not trusted.
            self.stats.unreadable += 1
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry["value"]

    def put(self, kind: str, parts: dict[str, Any], value: Any) -> None:
        path = self._path(kind, self.key(kind, parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _canonical({"kind": kind, "parts": parts, "value": value})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.writes += 1

    def count(self, kind: str) -> int:
        """Finished units of `kind` (a writer killed mid-write leaves only a .tmp-* file)."""
        folder = self.root / kind
        return sum(not p.name.startswith(".") for p in folder.glob("*/*.json")) if folder.is_dir() else 0
