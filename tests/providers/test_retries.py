"""Retries, backoff, Retry-After, timeouts, size limits and the concurrency bound, over real sockets."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from promptops.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout
from promptops.providers import CallStatus, Provider, ProviderConfig, RetryPolicy, build_chat_request
from tests.fakeupstream import Reply

REQUEST = build_chat_request([{"role": "user", "content": "hello"}], {"name": "fake-model"})


class Recorder:
    """A sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def provider(base_url: str, sleep: Recorder, **config: Any) -> Provider:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0, max_retry_after=30)
    return Provider(
        ProviderConfig(name="fake", base_url=base_url, **config),
        env={},
        sleep=sleep,
        rng=random.Random(0),
        policy=policy,
    )


def call(p: Provider, request=REQUEST):
    async def go():
        try:
            return await p.chat(request)
        finally:
            await p.aclose()

    return asyncio.run(go())


def fails(p: Provider, kind: type[UpstreamError]) -> UpstreamError:
    with pytest.raises(kind) as info:
        call(p)
    assert type(info.value) is kind
    return info.value


@pytest.mark.parametrize("status", [502, 503, 504, 408, 429])
def test_transient_statuses_are_retried(fake_upstream, status):
    fake_upstream.enqueue(Reply(status=status), Reply(status=status))
    sleep = Recorder()
    result = call(provider(fake_upstream.base_url, sleep, max_retries=2))
    assert result.status is CallStatus.OK and result.content == "echo: hello"
    assert (result.attempts, fake_upstream.count) == (3, 3)
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 0.5 and 0 <= sleep.delays[1] <= 1.0
    # A proxy's 504 may hide a request the model ran anyway: the result says so.
    assert result.may_have_been_processed is (status == 504)


def test_retries_are_bounded(fake_upstream):
    fake_upstream.reply = Reply(status=503, error="overloaded")
    sleep = Recorder()
    error = fails(provider(fake_upstream.base_url, sleep, max_retries=3), UpstreamError)
    assert fake_upstream.count == 4 and len(sleep.delays) == 3
    assert error.http_status == 503 and error.code == "upstream_error"
    assert "answered 503: overloaded" in error.message
    assert error.result.status is CallStatus.ERROR and error.result.attempts == 4


def test_retry_after_is_honoured(fake_upstream):
    fake_upstream.enqueue(Reply(status=429, headers={"Retry-After": "7"}), Reply())
    sleep = Recorder()
    result = call(provider(fake_upstream.base_url, sleep))
    assert sleep.delays == [7.0] and result.attempts == 2


def test_rate_limited_after_the_last_attempt(fake_upstream):
    fake_upstream.reply = Reply(status=429, headers={"Retry-After": "2"})
    sleep = Recorder()
    error = fails(provider(fake_upstream.base_url, sleep, max_retries=1), UpstreamRateLimited)
    assert sleep.delays == [2.0] and fake_upstream.count == 2
    assert error.retry_after == 2.0 and error.code == "upstream_rate_limited"
    assert error.result.status is CallStatus.RATE_LIMITED
    assert not error.may_have_been_processed


def test_a_retry_after_beyond_the_cap_gives_up_at_once(fake_upstream):
    fake_upstream.reply = Reply(status=429, headers={"Retry-After": "3600"})
    sleep = Recorder()
    error = fails(provider(fake_upstream.base_url, sleep), UpstreamRateLimited)
    assert sleep.delays == [] and fake_upstream.count == 1 and error.retry_after == 3600.0


@pytest.mark.parametrize("status", [500, 400, 401, 404])
def test_other_errors_are_not_retried(fake_upstream, status):
    fake_upstream.reply = Reply(status=status, error="You sent a bad request")
    sleep = Recorder()
    error = fails(provider(fake_upstream.base_url, sleep), UpstreamError)
    assert fake_upstream.count == 1 and sleep.delays == []
    assert error.http_status == status and error.provider == "fake" and error.model == "fake-model"
    assert error.message.endswith(f"answered {status}: You sent a bad request")
    assert error.may_have_been_processed is (status == 500)


