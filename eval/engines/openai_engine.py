"""The `openai` engine: any model served behind an OpenAI-compatible chat endpoint (`vllm serve`,
SGLang, LMDeploy, a hosted API), through the same tasks, filters and metrics as `hf`/`vllm`.

The video goes as its sampled frames, one `image_url` content part each (JPEG or PNG data
URLs), followed by the question text, in one user turn - the form every OpenAI-compatible
server with image input accepts, whatever model is behind it (e.g. LongVILA-R1-7B served by
its own stack). Frames are chosen by eval.engines.frames.sample_frames, the function the vllm
engine uses, so a question sees the same frames whichever engine runs it; the pixel budget
(min/max/total_pixels) applies as for the other engines. The server's processor may resize
them again: what it does is its own business and is recorded only as the served model's name.

Requests of a batch run concurrently, at most `max_concurrency` at once; each is retried by
common.retry (overall deadline per attempt, backoff, Retry-After honoured up to a cap). A
request that fails for good becomes that question's error - `retryable` when the failure was
transient, so the next run asks it again - and never takes its batch down. When
`max_consecutive_failures` requests in a row fail for transient reasons, the endpoint is
treated as down: `EndpointUnavailable` stops the run (predictions so far kept, resume later).
The API key comes from the environment variable `api_key_env` only and is redacted from every
error text.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from eval.engines import Generation, Prepared, Prompt
from eval.engines.frames import sample_frames
from eval.task import EvalItem


@dataclass
class EndpointConfig:
    """Where and how the `openai` engine asks (EvalConfig.endpoint; --set endpoint.KEY=VALUE).
    The served model's name is EvalConfig.model (`--model NAME`)."""

    base_url: str = ""  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never the key)
    max_concurrency: int = 8  # requests in flight at once (within one --batch-size batch)
    max_attempts: int = 4  # tries per request (1 = no retry)
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry, with jitter
    backoff_max_s: float = 30.0  # longest wait between retries
    timeout_s: float = 600.0  # overall deadline per attempt (send -> whole reply read)
    retry_after_max_s: float = 60.0  # a server's Retry-After is honoured up to this (counted)
    # this many requests in a row failing for transient reasons: the endpoint is down, stop
    max_consecutive_failures: int = 16
    image_format: str = "jpeg"  # jpeg | png: how each frame is encoded in its data URL
    jpeg_quality: int = 90
    # extra JSON fields for every request (server-specific sampling knobs), e.g.
    # {"top_k": 1, "repetition_penalty": 1.0}; merged last, so they win
    extra_body: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if not self.base_url:
            raise ValueError(
                "--engine openai needs the endpoint: --base-url http://HOST:PORT/v1 "
                "(or --set endpoint.base_url=...)"
            )
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"endpoint.image_format {self.image_format!r} not in jpeg|png")
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("endpoint.max_concurrency and endpoint.max_attempts must be >= 1")


class EndpointUnavailable(RuntimeError):
    """The endpoint failed too many requests in a row (or cannot be reached at all)."""


@dataclass
class RequestStats:
    """Counters common.retry updates (see its Counters protocol)."""

    requests: int = 0
    calls: int = 0
    retries: int = 0
    retry_after: int = 0
    retry_after_capped: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _client(cfg: EndpointConfig, sync: bool = False) -> Any:
    import openai

    from common.secrets import api_key_from_env

    key = api_key_from_env(cfg.api_key_env) or "EMPTY"  # local servers need none
    cls = openai.OpenAI if sync else openai.AsyncOpenAI
    # retries are common.retry's (counted, Retry-After capped), not the client's
    return cls(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)


def served_model(cfg: EndpointConfig, model: str) -> dict[str, Any]:
    """The endpoint's /models entry for `model` (raises ValueError naming what it serves, or
    that it cannot be reached). Its fields (id, root, max_model_len, ...) identify the model
    in run_info.json, as a model folder's fingerprint does."""
    from common.secrets import redact

    cfg.check()
    try:
        with _client(cfg, sync=True) as client:
            listed = [m.model_dump() for m in client.models.list().data]
    except Exception as exc:  # noqa: BLE001 - any failure here is one clear line
        raise ValueError(
            redact(f"cannot list the models of {cfg.base_url}: {type(exc).__name__}: {exc}")
        ) from None
    for entry in listed:
        if entry.get("id") == model:
            return entry
    names = ", ".join(str(m.get("id")) for m in listed) or "none"
    raise ValueError(f"{cfg.base_url} does not serve model {model!r} (it serves: {names})")


