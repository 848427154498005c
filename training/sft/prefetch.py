"""Video decoding off the SFT step: the next step's videos are decoded in background threads
while this step computes (`video.prefetch_workers`, the same key and default as GRPO's).

The batch plan is a pure function of (lengths, seed, epoch), so the trainer knows the next
step's examples before it starts this step's forward passes. `ahead(keys)` submits this
worker's examples of the next step; `take(key)` hands back a finished load (waiting for it if
it is still running) or None when it was never asked (the step then decodes it itself, the
plain path). The load is the plain path's own function (`data.load_video`: each file probed
once per version by `training.video_inputs.probe_once`, decoded, resized, patched), so a
prefetched input is the plain one bit for bit, and a decode error is raised by `take` as the
same exception the plain load raises - the example is reported the same way, naming its file.

Order and determinism do not depend on the threads: results are keyed by example and taken in
the plan's order by the training thread; tokenising stays there (a fast tokenizer must not be
shared between threads). `close()` cancels queued loads and waits for the running ones (one
video each), so an error, Ctrl-C or the end of the run leaves no thread behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

THREAD_PREFIX = "sft-video-prefetch"


class Prefetcher(Generic[K, V]):
    """`load(key)` run ahead in `workers` threads for the keys asked; 0 workers: never ahead."""

    def __init__(self, workers: int, load: Callable[[K], V]) -> None:
        self._load = load
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None  # started at the first `ahead`
        self._pending: dict[K, Future] = {}
        # asked: loads submitted; taken: used by a step; waited_s: time a step waited for one
        self.stats = {"asked": 0, "taken": 0, "waited_s": 0.0}

    @property
    def enabled(self) -> bool:
        return self._workers > 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def ahead(self, keys: Iterable[K]) -> None:
        """Start loading `keys` (in this order) in the background. Loads asked earlier and not
        in `keys` are dropped (cancelled if still queued)."""
        if not self.enabled:
            return
        want = list(dict.fromkeys(keys))
        wanted = set(want)
        for key in [k for k in self._pending if k not in wanted]:
            self._pending.pop(key).cancel()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=THREAD_PREFIX)
        for key in want:
            if key not in self._pending:
                self._pending[key] = self._pool.submit(self._load, key)
                self.stats["asked"] += 1

    def take(self, key: K) -> V | None:
        """The load of `key` asked ahead (its exception, if it failed), or None if never asked."""
        future = self._pending.pop(key, None)
        if future is None:
            return None
        t0 = time.perf_counter()
        try:
            return future.result()
        finally:
            self.stats["taken"] += 1
            self.stats["waited_s"] += time.perf_counter() - t0

    def drop(self) -> None:
        """Forget every load asked: queued ones are cancelled, running ones waited for."""
        pending, self._pending = list(self._pending.values()), {}
        for f in pending:
            f.cancel()
        wait(pending)

    def close(self) -> None:
        """Stop the threads (idempotent); a later `ahead` starts new ones."""
        self.drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Prefetcher[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
