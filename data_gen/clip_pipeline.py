"""The caption phase as one bounded pipeline: decode -> JPEG encode -> request (issue 18.7).

Before, every clip of every video was one coroutine started at once in one gather; each decoded
and encoded its frames as soon as a decode thread was free, then waited for a request slot, so
against a slow captioner the decoded clips piled up without bound (90 of 120 clips decoded but
unsent against a 2 req/s server; ~12 GB of pending work at 6.5M clips).

Here `workers` decode loops pull videos one at a time; each decodes its video once
(data_gen.clip_reader, or per clip with `mode="per-clip"`, the plain path) and must take one of
`bound` slots before it decodes the next clip; a slot is given back when that clip's caption
request has finished (answered or failed for good). So at most `bound` clips (frames or JPEG
payloads) are alive at any moment, whatever the number of videos or clips: decoding runs ahead
of the requests by at most `bound - concurrency` clips and waits when the server is slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from data_gen.clip_reader import ReaderStats
from data_gen.sources import VideoItem, clip_images

Clip = tuple[float, float, int]  # start s, end s, frames


@dataclass
class PipelineStats:
    bound: int = 0  # clips allowed alive at once (decoded or being decoded, not yet answered)
    videos_decoded: int = 0
    clips_decoded: int = 0
    max_alive: int = 0  # the most clips alive at once (<= bound)
    decode_s: float = 0.0  # thread seconds spent decoding + encoding clips
    reader: ReaderStats = field(default_factory=ReaderStats)
    trace: list[tuple[float, str]] | None = None  # (time, "decoded"|"answered") when enabled (tests)

    def summary(self) -> dict:
        return {"bound": self.bound, "videos_decoded": self.videos_decoded, "clips_decoded": self.clips_decoded,
                "max_alive": self.max_alive, "decode_s": round(self.decode_s, 3),
                "reader": {k: getattr(self.reader, k) for k in self.reader.__dataclass_fields__}}


Ask = Callable[[VideoItem, int, list[str]], Awaitable[str]]


async def run_clips(jobs: list[tuple[VideoItem, list[tuple[int, Clip]]]], ask: Ask, *, workers: int, bound: int,
                    mode: str, max_pixels: int, quality: int, stats: PipelineStats,
                    on_done: Callable[[], None] | None = None) -> dict[tuple[str, int], str | BaseException]:
    """Caption the given clips of each video: {(video_id, clip number): text or the exception}.

    `jobs` lists, per video, the clips still to do as (clip number, (start, end, frames)) in time
    order. A clip that fails to decode ends its video's decoding (the video is rejected anyway);
    its exception is the result of that clip, the video's later clips get none."""
    stats.bound = bound = max(1, bound)
    slots = asyncio.Semaphore(bound)
    results: dict[tuple[str, int], str | BaseException] = {}
    requests: set[asyncio.Task] = set()
    alive = 0
    queue = iter(jobs)

    def mark(event: str) -> None:
        if stats.trace is not None:
            stats.trace.append((time.monotonic(), event))

    async def request(item: VideoItem, j: int, images: list[str]) -> None:
        nonlocal alive
        try:
            results[(item.video_id, j)] = await ask(item, j, images)
        except Exception as exc:  # recorded as the clip's result; the caller turns it into a reject
            results[(item.video_id, j)] = exc
        finally:
            del images  # the payload goes before the slot is given back
            alive -= 1
            mark("answered")
            slots.release()
            if on_done:
                on_done()

    def pull(gen):  # runs in a decode thread: one clip decoded and encoded
        t0 = time.perf_counter()
        try:
            return next(gen, None), time.perf_counter() - t0
        except Exception as exc:
            exc.decode_s = time.perf_counter() - t0  # counted by the loop, not from this thread
            raise

    async def worker() -> None:
        nonlocal alive
        for item, clips in queue:  # one shared iterator: each video goes to one worker
            if not clips:
                continue
            reader = ReaderStats()
            gen = clip_images(item, [c for _, c in clips], max_pixels, quality, mode, reader)
            pending = [j for j, _ in clips]  # clip numbers not yet handed out, in time order
            stats.videos_decoded += 1
            try:
                while pending:
                    await slots.acquire()  # back-pressure: no slot, no decoding
                    alive += 1
                    stats.max_alive = max(stats.max_alive, alive)
                    try:
                        got, dt = await asyncio.to_thread(pull, gen)
                    except Exception as exc:
                        stats.decode_s += getattr(exc, "decode_s", 0.0)
                        alive -= 1
                        slots.release()
                        results[(item.video_id, pending[0])] = exc  # the first clip not decoded
                        if on_done:
                            on_done()
                        break
                    stats.decode_s += dt
                    if got is None:  # cannot happen: the reader yields every clip or raises
                        alive -= 1
                        slots.release()
                        break
                    k, images = got
                    j = clips[k][0]
                    pending.remove(j)
                    stats.clips_decoded += 1
                    mark("decoded")
                    task = asyncio.create_task(request(item, j, images))
                    requests.add(task)
                    task.add_done_callback(requests.discard)
                    del images
            finally:
                await asyncio.to_thread(gen.close)
                stats.reader.add(reader)

    await asyncio.gather(*[worker() for _ in range(max(1, min(workers, len(jobs))))])
    while requests:
        await asyncio.gather(*list(requests))
    return results
