"""Streaming completions: pass-through bytes, parsed deltas, usage or its estimate, failures, cancel."""

from __future__ import annotations

import asyncio
import random

import pytest

from promptops.errors import UpstreamError, UpstreamTimeout
from promptops.providers import CallStatus, ChatStream, Provider, ProviderConfig, build_chat_request
from tests.fakeupstream import Reply

MESSAGES = [{"role": "user", "content": "one two three four"}]
REQUEST = build_chat_request(MESSAGES, {"name": "fake-model"}, stream=True)


async def no_sleep(seconds: float) -> None:
    return None


def provider(fake, **config) -> Provider:
    return Provider(
        ProviderConfig(name="fake", base_url=fake.base_url, **config),
        env={},
        sleep=no_sleep,
        rng=random.Random(0),
    )


async def drain(p: Provider, request=REQUEST) -> tuple[ChatStream, list]:
    events = []
    async with p.stream(request) as stream:
        async for event in stream:
            events.append(event)
    return stream, events


def run_stream(fake, **config):
    p = provider(fake, **config)

    async def go():
        try:
            return await drain(p)
        finally:
            await p.aclose()

    return asyncio.run(go())


def test_a_stream_with_usage(fake_upstream):
    stream, events = run_stream(fake_upstream)
    assert fake_upstream.requests[0].json()["stream_options"] == {"include_usage": True}
    assert "".join(e.content or "" for e in events) == "echo: one two three four"
    assert events[-1].done and events[-2].usage_only
    assert all(e.raw.startswith(b"data: ") and e.raw.endswith(b"\n\n") for e in events)
    result = stream.result
    assert result is not None and result.status is CallStatus.OK
    assert result.content == "echo: one two three four" and result.finish_reason == "stop"
    assert result.usage is not None and not result.usage_estimated
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 5)
    assert result.ttft_ms is not None and 0 <= result.ttft_ms <= result.latency_ms


def test_the_raw_bytes_are_what_the_provider_sent(fake_upstream):
    sent = (
        b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}\n\n',
        b": a comment\n\n",
        b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}\n\n',
        b"data: [DONE]\n\n",
    )
    fake_upstream.reply = Reply(events=sent)
    stream, events = run_stream(fake_upstream)
    assert tuple(e.raw for e in events) == (sent[0], sent[2], sent[3])
    assert stream.result is not None and stream.result.finish_reason == "length"


def test_a_stream_without_usage_is_estimated(fake_upstream):
    fake_upstream.reply = Reply(stream_usage=False)
    stream, events = run_stream(fake_upstream)
    assert not any(e.usage for e in events)
    result = stream.result
    assert result is not None and result.status is CallStatus.OK and result.usage_estimated
    # characters / 4, rounded up, plus 4 tokens per prompt message
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5 + 4, 6)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param(Reply(break_after=3), "the stream broke off", id="broken"),
        pytest.param(
            Reply(events=(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b"data: {oops\n\n")),
            "unreadable stream",
            id="malformed",
        ),
        pytest.param(
            Reply(
                events=(
                    b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
                    b'data: {"error": {"message": "model crashed"}}\n\n',
                )
            ),
            "error in the stream",
            id="error-event",
        ),
        pytest.param(
            Reply(events=(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',)),
            "ended before it finished",
            id="unfinished",
        ),
    ],
)
def test_a_stream_that_fails_after_it_started(fake_upstream, reply, message):
    fake_upstream.reply = reply
    p = provider(fake_upstream)
    received = []

    async def go():
        try:
            async with p.stream(REQUEST) as stream:
                async for event in stream:
                    received.append(event)
        finally:
            await p.aclose()
        return stream

    with pytest.raises(UpstreamError) as info:
        asyncio.run(go())
    error = info.value
    assert type(error) is UpstreamError and message in error.message
    assert error.may_have_been_processed and fake_upstream.count == 1
    assert error.result.status is CallStatus.ERROR and error.result.ttft_ms is not None
    assert received and received[0].content in ("", "a")


def test_a_stalled_stream_times_out(fake_upstream):
    fake_upstream.reply = Reply(stall_after=2)
    with pytest.raises(UpstreamTimeout) as info:
        run_stream(fake_upstream, timeout_seconds=0.2)
    assert info.value.may_have_been_processed and fake_upstream.count == 1


def test_a_stream_refused_before_it_started(fake_upstream):
    fake_upstream.reply = Reply(status=400, error="bad tools")
    p = provider(fake_upstream)
    stream = p.stream(REQUEST)

    async def go():
        try:
            async with stream:
                pass
        finally:
            await p.aclose()

    with pytest.raises(UpstreamError, match="answered 400: bad tools"):
        asyncio.run(go())
    assert stream.result is not None and stream.result.status is CallStatus.ERROR
    assert stream.result.http_status == 400


def test_errors_before_the_first_byte_are_retried(fake_upstream):
    fake_upstream.enqueue(Reply(status=503))
    stream, events = run_stream(fake_upstream)
    assert stream.result is not None and stream.result.attempts == 2 and events[-1].done


def test_leaving_early_closes_the_upstream_response(fake_upstream):
    fake_upstream.reply = Reply(stall_after=2)
    p = provider(fake_upstream, max_concurrency=1)

    async def go():
        try:
            async with p.stream(REQUEST) as stream:
                async for _event in stream:
                    break
            fake_upstream.reply = Reply()
            # The slot is free again: the next call does not wait for the first.
            return stream, await p.chat(build_chat_request(MESSAGES, {"name": "m"}))
        finally:
            await p.aclose()

    stream, after = asyncio.run(go())
    assert stream.result is not None and stream.result.status is CallStatus.CANCELLED
    assert stream.result.may_have_been_processed
    assert after.status is CallStatus.OK
    assert fake_upstream.left.wait(60) and fake_upstream.disconnects == 1


def test_cancelling_the_consumer_closes_the_stream(fake_upstream):
    fake_upstream.reply = Reply(stall_after=2)
    p = provider(fake_upstream)
    holder: dict[str, ChatStream] = {}

    async def consume():
        async with p.stream(REQUEST) as stream:
            holder["stream"] = stream
            async for _event in stream:
                pass

    async def go():
        try:
            task = asyncio.create_task(consume())
            for _ in range(1000):  # until the stream has started
                if "stream" in holder:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await p.aclose()

    asyncio.run(go())
    result = holder["stream"].result
    assert result is not None and result.status is CallStatus.CANCELLED
    assert fake_upstream.left.wait(60)


def test_streamed_tool_calls_are_merged(fake_upstream):
    def chunk(delta: str) -> bytes:
        return b'data: {"choices": [{"index": 0, "delta": ' + delta.encode() + b"}]}\n\n"

    fake_upstream.reply = Reply(
        events=(
            chunk(
                '{"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",'
                ' "function": {"name": "lookup", "arguments": ""}}]}'
            ),
            chunk('{"tool_calls": [{"index": 0, "function": {"arguments": "{\\"q\\": "}}]}'),
            chunk('{"tool_calls": [{"index": 0, "function": {"arguments": "\\"cats\\"}"}}]}'),
            b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}\n\n',
            b"data: [DONE]\n\n",
        )
    )
    stream, _ = run_stream(fake_upstream)
    result = stream.result
    assert result is not None and result.finish_reason == "tool_calls"
    assert result.message is not None and result.message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cats"}'}}
    ]
