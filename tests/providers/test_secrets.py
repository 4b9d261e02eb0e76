"""An API key never reaches a log line, an error message, a result or a repr."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from promptops.errors import ProviderNotConfigured, UpstreamError
from promptops.providers import (
    Provider,
    ProviderConfig,
    Providers,
    build_chat_request,
    parse_providers_config,
)
from tests.fakeupstream import Reply

KEY = "sk-test-Zq9vX2mN4bL7pR1t"
REQUEST = build_chat_request([{"role": "user", "content": "hi"}], {"name": "fake-model"})


async def no_sleep(seconds: float) -> None:
    return None


def test_the_key_is_sent_but_never_shown(fake_upstream, caplog):
    caplog.set_level(logging.DEBUG)
    # The provider echoes the key back, as some do in their 401 messages.
    fake_upstream.enqueue(Reply(status=503, error=f"busy, key {KEY}"))
    fake_upstream.reply = Reply(status=401, error=f"Incorrect API key provided: {KEY}")
    config = ProviderConfig(name="fake", base_url=fake_upstream.base_url, api_key_env="FAKE_KEY")
    provider = Provider(config, env={"FAKE_KEY": KEY}, sleep=no_sleep, rng=random.Random(0))

    async def go():
        try:
            await provider.chat(REQUEST)
        finally:
            await provider.aclose()

    with pytest.raises(UpstreamError) as info:
        asyncio.run(go())
    assert [r.headers["authorization"] for r in fake_upstream.requests] == [f"Bearer {KEY}"] * 2
    error = info.value
    assert error.http_status == 401
    shown = [
        str(error),
        repr(error),
        error.message,
        repr(error.result),
        repr(provider),
        repr(config),
        caplog.text,
    ]
    assert caplog.text, "the retry is logged"
    for text in shown:
        assert KEY not in text and "Zq9vX2mN4bL7pR1t" not in text


def test_an_unset_key_variable_is_not_configured(fake_upstream):
    config = parse_providers_config(
        f"providers:\n  a: {{base_url: '{fake_upstream.base_url}', api_key_env: MISSING_KEY_VAR}}\n", env={}
    )
    providers = Providers(config, env={})

    async def go():
        try:
            await providers.chat(REQUEST)
        finally:
            await providers.aclose()

    with pytest.raises(ProviderNotConfigured, match="MISSING_KEY_VAR is not set"):
        asyncio.run(go())
    assert fake_upstream.count == 0


def test_an_unknown_provider_is_not_configured():
    providers = Providers(parse_providers_config("providers:\n  a: {base_url: 'http://x'}\n", env={}))
    request = build_chat_request([], {"provider": "b", "name": "m"})
    with pytest.raises(ProviderNotConfigured) as info:
        providers.get(request.provider)
    assert info.value.provider == "b" and info.value.code == "provider_not_configured"
