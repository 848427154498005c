"""data_gen.llm_client against the scripted OpenAI-compatible server over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from data_gen.llm_client import ChatEndpoint, ClientSettings, RequestFailed

MSG = [{"role": "user", "content": "hello"}]
FAST = ClientSettings(concurrency=4, timeout_s=0.5, max_retries=3, backoff_s=0.01, backoff_max_s=0.05)


def _run(coro):
    return asyncio.run(coro)


def test_transient_faults_are_retried(openai_server):
    openai_server.inject("429", "500", "malformed", "timeout:1.5", "drop", "503", "empty")
    ep = ChatEndpoint(openai_server.url, "m", settings=ClientSettings(
        concurrency=1, timeout_s=0.5, max_retries=7, backoff_s=0.01))

    async def go():
        try:
            return await ep.chat(MSG)
        finally:
            await ep.aclose()

    assert _run(go()) == "echo: hello"
    s = ep.stats
    assert (s.requests, s.ok, s.retries, s.failed) == (8, 1, 7, 0)
    assert s.errors == {"429": 1, "500": 1, "malformed": 2, "timeout": 1, "connection": 1, "503": 1}


def test_gives_up_after_retries_and_does_not_retry_client_errors(openai_server):
    openai_server.fault_fn = lambda body, n: "500"
    ep = ChatEndpoint(openai_server.url, "m", settings=FAST)

    async def go():
        with pytest.raises(RequestFailed, match="gave up after 4 attempts"):
            await ep.chat(MSG)
        openai_server.fault_fn = None
        openai_server.inject("404")
        with pytest.raises(RequestFailed, match="NotFound"):  # retrying cannot help
            await ep.chat(MSG)
        await ep.aclose()

    _run(go())
    assert ep.stats.requests == 5 and ep.stats.failed == 2
    assert len(openai_server.log) == 5


def test_concurrency_is_bounded(openai_server):
    openai_server.latency_s = 0.05
    ep = ChatEndpoint(openai_server.url, "m", settings=ClientSettings(concurrency=3))

    async def go():
        out = await asyncio.gather(*[ep.chat([{"role": "user", "content": str(i)}]) for i in range(12)])
        await ep.aclose()
        return out

    assert _run(go()) == [f"echo: {i}" for i in range(12)]
    assert openai_server.max_in_flight == 3


def test_api_key_from_env_only_and_redacted(openai_server, monkeypatch):
    key = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("MY_KEY", key)
    openai_server.expected_key = key
    ep = ChatEndpoint(openai_server.url, "m", api_key_env="MY_KEY", settings=FAST)

    async def go():
        await ep.chat(MSG)
        openai_server.inject("401")  # not retryable: the error message must not carry the key
        with pytest.raises(RequestFailed) as err:
            await ep.chat(MSG)
        await ep.aclose()
        return str(err.value)

    message = _run(go())
    assert openai_server.log[0]["key_ok"] and "401" in message and key not in message
    assert key not in repr(openai_server.log)


def test_redaction_covers_a_secret_that_extends_another():
    # Two registered keys, one a prefix of the other: no tail of the longer may survive,
    # whatever order the registry holds them in.
    from common.secrets import redact, register_secret

    short, long_ = "pfx-key-0042", "pfx-key-0042-tail9876543"
    register_secret(short)
    register_secret(long_)
    text = redact(f"boom with {long_} and {short}")
    assert text == "boom with *** and ***"
