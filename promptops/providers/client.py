"""One provider's HTTP client: a shared connection pool, a concurrency bound, retries, size limits.

`Providers` holds one `Provider` per configured name, each created on first use with one
keep-alive connection pool (transport.py, at most `max_concurrency` idle connections; httpx's own
when proxies are set in the environment) and one semaphore. A call waits for
a slot at most `timeout_seconds`; the API key is read from its variable for each request and only
ever placed in the request's Authorization header.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from promptops.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout

from .config import ProviderConfig, ProvidersConfig
from .prices import ModelPrice, price_for
from .results import CallResult, CallStatus, EmbeddingsResult, Usage
from .retry import MAYBE_PROCESSED_STATUSES, RETRY_STATUSES, RetryPolicy, error_excerpt, parse_retry_after
from .streaming import ChatStream
from .transport import Http11Transport, prepare_head
from .wire import (
    ChatRequest,
    WireError,
    estimate_prompt_tokens,
    estimate_tokens,
    parse_chat_response,
    parse_embeddings_response,
)

log = logging.getLogger("promptops.providers")

MAX_RESPONSE_BYTES = 10_000_000
"""The largest non-stream answer (and stream) read from a provider."""
_ERROR_BODY_BYTES = 65_536
_CONNECT_TIMEOUT = 10.0
_USER_AGENT = f"promptops python-httpx/{httpx.__version__}"
Sleep = Callable[[float], Any]


@dataclass
class _Attempts:
    """The state of one call across its attempts."""

    model: str
    started: float
    count: int = 0
    maybe_processed: bool = False
    http_status: int | None = None


class Provider:
    """A configured provider's connection pool, concurrency bound and retrying calls."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.config = config
        self.max_response_bytes = max_response_bytes
        self._env = os.environ if env is None else env
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._slots = asyncio.Semaphore(config.max_concurrency)
        seconds = config.timeout_seconds
        timeout = httpx.Timeout(
            connect=min(_CONNECT_TIMEOUT, seconds), read=seconds, write=seconds, pool=seconds
        )
        if transport is None and not set(urllib.request.getproxies()) - {"no"}:
            # With proxies configured in the environment, httpx's own transport handles them.
            transport = Http11Transport(max_idle=config.max_concurrency)
        # Requests go straight to the transport when there is one: httpx.AsyncClient's
        # per-request merging of URLs, headers, cookies, auth and hooks is work a provider
        # call never needs. The client still owns (and closes) the transport.
        self._transport = transport
        self._timeout = {"timeout": timeout.as_dict()}
        self._base = config.base_url.rstrip("/") + "/"
        self._headers = {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "user-agent": _USER_AGENT,
            "content-type": "application/json",
            **{k.lower(): v for k, v in config.headers.items()},
        }
        self._prepared: tuple[str | None, httpx.Headers] | None = None
        self._urls: dict[str, httpx.URL] = {}
        self._heads: dict[str, tuple[httpx.Headers, bytes]] = {}
        self._client = httpx.AsyncClient(
            base_url=config.base_url + "/",
            headers=dict(config.headers),
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency
            ),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<Provider {self.config.name} {self.config.base_url}>"

    @property
    def name(self) -> str:
        """The provider's name in promptops.yaml."""
        return self.config.name

    def price(self, model: str) -> ModelPrice | None:
        """The unit prices of a model at this provider, or None when unknown."""
        return price_for(model, base_url=self.config.base_url, configured=self.config.prices)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def chat(self, request: ChatRequest) -> CallResult:
        """A non-stream chat completion; raises an UpstreamError (with `.result`) on failure."""
        body = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
        state = _Attempts(model=request.model, started=self._clock())
        response = await self._open("chat/completions", body, state)
        try:
            data = await self._read(response, state)
        finally:
            await response.aclose()
            self._slots.release()
        try:
            parsed = parse_chat_response(data)
        except WireError as exc:
            raise self._error(UpstreamError, f"unreadable answer: {exc}", state, maybe=True) from None
        usage = parsed.usage
        if usage is None:
            content = parsed.message.get("content")
            usage = Usage(
                estimate_prompt_tokens(body.get("messages", [])),
                estimate_tokens(content if isinstance(content, str) else ""),
                estimated=True,
            )
        latency_ms = self._elapsed_ms(state)
        price = self.price(state.model)
        return CallResult(
            provider=self.name,
            model=state.model,
            status=CallStatus.OK,
            message=parsed.message,
            finish_reason=parsed.finish_reason,
            usage=usage,
            cost_usd=_cost(price, usage),
            price=price,
            latency_ms=latency_ms,
            http_status=state.http_status,
            attempts=state.count,
            may_have_been_processed=state.maybe_processed,
            response=parsed.body,
        )

    def stream(self, request: ChatRequest) -> ChatStream:
        """A streaming chat completion: `async with provider.stream(req) as s: async for event in s`."""
        body = dict(request.body)
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
        return ChatStream(self, body, _Attempts(model=request.model, started=self._clock()))

    async def embeddings(
        self, model: str, inputs: Sequence[str], *, extra: Mapping[str, Any] | None = None
    ) -> EmbeddingsResult:
        """Embedding vectors of the inputs, in order; raises an UpstreamError on failure."""
        body = {**(extra or {}), "model": model, "input": list(inputs)}
        state = _Attempts(model=model, started=self._clock())
        response = await self._open("embeddings", body, state)
        try:
            data = await self._read(response, state)
        finally:
            await response.aclose()
            self._slots.release()
        try:
            vectors, usage = parse_embeddings_response(data, len(inputs))
        except WireError as exc:
            raise self._error(UpstreamError, f"unreadable answer: {exc}", state, maybe=True) from None
        if usage is None:
            usage = Usage(sum(estimate_tokens(text) for text in inputs), 0, estimated=True)
        latency_ms = self._elapsed_ms(state)
        price = self.price(model)
        return EmbeddingsResult(
            provider=self.name,
            model=model,
            vectors=vectors,
            usage=usage,
            cost_usd=_cost(price, usage),
            price=price,
            latency_ms=latency_ms,
            http_status=state.http_status,
            attempts=state.count,
        )

    async def _open(self, path: str, body: Mapping[str, Any], state: _Attempts) -> httpx.Response:
        """Send with retries; a 2xx response comes back open, holding a slot the caller releases."""
        key = self.config.api_key(self._env)
        content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        headers = self._prepared_headers(key)
        while True:
            state.count += 1
            await self._acquire(state)
            retry_after: float | None = None
            try:
                response = await self._send(path, content, headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The request never reached the server: always safe to try again.
                self._slots.release()
                failure: tuple[type[UpstreamError], str, bool] = (
                    UpstreamTimeout if isinstance(exc, httpx.TimeoutException) else UpstreamError,
                    f"cannot connect to the provider ({type(exc).__name__})",
                    True,
                )
            except httpx.TimeoutException as exc:
                self._slots.release()
                raise self._error(
                    UpstreamTimeout,
                    f"no answer within {self.config.timeout_seconds:g}s ({type(exc).__name__})",
                    state,
                    maybe=True,
                ) from None
            except httpx.HTTPError as exc:
                self._slots.release()
                raise self._error(
                    UpstreamError, f"the connection failed ({type(exc).__name__})", state, maybe=True
                ) from None
            except BaseException:
                self._slots.release()
                raise
            else:
                state.http_status = response.status_code
                if response.is_success:
                    return response
                try:
                    excerpt = await self._error_excerpt(response, key)
                finally:
                    await response.aclose()
                    self._slots.release()
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                state.maybe_processed |= status in MAYBE_PROCESSED_STATUSES
                kind = (
                    UpstreamRateLimited
                    if status == 429
                    else UpstreamTimeout
                    if status in (408, 504)
                    else UpstreamError
                )
                failure = (
                    kind,
                    f"the provider answered {status}: {excerpt}"
                    if excerpt
                    else f"the provider answered {status}",
                    status in RETRY_STATUSES,
                )
            kind, message, retryable = failure
            too_long = retry_after is not None and retry_after > self._policy.max_retry_after
            if not retryable or state.count > self.config.max_retries or too_long:
                raise self._error(kind, message, state, retry_after=retry_after)
            delay = (
                retry_after if retry_after is not None else self._policy.backoff(state.count - 1, self._rng)
            )
            log.warning(
                "provider %s model %s: %s; retry %d of %d in %.2fs",
                self.name,
                state.model,
                message,
                state.count,
                self.config.max_retries,
                delay,
            )
            await self._sleep(delay)

    def _prepared_headers(self, key: str | None) -> httpx.Headers:
        """The request headers for this API key, built once while the key stays the same."""
        prepared = self._prepared
        if prepared is None or prepared[0] != key:
            headers = {**self._headers, "authorization": f"Bearer {key}"} if key else self._headers
            prepared = self._prepared = (key, httpx.Headers(headers))
        return prepared[1]

    async def _send(self, path: str, content: bytes, headers: httpx.Headers) -> httpx.Response:
        if self._transport is None:
            request = self._client.build_request("POST", path, content=content, headers=headers)
            return await self._client.send(request, stream=True)
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._base + path)
        if isinstance(self._transport, Http11Transport):
            # The head is the same on every call while the key stays the same: built once.
            prepared = self._heads.get(path)
            if prepared is None or prepared[0] is not headers:
                head = prepare_head(httpx.Request("POST", url, headers=headers))
                prepared = self._heads[path] = (headers, head)
            return await self._transport.post(url, prepared[1], content, self._timeout["timeout"])
        request = httpx.Request("POST", url, headers=headers, content=content, extensions=self._timeout)
        return await self._transport.handle_async_request(request)

    async def _acquire(self, state: _Attempts) -> None:
        if not self._slots.locked():  # a free slot: taken at once, no deadline to arm
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise self._error(
                UpstreamTimeout,
                f"all {self.config.max_concurrency} connections stayed "
                f"busy for {self.config.timeout_seconds:g}s",
                state,
            ) from None

    async def _read(self, response: httpx.Response, state: _Attempts) -> bytes:
        """The whole body, bounded by max_response_bytes."""
        limit = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._error(UpstreamError, f"the answer is larger than {limit} bytes", state, maybe=True)
        chunks: list[bytes] = []
        size = 0
        # Our transport's body raises httpx's errors itself: without a content encoding to undo,
        # it is read as it is, without httpx's decoder and chunker layers.
        plain = isinstance(self._transport, Http11Transport) and "content-encoding" not in response.headers
        try:
            async for chunk in response.stream if plain else response.aiter_bytes():  # type: ignore[union-attr]
                size += len(chunk)
                if size > limit:
                    raise self._error(
                        UpstreamError, f"the answer is larger than {limit} bytes", state, maybe=True
                    )
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise self._error(
                UpstreamTimeout, f"the answer stalled for {self.config.timeout_seconds:g}s", state, maybe=True
            ) from None
        except httpx.HTTPError as exc:
            raise self._error(
                UpstreamError, f"the answer broke off ({type(exc).__name__})", state, maybe=True
            ) from None
        return b"".join(chunks)

    async def _error_excerpt(self, response: httpx.Response, key: str | None) -> str:
        body = b""
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= _ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            pass
        return error_excerpt(body, secrets=[key] if key else [])

    def _elapsed_ms(self, state: _Attempts) -> float:
        return (self._clock() - state.started) * 1000.0

    def _error(
        self,
        kind: type[UpstreamError],
        message: str,
        state: _Attempts,
        *,
        maybe: bool = False,
        retry_after: float | None = None,
        ttft_ms: float | None = None,
    ) -> UpstreamError:
        """The exception to raise, carrying the CallResult of the failed call."""
        state.maybe_processed |= maybe
        status = {UpstreamTimeout: CallStatus.TIMEOUT, UpstreamRateLimited: CallStatus.RATE_LIMITED}.get(
            kind, CallStatus.ERROR
        )
        text = f"provider {self.name!r}, model {state.model!r}: {message}"
        result = CallResult(
            provider=self.name,
            model=state.model,
            status=status,
            latency_ms=self._elapsed_ms(state),
            ttft_ms=ttft_ms,
            http_status=state.http_status,
            attempts=state.count,
            may_have_been_processed=state.maybe_processed,
            error=message,
        )
        fields: dict[str, Any] = dict(
            provider=self.name,
            model=state.model,
            http_status=state.http_status,
            may_have_been_processed=state.maybe_processed,
            result=result,
        )
        if kind is UpstreamRateLimited:
            return UpstreamRateLimited(text, retry_after=retry_after, **fields)
        return kind(text, **fields)


def _cost(price: ModelPrice | None, usage: Usage | None) -> float | None:
    if price is None or usage is None:
        return None
    return price.cost_usd(usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens)


class Providers:
    """Every configured provider, each created (with its client) on first use."""

    def __init__(self, config: ProvidersConfig, **provider_options: Any) -> None:
        self.config = config
        self._options = provider_options
        self._providers: dict[str, Provider] = {}

    def get(self, name: str | None = None) -> Provider:
        """The named provider (the default for None); ProviderNotConfigured if there is none."""
        config = self.config.provider(name)
        provider = self._providers.get(config.name)
        if provider is None:
            provider = self._providers[config.name] = Provider(config, **self._options)
        return provider

    async def chat(self, request: ChatRequest) -> CallResult:
        """A non-stream completion at the request's provider."""
        return await self.get(request.provider).chat(request)

    def stream(self, request: ChatRequest) -> ChatStream:
        """A streaming completion at the request's provider."""
        return self.get(request.provider).stream(request)

    async def aclose(self) -> None:
        """Close every provider's connection pool."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()
