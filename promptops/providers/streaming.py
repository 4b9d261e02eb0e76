"""A streaming chat completion: raw server-sent events to pass through, parsed as they arrive.

Retries happen only before the first byte of the answer. Once events flow, a broken connection,
a stall, malformed JSON or an error event raises an UpstreamError that says the request may have
been processed. Leaving the `async with` block early (or being cancelled) closes the upstream
response, so the provider stops generating; the result then has status `cancelled`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from promptops.errors import UpstreamError, UpstreamTimeout

from .results import CallResult, CallStatus, StreamEvent, Usage
from .wire import SSEParser, WireError, estimate_prompt_tokens, estimate_tokens, parse_event

if TYPE_CHECKING:
    from .client import Provider, _Attempts


class ChatStream:
    """An open streaming completion; iterate it for StreamEvents, read `result` when it ends."""

    def __init__(self, provider: Provider, body: Mapping[str, Any], state: _Attempts) -> None:
        self.provider = provider
        self.body = body
        self._state = state
        self._response: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._parser = SSEParser()
        self._pending: deque[StreamEvent] = deque()
        self._received = 0
        self._content: list[str] = []
        self._message: dict[str, Any] = {"role": "assistant"}
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self._ttft_ms: float | None = None
        self._done = False
        self._result: CallResult | None = None
        self._broken: str | None = None

    @property
    def result(self) -> CallResult | None:
        """The call's outcome once the stream has ended, failed or been closed; None before."""
        return self._result

    async def __aenter__(self) -> ChatStream:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Send the request (retrying until the answer starts); the status is known after this."""
        if self._response is None and self._result is None:
            try:
                self._response = await self.provider._open("chat/completions", self.body, self._state)
            except UpstreamError as exc:
                self._result = exc.result
                raise
            self._chunks = self._response.aiter_bytes()

    @property
    def buffered(self) -> int:
        """Events already received and parsed, waiting to be iterated."""
        return len(self._pending)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._response is None and self._result is None:
            await self.open()
        while not self._pending:
            if self._result is not None or self._chunks is None:
                raise StopAsyncIteration
            await self._pull()
        return self._pending.popleft()

    async def _pull(self) -> None:
        assert self._chunks is not None
        if self._broken is not None:
            raise await self._failed(UpstreamError, self._broken)
        limit = self.provider.max_response_bytes
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._end()
            return
        except httpx.TimeoutException:
            raise await self._failed(
                UpstreamTimeout, f"the stream stalled for {self.provider.config.timeout_seconds:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise await self._failed(UpstreamError, f"the stream broke off ({type(exc).__name__})") from None
        self._received += len(chunk)
        if self._received > limit:
            raise await self._failed(UpstreamError, f"the stream is larger than {limit} bytes")
        try:
            for raw in self._parser.feed(chunk):
                self._take(parse_event(raw))
        except WireError as exc:
            if not self._pending:
                raise await self._failed(UpstreamError, f"unreadable stream: {exc}") from None
            # The events read before the bad one go out first; the error comes on the next pull.
            self._broken = f"unreadable stream: {exc}"

    def _take(self, event: StreamEvent | None) -> None:
        if event is None or self._done:
            return
        if event.done:
            self._done = True
        if event.usage is not None:
            self._usage = event.usage
        if event.finish_reason is not None:
            self._finish_reason = event.finish_reason
        text = event.content
        if text:
            if self._ttft_ms is None:
                self._ttft_ms = self.provider._elapsed_ms(self._state)
            self._content.append(text)
        if event.delta:
            for key, value in event.delta.items():
                if key == "tool_calls" and isinstance(value, list):
                    self._tool_calls(value)
                elif key not in ("content", "role") and value is not None:
                    self._message[key] = value
        self._pending.append(event)

    def _tool_calls(self, parts: list[Any]) -> None:
        """Merge streamed tool-call fragments: each names its call by index and adds to its arguments."""
        calls: list[dict[str, Any]] = self._message.setdefault("tool_calls", [])
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            index = part.get("index", len(calls))
            if not isinstance(index, int) or not 0 <= index <= len(calls):
                continue
            if index == len(calls):
                calls.append({"function": {"name": "", "arguments": ""}})
            call = calls[index]
            for key in ("id", "type"):
                if isinstance(part.get(key), str):
                    call[key] = part[key]
            function = part.get("function")
            if isinstance(function, Mapping):
                if isinstance(function.get("name"), str):
                    call["function"]["name"] += function["name"]
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] += function["arguments"]

    async def _end(self) -> None:
        if self._parser.pending.strip():
            try:
                self._take(parse_event(self._parser.pending))
            except WireError as exc:
                raise await self._failed(UpstreamError, f"unreadable stream: {exc}") from None
        if not self._done and self._finish_reason is None:
            raise await self._failed(UpstreamError, "the stream ended before it finished")
        await self._finish(CallStatus.OK)

    async def _failed(self, kind: type[UpstreamError], message: str) -> UpstreamError:
        """The error to raise after closing the stream and recording its failed result."""
        error = self.provider._error(kind, message, self._state, maybe=True, ttft_ms=self._ttft_ms)
        await self._finish(None, error.result)
        return error

    async def _finish(self, status: CallStatus | None, result: CallResult | None = None) -> None:
        if self._result is not None:
            return
        if result is None:
            assert status is not None
            result = self._outcome(status)
        self._result = result
        response, self._response, self._chunks = self._response, None, None
        if response is not None:
            await response.aclose()
            self.provider._slots.release()

    @property
    def usage(self) -> Usage:
        """The usage the provider reported, else an estimate from the request and the answer so
        far (llama.cpp, for one, never sends the usage chunk)."""
        if self._usage is not None:
            return self._usage
        return Usage(
            estimate_prompt_tokens(self.body.get("messages", [])),
            estimate_tokens("".join(self._content)),
            estimated=True,
        )

    def _outcome(self, status: CallStatus) -> CallResult:
        content = "".join(self._content)
        usage = self.usage
        latency_ms = self.provider._elapsed_ms(self._state)
        price = self.provider.price(self._state.model)
        cost = (
            None
            if price is None
            else price.cost_usd(
                usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens
            )
        )
        return CallResult(
            provider=self.provider.name,
            model=self._state.model,
            status=status,
            message={**self._message, "content": content},
            finish_reason=self._finish_reason,
            usage=usage,
            cost_usd=cost,
            price=price,
            latency_ms=latency_ms,
            ttft_ms=self._ttft_ms,
            http_status=self._state.http_status,
            attempts=self._state.count,
            may_have_been_processed=self._state.maybe_processed,
            error="the caller stopped reading" if status is CallStatus.CANCELLED else None,
        )

    async def aclose(self) -> None:
        """Stop: close the upstream response; an unfinished stream's result is `cancelled`."""
        if self._result is None and self._response is not None:
            self._state.maybe_processed = True
            await self._finish(CallStatus.CANCELLED)
