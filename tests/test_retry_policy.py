"""One retry policy (common/retry.py) for the data-generation client and the GRPO/eval judge, run
against the scripted OpenAI-compatible server on 127.0.0.1 over real HTTP: an overall deadline
cuts off a trickling reply, Retry-After is honoured up to a cap and counted, and an HTTP 200
that is not a chat completion (or has no text) is retried by both clients alike."""

from __future__ import annotations

import asyncio
import time

import openai  # noqa: F401 - imported up front so timings measure requests, not imports
import pytest

from data_gen.llm_client import ChatEndpoint, ClientSettings, RequestFailed
from training.grpo.judge import JudgeConfig, JudgeItem, LLMJudge

MSG = [{"role": "user", "content": "hello"}]


def data_call(server, attempts: int, deadline_s: float = 5.0, retry_after_max_s: float = 60.0):
    """(text or None, stats dict) from one data-client request."""
    ep = ChatEndpoint(server.url, "m", settings=ClientSettings(
        concurrency=2, timeout_s=deadline_s, max_retries=attempts - 1, backoff_s=0.01,
        backoff_max_s=0.02, retry_after_max_s=retry_after_max_s))

    async def go():
        try:
            return await ep.chat(MSG)
        except RequestFailed:
            return None
        finally:
            await ep.aclose()

    text = asyncio.run(go())
    s = ep.stats
    return text, {"calls": s.requests, "retries": s.retries, "retry_after": s.retry_after,
                  "capped": s.retry_after_capped}


def judge_call(server, attempts: int, deadline_s: float = 5.0, retry_after_max_s: float = 60.0):
    server.responder = lambda body, i: "yes"
    judge = LLMJudge(JudgeConfig(base_url=server.url, model="j", max_attempts=attempts,
                                 timeout_s=deadline_s, backoff_s=0.01, backoff_max_s=0.02,
                                 retry_after_max_s=retry_after_max_s))
    (v,) = judge.judge([JudgeItem("q", "r", "a")])
    s = judge.last_stats
    return ("yes" if v.correct else None), {"calls": s.calls, "retries": s.retries,
                                             "retry_after": s.retry_after,
                                             "capped": s.retry_after_capped}


CLIENTS = {"data": data_call, "judge": judge_call}


@pytest.mark.parametrize("client", CLIENTS)
def test_trickling_reply_is_cut_off_by_the_overall_deadline(openai_server, client):
    # ~300 bytes at one byte per 0.05 s: every socket read succeeds, the reply would take ~15 s.
    openai_server.fault_fn = lambda body, n: "trickle:0.05"
    t0 = time.perf_counter()
    text, stats = CLIENTS[client](openai_server, attempts=2, deadline_s=0.6)
    elapsed = time.perf_counter() - t0
    assert text is None and stats["calls"] == 2 and stats["retries"] == 1
    assert 1.2 <= elapsed < 5.0, elapsed  # two attempts of 0.6 s, not 2 x 15 s


@pytest.mark.parametrize("client", CLIENTS)
def test_a_slow_but_whole_reply_within_the_deadline_is_kept(openai_server, client):
    openai_server.inject("trickle:0.002")  # ~0.6 s in all, under the 5 s deadline
    text, stats = CLIENTS[client](openai_server, attempts=1, deadline_s=5.0)
    assert text is not None and stats["calls"] == 1 and stats["retries"] == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_retry_after_is_honoured_and_counted(openai_server, client):
    openai_server.inject("429:0.4")  # longer than our 0.02 s backoff: the server's wait is used
    t0 = time.perf_counter()
    text, stats = CLIENTS[client](openai_server, attempts=3)
    assert text is not None and time.perf_counter() - t0 >= 0.4
    assert stats == {"calls": 2, "retries": 1, "retry_after": 1, "capped": 0}


@pytest.mark.parametrize("client", CLIENTS)
def test_retry_after_is_capped(openai_server, client):
    openai_server.inject("429:20")
    t0 = time.perf_counter()
    text, stats = CLIENTS[client](openai_server, attempts=3, retry_after_max_s=0.3)
    elapsed = time.perf_counter() - t0
    assert text is not None and 0.3 <= elapsed < 2.0, elapsed  # not 20 s
    assert stats == {"calls": 2, "retries": 1, "retry_after": 1, "capped": 1}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", ["notchat", "empty", "malformed"])
def test_a_200_that_is_not_a_usable_completion_is_retried(openai_server, client, fault):
    openai_server.inject(fault)
    text, stats = CLIENTS[client](openai_server, attempts=3)
    assert text is not None and stats["calls"] == 2 and stats["retries"] == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_blank_reply_is_retried_then_given_up(openai_server, client):
    openai_server.responder = lambda body, i: "  "
    if client == "judge":  # judge_call sets its own responder; script blanks via a fault instead
        openai_server.fault_fn = lambda body, n: "empty"
    text, stats = CLIENTS[client](openai_server, attempts=3)
    assert text is None and stats["calls"] == 3 and stats["retries"] == 2
