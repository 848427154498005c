"""LLM judge for open-ended answers, on any OpenAI-compatible endpoint.

One call per training step judges every open-ended rollout of the step at once: identical
(question, reference, answer) triples are asked once, requests run concurrently under a bound
(asyncio + the async `openai` client), verdicts are cached (in memory and, if `cache_path` is
set, in a JSONL file that survives restarts), transient failures (connection, timeout, 429,
5xx, a 200 that is not a chat completion or has no text) are retried under the shared policy of
common/retry.py (overall deadline per attempt, backoff, Retry-After honoured up to a cap), and a
call that still fails - or a reply that is neither yes nor no - becomes a recorded error verdict. It never raises into the trainer and never
turns a failure into a silent right or wrong (the reference made one blocking call per sample
inside the rollout and crashed on the first failure).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.jsonl import read_jsonl
from common.retry import RequestFailed, RetryPolicy, call_with_retry, chat_text, with_deadline
from common.secrets import api_key_from_env, redact
from training.grpo.judge_prompts import DEFAULT, JudgePrompt, get_prompt

# The default prompt (kept importable under these names: GRPO rewards and older callers).
PROMPT_VERSION = DEFAULT.version
SYSTEM_PROMPT = DEFAULT.system
USER_TEMPLATE = DEFAULT.user


@dataclass
class JudgeConfig:
    """Where and how open-ended answers are judged."""

    base_url: str = ""  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; empty: no judge
    model: str = ""  # model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never the key)
    max_concurrency: int = 16  # requests in flight at once
    max_attempts: int = 4  # tries per request (1 = no retry)
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry, with jitter
    backoff_max_s: float = 30.0  # longest wait between retries
    timeout_s: float = 60.0  # overall deadline per attempt (send -> whole reply read)
    retry_after_max_s: float = 60.0  # a server's Retry-After is honoured up to this (counted)
    temperature: float = 0.0  # judge sampling temperature (0: deterministic verdicts)
    max_tokens: int = 16  # a bare yes/no; reasoning judges need more (a prompt may raise it)
    # named, versioned judge prompt (training.grpo.judge_prompts): default | activitynet_qa_lmms
    # | auto (eval: the benchmark's own protocol, e.g. activitynet_qa_lmms for ActivityNet-QA;
    # training: default)
    prompt: str = "auto"
    cache_path: str = ""  # JSONL verdict cache; empty keeps the cache in memory only
    error_score: float = 0.0  # accuracy given to an answer the judge could not grade (recorded)


@dataclass
class Verdict:
    correct: bool | None  # None: no verdict, see error
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    reply: str = ""
    score: float | None = None  # 0-5, when the prompt's protocol gives one


@dataclass
class JudgeStats:
    requests: int = 0  # triples asked for
    unique: int = 0  # after de-duplication
    cache_hits: int = 0
    calls: int = 0  # HTTP requests made (retries included)
    retries: int = 0
    failed_calls: int = 0  # HTTP attempts that failed (transient or not)
    retry_after: int = 0  # retry waits that followed a server's Retry-After
    retry_after_capped: int = 0  # ... of which asked for more than retry_after_max_s
    errors: int = 0
    seconds: float = 0.0

    def count_error(self, kind: str) -> None:
        self.failed_calls += 1

    def as_metrics(self, prefix: str = "judge/") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in self.__dict__.items()}


@dataclass
class JudgeItem:
    question: str
    reference: str
    answer: str

    def key(self, model: str, version: str = PROMPT_VERSION) -> str:
        payload = json.dumps([version, model, self.question, self.reference, self.answer])
        return hashlib.sha256(payload.encode()).hexdigest()


def parse_verdict(reply: str) -> bool | None:
    """The default prompt's reading of a reply: True (yes), False (no) or None."""
    return DEFAULT.parse(reply)[0]


class _Retryable(Exception):
    pass


