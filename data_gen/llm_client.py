"""Concurrent chat requests to an OpenAI-compatible endpoint (vLLM, transformers serve, OpenAI).

One `ChatEndpoint` per model: the `openai` async client, a semaphore bounding the requests in
flight, a per-request timeout, and retries with exponential backoff and jitter on timeouts,
connection errors, 429 and 5xx (and on 200 replies that are not a usable chat completion). A
429's Retry-After is honoured. Other errors (400, 401, 404) are not retried. The API key comes
from an environment variable only and is registered for log redaction; it is never stored.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from common.secrets import api_key_from_env, redact


class RequestFailed(RuntimeError):
    """A request that failed for good (retries spent or a non-retryable error)."""


@dataclass
class RequestStats:
    """Counters for the summary table (per endpoint)."""

    requests: int = 0  # HTTP attempts made
    ok: int = 0
    retries: int = 0
    failed: int = 0  # requests that failed for good
    seconds: float = 0.0  # wall time spent inside successful requests
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class ClientSettings:
    concurrency: int = 16  # requests in flight per endpoint
    timeout_s: float = 120.0  # per HTTP attempt
    max_retries: int = 4  # after the first attempt
    backoff_s: float = 1.0  # first backoff; doubles per retry, with jitter
    backoff_max_s: float = 30.0


def _retryable(exc: BaseException) -> str | None:
    """Short name of a transient error, or None when retrying cannot help."""
    import openai

    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError):
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


class MalformedReply(ValueError):
    pass


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class ChatEndpoint:
    """`await endpoint.chat(messages)` -> the assistant's text, with bounded concurrency."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 settings: ClientSettings | None = None, name: str = "", seed: int = 0):
        import openai

        if not url or not model:
            raise ValueError(f"endpoint {name or '?'} needs a URL and a model name")
        self.url, self.model, self.name = url, model, name or model
        self.settings = settings or ClientSettings()
        key = api_key_from_env(api_key_env) or "EMPTY"  # local servers need none
        self._client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0,
                                          timeout=self.settings.timeout_s,
                                          http_client=_http_client(self.settings.concurrency))
        self._sem: asyncio.Semaphore | None = None
        self._rng = random.Random(seed)
        self.stats = RequestStats()

    def _semaphore(self) -> asyncio.Semaphore:
        # Created lazily inside the running loop (each build phase runs its own loop).
        if self._sem is None or getattr(self._sem, "_loop", None) not in (None, asyncio.get_running_loop()):
            self._sem = asyncio.Semaphore(self.settings.concurrency)
        return self._sem

    async def chat(self, messages: list[dict[str, Any]], temperature: float = 0.0,
                   max_tokens: int | None = None, seed: int | None = None, **extra: Any) -> str:
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            async with self._semaphore():
                self.stats.requests += 1
                t0 = time.perf_counter()
                try:
                    resp = await self._client.chat.completions.create(
                        model=self.model, messages=messages, temperature=temperature,
                        max_tokens=max_tokens, seed=seed, **extra)
                    text = _content(resp)
                    self.stats.ok += 1
                    self.stats.seconds += time.perf_counter() - t0
                    return text
                except Exception as exc:  # sorted below: transient -> retry, else fail
                    kind = _retryable(exc)
                    last = redact(f"{type(exc).__name__}: {exc}")
                    self.stats.count_error(kind or type(exc).__name__)
                    if kind is None:
                        self.stats.failed += 1
                        raise RequestFailed(f"{self.name}: {last}") from exc
                    wait = _retry_after(exc)
            if attempt == s.max_retries:
                break
            self.stats.retries += 1
            if wait is None:
                wait = min(s.backoff_max_s, s.backoff_s * 2**attempt) * (0.5 + self._rng.random() / 2)
            await asyncio.sleep(wait)
        self.stats.failed += 1
        raise RequestFailed(f"{self.name}: gave up after {s.max_retries + 1} attempts ({last})")

    async def aclose(self) -> None:
        await self._client.close()


def _http_client(concurrency: int):
    """openai's default async HTTP client, but keeping one live connection per request in
    flight (its default keeps 100, so higher concurrency reconnects on every request)."""
    import openai

    try:  # openai >= 3 ships its own httpx fork
        import httpx2 as httpx_mod
    except ImportError:  # pragma: no cover - older openai
        import httpx as httpx_mod
    n = max(1, concurrency)
    return openai.DefaultAsyncHttpxClient(
        limits=httpx_mod.Limits(max_connections=n + 8, max_keepalive_connections=n + 8))


def _content(resp: Any) -> str:
    """The first choice's text; anything else is a malformed reply (retried)."""
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as exc:
        raise MalformedReply(f"not a chat completion: {str(resp)[:200]}") from exc
    if not isinstance(text, str):
        raise MalformedReply("chat completion without text content")
    return text
