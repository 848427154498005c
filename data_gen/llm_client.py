"""Concurrent chat requests to an OpenAI-compatible endpoint (vLLM, transformers serve, OpenAI).

One `ChatEndpoint` per model: the `openai` async client, a semaphore bounding the requests in
flight, and the shared retry policy of common/retry.py: an overall deadline per attempt (a
trickling reply is cut off), retries with exponential backoff and jitter on timeouts,
connection errors, 429 and 5xx and on 200 replies that are not a usable chat completion or
carry no text; a Retry-After is honoured up to a cap and counted. Other errors (400, 401, 404)
are not retried. The API key comes from an environment variable only and is registered for log
redaction; it is never stored.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from common.retry import (
    MalformedReply,
    RequestFailed,
    RetryPolicy,
    call_with_retry,
    chat_text,
    with_deadline,
)
from common.secrets import api_key_from_env, redact


@dataclass
class RequestStats:
    """Counters for the summary table (per endpoint)."""

    requests: int = 0  # HTTP attempts made
    ok: int = 0
    retries: int = 0
    failed: int = 0  # requests that failed for good
    retry_after: int = 0  # waits that followed a server's Retry-After
    retry_after_capped: int = 0  # ... of which asked for more than retry_after_max_s
    seconds: float = 0.0  # wall time spent inside successful requests
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class ClientSettings:
    concurrency: int = 16  # requests in flight per endpoint
    timeout_s: float = 120.0  # overall deadline per HTTP attempt (send -> whole reply read)
    max_retries: int = 4  # after the first attempt
    backoff_s: float = 1.0  # first backoff; doubles per retry, with jitter
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0  # a server's Retry-After is honoured up to this (counted)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_retries + 1, deadline_s=self.timeout_s,
                           backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s,
                           retry_after_max_s=self.retry_after_max_s)


__all__ = ["ChatEndpoint", "ClientSettings", "MalformedReply", "RequestFailed", "RequestStats"]


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

        async def attempt() -> str:
            async with self._semaphore():  # held for the attempt only, not the backoff
                self.stats.requests += 1
                t0 = time.perf_counter()
                resp = await with_deadline(self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature,
                    max_tokens=max_tokens, seed=seed, **extra), s.timeout_s)
                text = chat_text(resp)
                self.stats.ok += 1
                self.stats.seconds += time.perf_counter() - t0
                return text

        try:
            return await call_with_retry(attempt, s.policy(), self.stats, self._rng,
                                         name=self.name, redact=redact)
        except RequestFailed:
            self.stats.failed += 1
            raise

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
