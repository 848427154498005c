"""Quiet console for `longrl pipeline run-local` (issue 16.13): kfp.local's output goes to files,
the console gets one line per task.

How kfp.local talks (kfp 2.x, kfp/local/task_dispatcher.py and subprocess_task_handler.py):
- each task runs inside `logging_utils.local_logger_context()`, which clears the root logger's
  handlers, adds a StreamHandler on *the current* `sys.stdout` and sets the level to INFO; it
  then logs "Executing task 'NAME'", the outputs as JSON, and "Task 'NAME' finished with status
  SUCCESS|FAILURE" through the root logger;
- the component runs as a subprocess whose stdout and stderr are merged into one pipe, and the
  parent `print()`s every line of it;
- settings with no local effect are `warnings.warn`-ed (stderr) once per task.

So everything passes through `sys.stdout`/`sys.stderr` of this process: `TaskConsole` swaps them
for a router that writes every byte to OUT/pipeline.log and to OUT/logs/TASK.log of the task
running on that thread, and observes the task boundaries with a filter on the root logger (a
logger's filters survive `local_logger_context`, which only replaces handlers). kfp's messages are
parsed as text, but only to draw the console lines: an unknown message is never lost, it is in
pipeline.log.
"""

from __future__ import annotations

import collections
import io
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
START = re.compile(r"^Executing task '(?P<name>[^']+)'")
END = re.compile(r"^Task '(?P<name>[^']+)' finished with status (?P<state>[A-Z]+)")
CACHED = re.compile(r"^Task (?P<name>\S+) cache hit")
# Messages the console already says in its own words (the task line, "pipeline failed").
OWN = re.compile(r"^(Pipeline '.*' finished with status|Task '[^']+' finished with status)")
TAIL_LINES = 25


def plain(text: str) -> str:
    """Text without kfp's ANSI colour codes (they garble a file or a non-terminal console)."""
    return ANSI.sub("", text)


@dataclass
class TaskRecord:
    name: str
    log: Path
    started: float = field(default_factory=time.monotonic)
    state: str = "RUNNING"
    seconds: float = 0.0
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )


class _Router(io.TextIOBase):
    """sys.stdout/sys.stderr during the run: every write goes to pipeline.log and to the log of
    the task running on the writing thread; with verbose also to the real stream."""

    def __init__(self, owner: TaskConsole, real: TextIO) -> None:
        self.owner, self.real = owner, real

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # kfp and the libraries it calls must not draw terminal UIs into a file

    def write(self, s: str) -> int:
        self.owner._write(s, self.real)
        return len(s)

    def flush(self) -> None:
        self.owner._flush()


class _Observer(logging.Filter):
    def __init__(self, owner: TaskConsole) -> None:
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self.owner._observe(record)
        except Exception:  # noqa: BLE001 - drawing the console must never break the pipeline
            pass
        return True  # the record still reaches kfp's handler, hence pipeline.log


