"""Model prices: a provider's own table from promptops.yaml, else the maintained genai-prices table.

A price is looked up by the provider's base URL (genai-prices knows the public APIs by URL) and the
model name; a model the table does not know, or a provider at an unknown URL (a local server), has
no price: `None`, never a guess.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

log = logging.getLogger("promptops.providers")


class PriceSource(StrEnum):
    """Where a price comes from."""

    CONFIG = "config"
    GENAI_PRICES = "genai-prices"


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for one model, and where the figures come from."""

    input_per_mtok: float
    output_per_mtok: float
    source: PriceSource = PriceSource.CONFIG
    cache_read_per_mtok: float | None = None  # for prompt tokens the provider served from its cache

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0) -> float:
        """The cost of a call with these token counts."""
        cached = min(max(cached_tokens, 0), prompt_tokens) if self.cache_read_per_mtok is not None else 0
        total = (
            (prompt_tokens - cached) * self.input_per_mtok
            + cached * (self.cache_read_per_mtok or 0.0)
            + completion_tokens * self.output_per_mtok
        )
        return total / 1_000_000


def price_for(
    model: str, *, base_url: str, configured: Mapping[str, ModelPrice] | None = None
) -> ModelPrice | None:
    """The price of a model at a provider: its configured price, else the table's, else None."""
    if configured and model in configured:
        return configured[model]
    return _table_price(base_url.rstrip("/"), model)


def preload_price_table() -> None:
    """Load the genai-prices table now (about 0.4 s) rather than on the first priced call."""
    _table_price("https://api.openai.com/v1", "gpt-4o-mini")


def _unit(value: Any) -> float | None:
    if isinstance(value, Decimal | int | float):
        return float(value)
    # Tiered prices (by prompt length) start at their base tier; the table's object says so.
    base = getattr(value, "base", None)
    return float(base) if isinstance(base, Decimal | int | float) else None


def _public_api(base_url: str) -> bool:
    """Whether the URL can be one the table knows: every API it prices is at a public host name,
    never `localhost` or an IP address (a local server, a fake upstream)."""
    try:
        host = urllib.parse.urlsplit(base_url).hostname or ""
    except ValueError:
        return True
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


@functools.lru_cache(maxsize=1024)
def _table_price(base_url: str, model: str) -> ModelPrice | None:
    if not _public_api(base_url):
        return None  # without loading the table (about 0.4 s)
    try:
        # Imported on first use: the table is large and a server without priced models never needs it.
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - it is a declared dependency
        return None
    try:
        found = calc_price(Usage(input_tokens=0, output_tokens=0), model, provider_api_url=base_url)
    except LookupError:
        return None
    except Exception as exc:  # noqa: BLE001 - a broken table entry must not fail a call
        log.warning("price lookup failed for model %r: %s", model, type(exc).__name__)
        return None
    price = found.model_price
    unit_in = _unit(getattr(price, "input_mtok", None))
    unit_out = _unit(getattr(price, "output_mtok", None))
    if unit_in is None and unit_out is None:
        return None
    return ModelPrice(
        input_per_mtok=unit_in or 0.0,
        output_per_mtok=unit_out or 0.0,
        source=PriceSource.GENAI_PRICES,
        cache_read_per_mtok=_unit(getattr(price, "cache_read_mtok", None)),
    )