def test_connection_refused_is_retried_and_was_never_processed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleep = Recorder()
    error = fails(provider(f"http://127.0.0.1:{port}/v1", sleep, max_retries=2), UpstreamError)
    assert len(sleep.delays) == 2 and error.result.attempts == 3
    assert error.http_status is None and not error.may_have_been_processed
    assert "cannot connect" in error.message


def test_a_hanging_provider_times_out_once(fake_upstream):
    fake_upstream.reply = Reply(hang=True)
    sleep = Recorder()
    error = fails(provider(fake_upstream.base_url, sleep, timeout_seconds=0.2), UpstreamTimeout)
    # The request was sent: it may be running upstream, so it is not sent again.
    assert fake_upstream.count == 1 and sleep.delays == []
    assert error.may_have_been_processed and error.code == "upstream_timeout"
    assert error.result.status is CallStatus.TIMEOUT


@pytest.mark.parametrize("body", [b"{not json", b'{"choices": []}', b"<html>oops</html>"])
def test_a_malformed_success_is_an_error(fake_upstream, body):
    fake_upstream.reply = Reply(body=body)
    error = fails(provider(fake_upstream.base_url, Recorder()), UpstreamError)
    assert "unreadable answer" in error.message and error.http_status == 200
    assert error.may_have_been_processed and fake_upstream.count == 1


@pytest.mark.parametrize("length_header", [True, False], ids=["declared", "undeclared"])
def test_a_huge_answer_is_refused(fake_upstream, length_header):
    fake_upstream.reply = Reply(huge=50_000_000, length_header=length_header)
    error = fails(provider(fake_upstream.base_url, Recorder()), UpstreamError)
    assert "larger than 10000000 bytes" in error.message


def test_connections_are_kept_alive(fake_upstream):
    p = provider(fake_upstream.base_url, Recorder())

    async def go():
        try:
            return [await p.chat(REQUEST) for _ in range(5)]
        finally:
            await p.aclose()

    results = asyncio.run(go())
    assert [r.status for r in results] == [CallStatus.OK] * 5
    assert fake_upstream.connections == 1


def test_concurrency_is_bounded(fake_upstream):
    fake_upstream.reply = Reply(latency=0.1)
    p = provider(fake_upstream.base_url, Recorder(), max_concurrency=2)

    async def go():
        try:
            return await asyncio.gather(*(p.chat(REQUEST) for _ in range(6)))
        finally:
            await p.aclose()

    results = asyncio.run(go())
    assert all(r.status is CallStatus.OK for r in results)
    assert fake_upstream.count == 6 and fake_upstream.max_in_flight == 2


def test_waiting_too_long_for_a_slot_times_out(fake_upstream):
    fake_upstream.reply = Reply(stall_after=1)
    p = provider(fake_upstream.base_url, Recorder(), max_concurrency=1, timeout_seconds=0.2)
    stream_request = build_chat_request([{"role": "user", "content": "hello"}], {"name": "m"}, stream=True)

    async def go():
        try:
            async with p.stream(stream_request):  # holds the only slot while it is open
                with pytest.raises(UpstreamTimeout) as info:
                    await p.chat(REQUEST)
                return info.value
        finally:
            await p.aclose()

    error = asyncio.run(go())
    assert fake_upstream.count == 1
    assert "connections stayed busy" in error.message and not error.may_have_been_processed
    assert error.result.attempts == 1 and error.result.http_status is None


def test_a_cancelled_call_frees_its_slot(fake_upstream):
    fake_upstream.reply = Reply(hang=True)
    p = provider(fake_upstream.base_url, Recorder(), max_concurrency=1)

    async def go():
        try:
            task = asyncio.create_task(p.chat(REQUEST))
            for _ in range(1000):  # until the request has arrived
                if fake_upstream.count:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            fake_upstream.reply = Reply()
            return await p.chat(REQUEST)
        finally:
            await p.aclose()

    assert asyncio.run(go()).status is CallStatus.OK
