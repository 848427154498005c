"""Data-parallel sharding of a benchmark: `longrl eval ... --shard i/n` answers every n-th
scoring unit (question, or VNBench 4-try group, in the benchmark's order after --limit) starting
at unit i, on its own GPU/process, into OUT/<bench>/shards/predictions-<i>-of-<n>.jsonl (its
own append-only file, resumable like predictions.jsonl; several shard processes may share one
--out). Settings are checked against run_info.json as usual, so shards of one run cannot mix
configurations.

Merging: predictions.jsonl takes every shard's records (`absorb`; a question already there is
kept, unless it was a transient request failure the shard has since answered). The shard that
finds every question of the benchmark answered across all files merges and writes the results
(judge, metrics.json, plots, summary, lmms-eval files) exactly as one unsharded run would; a
plain run without --shard merges too and answers whatever no shard has (a shard never started
or killed). Shard files are kept after merging (absorbing is idempotent), so a merge never races
a shard still writing.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from eval.store import PredictionStore
from eval.task import EvalItem, TaskSpec

SHARDS = "shards"
LOCK = "merge.lock"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str) -> tuple[int, int] | None:
    """"i/n" -> (i, n) with 0 <= i < n; "" -> None. ValueError names a bad spec."""
    if not spec:
        return None
    m = _SPEC.match(str(spec))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"--shard {spec!r}: give i/n with 0 <= i < n (e.g. 0/4 ... 3/4)")
    return int(m.group(1)), int(m.group(2))


def shard_items(task: TaskSpec, items: list[EvalItem], index: int, count: int) -> list[EvalItem]:
    """The items of shard `index` of `count`: whole scoring units dealt round-robin in order
    (a VNBench group stays in one shard; long and short videos spread over every shard)."""
    units: dict[str, int] = {}
    for it in items:
        units.setdefault(it.group if task.group_all and it.group else it.qid, len(units))
    return [it for it in items
            if units[it.group if task.group_all and it.group else it.qid] % count == index]


def shard_path(bench_dir: Path, index: int, count: int) -> Path:
    return Path(bench_dir) / SHARDS / f"predictions-{index}-of-{count}.jsonl"


def shard_files(bench_dir: Path) -> list[Path]:
    return sorted((Path(bench_dir) / SHARDS).glob("predictions-*-of-*.jsonl"))


def final(rec: dict[str, Any] | None) -> bool:
    """A record that stands (not a transient request failure waiting to be asked again)."""
    return rec is not None and not (rec.get("status") == "error" and rec.get("retry"))


def shard_records(bench_dir: Path) -> dict[str, dict[str, Any]]:
    """{qid: record} over every shard file (a standing record wins over a transient failure)."""
    out: dict[str, dict[str, Any]] = {}
    for path in shard_files(bench_dir):
        # read-only: another shard process may be appending to its file right now
        for qid, rec in PredictionStore(path).load(repair=False).items():
            if qid not in out or (not final(out[qid]) and final(rec)):
                out[qid] = rec
    return out


def absorb(bench_dir: Path, merged: PredictionStore) -> int:
    """Add the shard files' records to predictions.jsonl (see the module doc); returns how many
    were added or replaced."""
    shards = shard_records(bench_dir)
    if not shards:
        return 0
    have = merged.load()
    changed = 0
    for qid, rec in shards.items():
        if qid not in have or (not final(have[qid]) and final(rec)):
            have[qid] = rec
            changed += 1
    if changed:
        merged.rewrite(have.values())
    return changed


def complete(bench_dir: Path, merged: PredictionStore, items: list[EvalItem]) -> bool:
    """Every question of `items` has a standing record in predictions.jsonl or a shard file."""
    have = merged.load(repair=False)
    shards = shard_records(bench_dir)
    return all(final(have.get(it.qid)) or final(shards.get(it.qid)) for it in items)


class MergeLock:
    """Exclusive, non-blocking: the first shard to finish the benchmark merges; another that
    finds the lock taken leaves it to that one. The lock names its holder (host and pid): one
    left by a merger killed on this host is taken over; one from another host is left (a run
    without --shard merges regardless)."""

    def __init__(self, bench_dir: Path) -> None:
        self.path = Path(bench_dir) / SHARDS / LOCK
        self.held = False

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split(":", 1)
            if host != socket.gethostname():
                return False  # another machine's process: cannot tell, leave it
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True  # its holder is gone
        except (OSError, ValueError):
            return False
        return False

    def __enter__(self) -> MergeLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return self
                self.path.unlink(missing_ok=True)  # then try once more
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{socket.gethostname()}:{os.getpid()}")
            self.held = True
            return self
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