class TaskConsole:
    """Context manager around `pipeline(**params)`: OUT/pipeline.log gets everything kfp.local
    and the components print, OUT/logs/TASK.log each task's own output; the console gets one line
    per finished task (name, state, seconds) under a rich spinner, kfp warnings and errors as one
    line each, and for a failed task the last lines of its log and the log's path. With
    `verbose` the full output is also on the console, as plain kfp.local prints it."""

    def __init__(self, out: Path, console: Any, verbose: bool = False) -> None:
        self.out, self.console, self.verbose = Path(out), console, verbose
        self.log_path = self.out / "pipeline.log"
        self.logs_dir = self.out / "logs"
        self.tasks: list[TaskRecord] = []
        self._running: dict[int, TaskRecord] = {}
        self._files: dict[str, TextIO] = {}
        self._lock = threading.RLock()
        self._partial: dict[int, str] = {}
        self._progress: Any = None
        self._bars: dict[str, Any] = {}

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> TaskConsole:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Router(self, sys.stdout), _Router(self, sys.stderr)
        self._observer = _Observer(self)
        logging.getLogger().addFilter(self._observer)
        # kfp's named loggers (pip installs, cache): warnings only, unless -v.
        self._kfp_level = logging.getLogger("kfp").level
        if not self.verbose:
            logging.getLogger("kfp").setLevel(logging.WARNING)
        if not self.verbose and self.console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            # redirect_*=False: rich must not swap sys.stdout under the router.
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=self.console, transient=True, redirect_stdout=False,
                                      redirect_stderr=False)  # fmt: skip
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        with self._lock:
            for rec in list(self._running.values()):  # interrupted (Ctrl-C, an error inside kfp)
                self._finish(rec, "INTERRUPTED")
        if self._progress is not None:
            self._progress.stop()
        logging.getLogger().removeFilter(self._observer)
        logging.getLogger("kfp").setLevel(self._kfp_level)
        sys.stdout, sys.stderr = self._saved
        for f in self._files.values():
            f.close()
        self._log.close()

    # -- routing -------------------------------------------------------------------------------
    def _write(self, s: str, real: TextIO) -> None:
        with self._lock:
            self._log.write(plain(s))
            rec = self._running.get(threading.get_ident())
            if rec is not None:
                self._files[rec.name].write(plain(s))
                self._keep_tail(rec, s)
            if self.verbose:
                real.write(s)

    def _keep_tail(self, rec: TaskRecord, s: str) -> None:
        key = threading.get_ident()
        text = self._partial.pop(key, "") + plain(s)
        *lines, rest = text.split("\n")
        for line in lines:
            if line.strip():
                rec.tail.append(line[4:] if line.startswith("    ") else line)  # kfp indents by 4
        if rest:
            self._partial[key] = rest

    def _flush(self) -> None:
        with self._lock:
            self._log.flush()
            for f in self._files.values():
                f.flush()

    # -- task boundaries -----------------------------------------------------------------------
    def _observe(self, record: logging.LogRecord) -> None:
        msg = plain(record.getMessage())
        with self._lock:
            if m := START.match(msg):
                self._start(m["name"])
            elif m := END.match(msg):
                rec = self._running.get(threading.get_ident())
                if rec is not None and rec.name == m["name"]:
                    self._finish(rec, m["state"])
            elif m := CACHED.match(msg):
                self._line(m["name"], "CACHED", 0.0)
            elif record.levelno >= logging.WARNING and not OWN.match(msg) and not self.verbose:
                self._print(
                    f"[yellow]kfp {record.levelname.lower()}:[/yellow] {msg.splitlines()[0]}"
                )

    def _start(self, name: str) -> None:
        log = self.logs_dir / f"{name}.log"
        mode = "a" if name in self._files else "w"  # a retry appends to the first attempt's log
        if name in self._files:
            self._files[name].close()
        self._files[name] = open(log, mode, encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        rec = TaskRecord(name, log)
        self._running[threading.get_ident()] = rec
        self.tasks.append(rec)
        if self._progress is not None:
            self._bars[name] = self._progress.add_task(name, total=None)

    def _finish(self, rec: TaskRecord, state: str) -> None:
        self._running = {k: v for k, v in self._running.items() if v is not rec}
        rec.state, rec.seconds = state, time.monotonic() - rec.started
        self._files[rec.name].flush()
        if self._progress is not None and rec.name in self._bars:
            self._progress.remove_task(self._bars.pop(rec.name))
        self._line(rec.name, state, rec.seconds)
        if state != "SUCCESS":
            lines = list(rec.tail)
            # From the traceback on when it fits: what comes before is kfp's executor-input JSON.
            starts = [
                i
                for i, line in enumerate(lines)
                if line.startswith("Traceback (most recent call last)")
            ]
            lines = lines[starts[-1] :] if starts else lines
            tail = "\n".join(f"    {line}" for line in lines) or "    (the task printed nothing)"
            self._print(f"[red]{rec.name} {state.lower()}; last lines of its log:[/red]")
            self._print(tail, markup=False)
            self._print(f"    full log: {rec.log}", markup=False)

    def _line(self, name: str, state: str, seconds: float) -> None:
        colour = {"SUCCESS": "green", "CACHED": "cyan"}.get(state, "red")
        mark = {"SUCCESS": "ok", "CACHED": "ok"}.get(state, "!!")
        self._print(
            f"[{colour}]{mark}[/{colour}] {name:<32} [{colour}]{state:<11}[/{colour}] {seconds:7.1f} s"
        )

    def _print(self, text: str, markup: bool = True) -> None:
        # Through the progress console while the spinner runs, so the line lands above it.
        target = self._progress.console if self._progress is not None else self.console
        target.print(text, markup=markup, highlight=False, soft_wrap=True)
