"""The provider layer: promptops.yaml, one pooled client per provider, retries, the OpenAI wire
format, prices and token counts. It knows nothing of the database or the HTTP server.

    config = load_providers_config(settings.config_path)
    providers = Providers(config)
    request = build_chat_request(messages, version_model_settings, extra=caller_fields)
    result = await providers.chat(request)              # CallResult, or UpstreamError with .result
    async with providers.stream(stream_request) as stream:
        async for event in stream:                      # StreamEvent: raw bytes + parsed chunk
            ...
    stream.result                                       # CallResult once it ended or was closed
"""

from .client import MAX_RESPONSE_BYTES, Provider, Providers
from .config import (
    CacheConfig,
    ProviderConfig,
    ProvidersConfig,
    default_config,
    load_providers_config,
    parse_providers_config,
)
from .prices import ModelPrice, PriceSource, preload_price_table, price_for
from .results import CallResult, CallStatus, EmbeddingsResult, StreamEvent, Usage
from .retry import RetryPolicy, parse_retry_after, sanitize
from .streaming import ChatStream
from .wire import (
    ChatRequest,
    build_chat_request,
    estimate_prompt_tokens,
    estimate_tokens,
    parse_chat_response,
    parse_event,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "CacheConfig",
    "CallResult",
    "CallStatus",
    "ChatRequest",
    "ChatStream",
    "EmbeddingsResult",
    "ModelPrice",
    "PriceSource",
    "Provider",
    "ProviderConfig",
    "Providers",
    "ProvidersConfig",
    "RetryPolicy",
    "StreamEvent",
    "Usage",
    "build_chat_request",
    "default_config",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "load_providers_config",
    "parse_chat_response",
    "parse_event",
    "parse_providers_config",
    "parse_retry_after",
    "preload_price_table",
    "price_for",
    "sanitize",
]
