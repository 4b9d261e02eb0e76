"""`Client.complete` and `AsyncClient.complete` against a live server with the gateway."""

from __future__ import annotations

import asyncio

import pytest

from promptops import AsyncClient, Client, CompleteResult
from promptops import errors as e
from tests import fakeupstream
from tests.fakeupstream import Reply
from tests.server import test_openai

# Fixtures shared with other test modules.
fake_upstream = fakeupstream.fake_upstream
gateway_settings = test_openai.gateway_settings
ops = test_openai.ops
live = test_openai.live


def test_complete(live, fake_upstream):
    with Client(live) as client:
        out = client.complete("ask", {"question": "hi"})
        assert isinstance(out, CompleteResult) and out.content == "echo: hi"
        assert out.cache == "miss" and out.version == 1 and out.decision_id.startswith("d_")
        assert client.complete("ask", {"question": "hi"}).cache == "hit"
        with pytest.raises(e.PromptNotFound):
            client.complete("nope")
        with pytest.raises(e.VariableError):
            client.complete("ask", {})
        fake_upstream.enqueue(Reply(status=500))
        with pytest.raises(e.UpstreamError):
            client.complete("chat", {"question": "q"})
    assert fake_upstream.count == 2  # a failed call is never resent


def test_async_complete(live):
    async def go() -> CompleteResult:
        async with AsyncClient(live) as client:
            return await client.complete(
                "chat", {"question": "q"}, unit_id="u1", messages=[{"role": "user", "content": "and?"}]
            )

    out = asyncio.run(go())
    assert out.content == "echo: and?" and out.cache == "bypass"
    with pytest.raises(AttributeError):
        out.content = "x"  # type: ignore[misc]
