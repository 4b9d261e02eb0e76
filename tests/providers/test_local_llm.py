"""Against a real llama.cpp server (opt-in): set PROMPTOPS_TEST_LLM_URL, e.g. http://127.0.0.1:18080/v1."""

from __future__ import annotations

import asyncio
import os

import pytest

from promptops.errors import UpstreamError
from promptops.providers import CallStatus, Provider, ProviderConfig, build_chat_request

URL = os.environ.get("PROMPTOPS_TEST_LLM_URL")
MODEL = "smollm2-135m"
pytestmark = pytest.mark.skipif(not URL, reason="PROMPTOPS_TEST_LLM_URL is not set")
MESSAGES = [{"role": "user", "content": "Say hello."}]


def run(scenario):
    provider = Provider(
        ProviderConfig(name="local", base_url=(URL or "").rstrip("/"), timeout_seconds=60, max_retries=0),
        env={},
    )

    async def go():
        try:
            return await scenario(provider)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def test_a_completion_with_usage():
    async def scenario(p):
        return await p.chat(build_chat_request(MESSAGES, {"name": MODEL, "max_tokens": 8, "temperature": 0}))

    result = run(scenario)
    assert result.status is CallStatus.OK and result.http_status == 200
    assert isinstance(result.content, str) and result.finish_reason in ("stop", "length")
    assert result.usage is not None and not result.usage_estimated
    assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 8
    assert result.price is None and result.cost_usd is None  # a local model has no price


def test_a_stream_without_usage_is_estimated():
    async def scenario(p):
        settings = {"name": MODEL, "max_tokens": 8, "temperature": 0}
        request = build_chat_request(MESSAGES, settings, stream=True)
        async with p.stream(request) as stream:
            events = [event async for event in stream]
        return stream.result, events

    result, events = run(scenario)
    assert events[-1].done
    assert result is not None and result.status is CallStatus.OK
    # llama.cpp ignores stream_options.include_usage: the counts are estimates.
    assert result.usage_estimated and result.usage is not None and result.usage.prompt_tokens > 0
    assert result.content == "".join(e.content or "" for e in events)
    assert result.ttft_ms is not None


def test_embeddings_or_a_mapped_error():
    async def scenario(p):
        try:
            return await p.embeddings(MODEL, ["a cat", "a dog"])
        except UpstreamError as exc:
            return exc

    outcome = run(scenario)
    if isinstance(outcome, UpstreamError):
        # The shared server starts without --embedding: llama.cpp answers 500, which is not retried.
        assert outcome.http_status == 500 and "embedding" in outcome.message
        assert outcome.result.attempts == 1
    else:
        assert len(outcome.vectors) == 2 and len(outcome.vectors[0]) > 0


def test_a_malformed_request_is_an_upstream_error():
    async def scenario(p):
        request = build_chat_request(MESSAGES, {"name": MODEL, "max_tokens": "many"})
        return await p.chat(request)

    with pytest.raises(UpstreamError) as info:
        run(scenario)
    error = info.value
    assert type(error) is UpstreamError and error.http_status == 500 and error.result.attempts == 1
    assert len(error.message) < 300 and "Traceback" not in error.message