def endpoint_fingerprint(entry: dict[str, Any]) -> str:
    """Identity of a served model: its /models entry without the fields that change per
    process (creation time) - a different checkpoint behind the same name changes `root`."""
    stable = {k: v for k, v in entry.items() if k not in ("created", "permission")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_frame(frame: Any, image_format: str = "jpeg", quality: int = 90) -> str:
    """uint8 RGB [H, W, 3] -> data URL."""
    import cv2

    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if image_format == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - cv2 fails only on empty frames
        raise ValueError("frame could not be encoded")
    return f"data:image/{image_format};base64," + base64.b64encode(buf.tobytes()).decode()


def chat_messages(prompt: Prompt, frame_urls: list[str]) -> list[dict[str, Any]]:
    """One user turn: the frames in time order, then the question (system turn if any)."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": url}} for url in frame_urls
    ]
    parts.append({"type": "text", "text": prompt.user})
    messages.append({"role": "user", "content": parts})
    return messages


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        model: str,
        sampling: Any,
        endpoint: EndpointConfig,
        seed: int = 0,
        served: dict[str, Any] | None = None,
    ) -> None:
        from training.video_inputs import VisionSpec

        endpoint.check()
        self.model = model
        self.sampling = sampling
        self.cfg = endpoint
        self.seed = seed
        # No model folder: frames are sized with Qwen2.5-VL's geometry (28-pixel multiples,
        # even frame counts), the default of every other engine, unless the budget says more.
        self.spec = VisionSpec()
        self.served = served if served is not None else served_model(endpoint, model)
        self.stats = RequestStats()
        self._consecutive_failures = 0
        self._rng = random.Random(seed)

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "engine": self.name,
            "base_url": c.base_url,
            "served_model": {k: self.served.get(k) for k in ("id", "root", "max_model_len")
                             if k in self.served},
            "image_format": c.image_format,
            "max_concurrency": c.max_concurrency,
            "requests": {
                "requests": self.stats.requests,
                "calls": self.stats.calls,
                "retries": self.stats.retries,
                "retry_after": self.stats.retry_after,
                "failed": self.stats.failed,
                "errors": dict(self.stats.errors),
            },
            "vision": {
                "min_pixels": self.sampling.min_pixels or self.spec.min_pixels,
                "max_pixels": self.sampling.max_pixels or self.spec.max_pixels,
            },
        }

    def prepare(self, item: EvalItem) -> Prepared:
        if item.modality == "text":  # no frames: the user turn is the question alone
            return Prepared(item, [], 0, 0.0, [])
        t0 = time.perf_counter()
        sampled = sample_frames(
            item.video_path, self.sampling, self.spec, item.clip_start_s, item.clip_end_s
        )
        urls = [encode_frame(f, self.cfg.image_format, self.cfg.jpeg_quality)
                for f in sampled.frames]
        # the server counts its own visual tokens; 0 here means "not known to us"
        return Prepared(item, sampled.timestamps_s, 0, time.perf_counter() - t0, urls)

    def request_body(self, prepared: Prepared, prompt: Prompt, max_new_tokens: int,
                     temperature: float, top_p: float, num_beams: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(prompt, prepared.payload),
            "max_tokens": max_new_tokens,
            "temperature": max(0.0, temperature),
            "seed": self.seed,
        }
        if top_p < 1.0:
            body["top_p"] = top_p
        if num_beams > 1:  # vLLM's OpenAI server: beam search, width n, best beam first
            body.update(use_beam_search=True, n=num_beams)
        body.update(self.cfg.extra_body)
        return body

    def generate(
        self,
        prepared: list[Prepared],
        prompts: list[Prompt],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_beams: int = 1,
    ) -> list[Generation]:
        from training.grpo.judge import run_coroutine

        bodies = [
            self.request_body(p, q, max_new_tokens, temperature, top_p, num_beams)
            for p, q in zip(prepared, prompts, strict=True)
        ]
        results = run_coroutine(self._ask_all(bodies))
        down = next((r for r in results if isinstance(r, EndpointUnavailable)), None)
        if down is not None:
            raise down
        return results

    async def _ask_all(self, bodies: list[dict[str, Any]]) -> list[Any]:
        client = _client(self.cfg)
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        try:
            return await asyncio.gather(*(self._ask(client, sem, b) for b in bodies))
        finally:
            await client.close()

    async def _ask(self, client: Any, sem: asyncio.Semaphore, body: dict[str, Any]) -> Any:
        from common.retry import (
            RequestFailed,
            RetryPolicy,
            call_with_retry,
            chat_text,
            with_deadline,
        )
        from common.secrets import redact

        c = self.cfg
        policy = RetryPolicy(max_attempts=c.max_attempts, deadline_s=c.timeout_s,
                             backoff_s=c.backoff_s, backoff_max_s=c.backoff_max_s,
                             retry_after_max_s=c.retry_after_max_s)
        known = {"model", "messages", "max_tokens", "temperature", "seed", "top_p", "n"}
        extra = {k: v for k, v in body.items() if k not in known}
        self.stats.requests += 1
        holder: dict[str, Any] = {}

        async def attempt() -> str:
            if self._consecutive_failures >= c.max_consecutive_failures:
                raise _Down()
            async with sem:  # held for the attempt only, not the backoff
                self.stats.calls += 1
                resp = await with_deadline(
                    client.chat.completions.create(
                        **{k: v for k, v in body.items() if k in known}, extra_body=extra or None
                    ),
                    c.timeout_s,
                )
            holder["resp"] = resp
            return chat_text(resp)

        try:
            text = await call_with_retry(attempt, policy, self.stats, self._rng,
                                         name="generation", redact=redact)
        except _Down:
            return self._unavailable()
        except RequestFailed as exc:
            if isinstance(exc.__cause__, _Down):
                return self._unavailable()
            self.stats.failed += 1
            if exc.kind is not None:  # transient to the end: counts towards "the server is down"
                self._consecutive_failures += 1
            return Generation("", 0, False, error=redact(str(exc)), retryable=exc.kind is not None)
        self._consecutive_failures = 0
        resp = holder["resp"]
        usage = getattr(resp, "usage", None)
        choice = resp.choices[0]
        return Generation(
            text,
            int(getattr(usage, "completion_tokens", 0) or 0),
            getattr(choice, "finish_reason", None) == "stop",
        )

    def _unavailable(self) -> EndpointUnavailable:
        return EndpointUnavailable(
            f"{self.cfg.base_url}: {self._consecutive_failures} requests in a row failed "
            f"({', '.join(f'{k}: {v}' for k, v in self.stats.errors.items() if k != '_Down')});"
            " the"
            " predictions so far are kept - run the same command again to resume"
        )


class _Down(Exception):
    """Raised inside an attempt once the endpoint is known to be down (not retried)."""