@dataclass
class LLMJudge:
    cfg: JudgeConfig
    cache: dict[str, bool] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # cache key -> 0-5 score, if scored
    last_stats: JudgeStats = field(default_factory=JudgeStats)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.cfg.cache_path and Path(self.cfg.cache_path).is_file():
            # A torn last line (killed mid-append) is dropped and cut off; damage elsewhere
            # raises naming the file and line.
            for row in read_jsonl(self.cfg.cache_path, repair=True):
                self.cache[row["key"]] = bool(row["correct"])
                if row.get("score") is not None:
                    self.scores[row["key"]] = float(row["score"])

    @property
    def prompt(self) -> JudgePrompt:
        return get_prompt(self.cfg.prompt)

    @property
    def configured(self) -> bool:
        return bool(self.cfg.base_url and self.cfg.model)

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Judge a whole step's items; one Verdict per item, in order. Never raises."""
        return run_coroutine(self.ajudge(items))

    async def ajudge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        start = time.perf_counter()
        stats = JudgeStats(requests=len(items))
        if not items:
            self.last_stats = stats
            return []
        if not self.configured:
            stats.errors = len(items)
            self.last_stats = stats
            msg = "no judge configured (set reward.judge.base_url and reward.judge.model)"
            return [Verdict(None, msg) for _ in items]
        keys = [it.key(self.cfg.model, self.prompt.version) for it in items]
        todo: dict[str, JudgeItem] = {}
        for k, it in zip(keys, items, strict=True):
            if k not in self.cache and k not in todo:
                todo[k] = it
        stats.unique = len(set(keys))
        stats.cache_hits = stats.unique - len(todo)
        fresh: dict[str, Verdict] = {}
        if todo:
            from openai import AsyncOpenAI

            key = api_key_from_env(self.cfg.api_key_env) or "EMPTY"
            # Retries are ours (counted, logged, backoff we control), not the client's.
            client = AsyncOpenAI(base_url=self.cfg.base_url, api_key=key, max_retries=0,
                                 timeout=self.cfg.timeout_s)
            sem = asyncio.Semaphore(max(1, self.cfg.max_concurrency))
            try:
                results = await asyncio.gather(*(self._one(client, sem, it, stats)
                                                 for it in todo.values()))
            finally:
                await client.close()
            fresh = dict(zip(todo, results, strict=True))
            self._remember({k: v for k, v in fresh.items() if v.correct is not None})
        out = []
        for k in keys:
            if k in fresh:
                out.append(fresh[k])
            else:
                out.append(Verdict(self.cache[k], cached=True, score=self.scores.get(k)))
        stats.errors = sum(v.correct is None for v in out)
        stats.seconds = time.perf_counter() - start
        self.last_stats = stats
        return out

    async def _one(self, client: Any, sem: asyncio.Semaphore, item: JudgeItem,
                   stats: JudgeStats) -> Verdict:
        prompt = self.prompt
        messages = prompt.messages(item.question, item.reference, item.answer)
        max_tokens = max(self.cfg.max_tokens, prompt.min_max_tokens)
        tries = 0

        async def attempt() -> str:
            nonlocal tries
            async with sem:  # held for the attempt only, not the backoff
                tries += 1
                stats.calls += 1
                resp = await with_deadline(client.chat.completions.create(
                    model=self.cfg.model, messages=messages,
                    temperature=self.cfg.temperature, max_tokens=max_tokens),
                    self.cfg.timeout_s)
            return chat_text(resp)

        try:
            reply = await call_with_retry(attempt, self.policy(), stats, self._rng, name="judge",
                                          redact=redact)
        except RequestFailed as exc:
            if exc.kind is None:  # 4xx other than 429: retrying will not help
                return Verdict(None, redact(f"judge refused the request: {exc.last}"),
                               attempts=tries)
            return Verdict(None, redact(f"judge failed after {tries} attempt(s): {exc.last}"),
                           attempts=tries)
        verdict, score, why = prompt.parse(reply)
        if verdict is None:
            return Verdict(None, redact(f"judge reply unreadable ({prompt.name}): {why}"),
                           attempts=tries, reply=reply)
        return Verdict(verdict, attempts=tries, reply=reply, score=score)

    def policy(self) -> RetryPolicy:
        c = self.cfg
        return RetryPolicy(max_attempts=max(1, c.max_attempts), deadline_s=c.timeout_s,
                           backoff_s=c.backoff_s, backoff_max_s=c.backoff_max_s,
                           retry_after_max_s=c.retry_after_max_s)

    def _remember(self, verdicts: dict[str, Verdict]) -> None:
        for k, v in verdicts.items():
            self.cache[k] = bool(v.correct)
            if v.score is not None:
                self.scores[k] = v.score
        if self.cfg.cache_path and verdicts:
            path = Path(self.cfg.cache_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                for k, v in verdicts.items():
                    row: dict[str, Any] = {"key": k, "correct": bool(v.correct)}
                    if v.score is not None:
                        row["score"] = v.score
                    fh.write(json.dumps(row) + "\n")


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, also when a loop is already running
    (notebooks, Ray async actors): then it runs on a private loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
