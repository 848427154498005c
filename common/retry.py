"""One retry policy for every chat request (data generation clients and the GRPO/eval judge).

- Every attempt has an overall deadline (`deadline_s`, from sending the request to the last byte
  of the reply): the HTTP client's timeout applies per socket read, so a server that trickles a
  byte every second would otherwise hold a request forever.
- Transient failures are retried: timeouts (and blown deadlines), connection errors, 429, 5xx,
  and HTTP 200 replies that are not a chat completion or carry no text (`MalformedReply`).
  Other HTTP errors (400, 401, 404, ...) are final: retrying cannot help.
- The wait before a retry is exponential backoff with jitter (`backoff_s` doubling up to
  `backoff_max_s`); a server's Retry-After replaces it, capped at `retry_after_max_s`, and is
  counted (`retry_after`, `retry_after_capped`) so a summary shows how often the server asked.

Each client keeps its own counters object with the fields `retries`,
`retry_after`, `retry_after_capped` and a `count_error(kind)` method.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """How one request is tried (shared by llm_client and the judge)."""

    max_attempts: int = 5  # tries in all (1 = no retry)
    deadline_s: float = 120.0  # overall limit per attempt: request sent -> whole reply read
    backoff_s: float = 1.0  # wait before the first retry; doubles per retry, with jitter
    backoff_max_s: float = 30.0  # longest backoff wait
    retry_after_max_s: float = 60.0  # a server's Retry-After is honoured up to this many seconds


class Counters(Protocol):
    retries: int
    retry_after: int
    retry_after_capped: int

    def count_error(self, kind: str) -> None: ...


class MalformedReply(ValueError):
    """HTTP 200 whose body is not a usable chat completion (retried like a 5xx)."""


class DeadlineExceeded(TimeoutError):
    """An attempt ran past its overall deadline (a slow or trickling reply)."""


class RequestFailed(RuntimeError):
    """A request that failed for good: `kind` is None for a final error (e.g. 400), else the
    transient kind of the last of `attempts` failed tries."""

    def __init__(self, message: str, kind: str | None, attempts: int, status: int | None = None,
                 last: str = ""):
        super().__init__(message)
        self.kind, self.attempts, self.status, self.last = kind, attempts, status, last


def transient_kind(exc: BaseException) -> str | None:
    """Short name of a transient error, or None when retrying cannot help."""
    import openai

    if isinstance(exc, DeadlineExceeded | openai.APITimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, openai.RateLimitError):
        return "429"
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code) if exc.status_code >= 500 else None
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, MalformedReply | json.JSONDecodeError):  # HTTP 200 with a broken body
        return "malformed"
    return None


def retry_after_s(exc: BaseException) -> float | None:
    """The Retry-After seconds a failed response carried (None when absent or not a number)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def chat_text(resp: Any) -> str:
    """The first choice's text; anything else (not a completion, no text, only blanks) is a
    `MalformedReply`, retried."""
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as exc:
        raise MalformedReply(f"not a chat completion: {str(resp)[:200]}") from exc
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("chat completion without text content")
    return text


def backoff_wait(policy: RetryPolicy, retry: int, exc: BaseException, rng: random.Random,
                 counters: Counters) -> float:
    """Seconds to wait before retry number `retry` (0-based) after `exc`."""
    asked = retry_after_s(exc)
    if asked is not None:
        counters.retry_after += 1
        if asked > policy.retry_after_max_s:
            counters.retry_after_capped += 1
        return min(asked, policy.retry_after_max_s)
    return min(policy.backoff_max_s, policy.backoff_s * 2**retry) * (0.5 + rng.random() / 2)


async def with_deadline(coro: Awaitable[T], seconds: float) -> T:
    """`await coro`, cancelled after `seconds` in all (DeadlineExceeded)."""
    try:
        return await asyncio.wait_for(coro, timeout=seconds)
    except TimeoutError as exc:
        if isinstance(exc, DeadlineExceeded):
            raise
        raise DeadlineExceeded(f"no complete reply within the {seconds:g} s deadline") from None


async def call_with_retry(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy,
                          counters: Counters, rng: random.Random, name: str = "request",
                          redact: Callable[[str], str] = lambda s: s) -> T:
    """Run `attempt()` (one HTTP try; it applies the deadline itself, see `with_deadline`, so a
    concurrency semaphore can be held inside it) under the policy. Raises RequestFailed."""
    n = max(1, policy.max_attempts)
    last = ""
    kind: str | None = None
    for i in range(n):
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # sorted: transient -> retry, else final
            kind = transient_kind(exc)
            last = redact(f"{type(exc).__name__}: {exc}")
            counters.count_error(kind or type(exc).__name__)
            if kind is None:
                raise RequestFailed(f"{name}: {last}", None, i + 1,
                                    getattr(exc, "status_code", None), last) from exc
            if i == n - 1:
                break
            wait = backoff_wait(policy, i, exc, rng, counters)
        counters.retries += 1
        await asyncio.sleep(wait)
    raise RequestFailed(f"{name}: gave up after {n} attempts ({last})", kind, n, None, last)
