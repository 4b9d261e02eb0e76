"""Prices: a provider's own table first, genai-prices for known public models, None otherwise."""

from __future__ import annotations

import asyncio

import pytest

from promptops.providers import (
    ModelPrice,
    PriceSource,
    Provider,
    ProviderConfig,
    build_chat_request,
    price_for,
)
from promptops.providers.prices import _public_api


def test_a_configured_price_wins():
    own = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    found = price_for("gpt-4o-mini", base_url="https://api.openai.com/v1", configured={"gpt-4o-mini": own})
    assert found is own


def test_known_models_come_from_the_table():
    price = price_for("gpt-4o-mini", base_url="https://api.openai.com/v1")
    assert price is not None and price.source is PriceSource.GENAI_PRICES
    assert (price.input_per_mtok, price.output_per_mtok) == (0.15, 0.6)
    assert price.cache_read_per_mtok == 0.075


@pytest.mark.parametrize(
    ("model", "base_url"),
    [
        pytest.param("no-such-model-xyz", "https://api.openai.com/v1", id="unknown-model"),
        # A local server that calls its model gpt-4o-mini is not OpenAI: its price is unknown.
        pytest.param("gpt-4o-mini", "http://127.0.0.1:8080/v1", id="unknown-provider"),
    ],
)
def test_unknown_prices_are_none(model, base_url):
    assert price_for(model, base_url=base_url) is None


@pytest.mark.parametrize(
    ("base_url", "public"),
    [
        ("http://127.0.0.1:8080/v1", False),
        ("http://localhost:11434/v1", False),
        ("http://[::1]:8000/v1", False),
        ("http://10.0.0.7/v1", False),
        ("https://api.openai.com/v1", True),
        ("https://my-resource.openai.azure.com/openai", True),
    ],
)
def test_local_servers_are_never_looked_up_in_the_table(base_url, public):
    # Loading the table takes about 0.4 s; no API it prices lives at an IP address or localhost.
    assert _public_api(base_url) is public


def test_cost_counts_cached_prompt_tokens_at_their_price():
    price = ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0, cache_read_per_mtok=0.5)
    assert price.cost_usd(1_000_000, 500_000) == pytest.approx(2.0 + 4.0)
    assert price.cost_usd(1_000_000, 0, cached_tokens=400_000) == pytest.approx(1.2 + 0.2)
    assert ModelPrice(1.0, 1.0).cost_usd(10, 0, cached_tokens=10) == pytest.approx(10 / 1e6)


def test_a_call_carries_its_unit_prices_and_cost(fake_upstream):
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=3.0)
    provider = Provider(
        ProviderConfig(name="fake", base_url=fake_upstream.base_url, prices={"priced": price}), env={}
    )
    messages = [{"role": "user", "content": "a b c"}]

    async def go():
        try:
            return (
                await provider.chat(build_chat_request(messages, {"name": "priced"})),
                await provider.chat(build_chat_request(messages, {"name": "unpriced"})),
            )
        finally:
            await provider.aclose()

    priced, unpriced = asyncio.run(go())
    assert priced.usage is not None and (priced.usage.prompt_tokens, priced.usage.completion_tokens) == (3, 4)
    assert priced.price == price and priced.cost_usd == pytest.approx((3 * 1.0 + 4 * 3.0) / 1e6)
    assert unpriced.price is None and unpriced.cost_usd is None
