"""A streaming completion on its way to the caller: OpenAI server-sent events, `id` = decision id.

The events come from the cache (an entry replayed as a role chunk, a finish chunk and the usage
chunk when asked for) or from the provider's stream, passed through as they arrive: events that
arrived together leave together. Closing the stream early closes the upstream call (it is recorded
`cancelled`); every stream is recorded with its decision once it ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from promptops.errors import UpstreamError
from promptops.providers import CallResult, ChatRequest
from promptops.services.cache import CacheEntry
from promptops.services.calls import CacheResult
from promptops.services.completions import CompletionRequest, entry_usage
from promptops.services.serving import Decision

if TYPE_CHECKING:
    from promptops.services.gateway import Gateway


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class CompletionStream:
    """A streaming completion on its way to the caller: OpenAI SSE bytes with `id` = decision id."""

    def __init__(
        self,
        gateway: Gateway,
        req: CompletionRequest,
        decision: Decision,
        upstream: ChatRequest | None,  # None for a hit answered without building it
        key: str,
        start: float,
        cache: CacheResult,
        *,
        hit: CacheEntry | None = None,
        chat: Any = None,
        flight: Any = None,
    ) -> None:
        self.gateway = gateway
        self.req = req
        self.decision = decision
        self.upstream = upstream
        self.key = key
        self.start = start
        self.cache = cache
        self._hit = hit
        self._chat = chat
        self._flight = flight
        self._recorded = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._hit_chunks() if self._hit is not None else self._upstream_chunks()

    def replay(self) -> bytes | None:
        """For a cache hit, all its events at once (they are all known: one write to the caller
        instead of one per event); None for a provider's stream. `aclose` records the call."""
        return b"".join(self._hit_events()) if self._hit is not None else None

    async def _hit_chunks(self) -> AsyncIterator[bytes]:
        for event in self._hit_events():
            yield event
        self._finish_hit()

    def _hit_events(self) -> list[bytes]:
        entry = self._hit
        assert entry is not None
        base = {
            "id": self.decision.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": entry.model,
        }
        delta: dict[str, Any] = {k: v for k, v in entry.message.items()}
        delta.setdefault("role", "assistant")
        if isinstance(delta.get("tool_calls"), list):
            # A provider's odd tool call (not an object) is replayed as it came, as its answer was.
            delta["tool_calls"] = [
                {**c, "index": i} if isinstance(c, Mapping) else c for i, c in enumerate(delta["tool_calls"])
            ]
        events = [
            sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
            sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": entry.finish_reason}]}),
        ]
        usage = entry_usage(entry)
        if self.req.include_usage and usage is not None:
            events.append(sse({**base, "choices": [], "usage": usage.as_openai()}))
        events.append(DONE)
        return events

    def _finish_hit(self) -> None:
        if not self._recorded:
            self._recorded = True
            self.gateway.record_call(
                self.decision, self.upstream, self.key, self.start, hit=self._hit, stream=True
            )

    async def _upstream_chunks(self) -> AsyncIterator[bytes]:
        chat = self._chat
        new_id = self.decision.id
        include_usage = self.req.include_usage
        # Events that arrived together leave together: one write to the caller, not one each.
        out: list[bytes] = []
        usage_sent = False
        assert self.upstream is not None
        model = self.upstream.model
        try:
            async for event in chat:
                if event.done:
                    if include_usage and not usage_sent:
                        # The provider sent none (llama.cpp never does): the caller asked for
                        # one, so it gets the usage the call is recorded with (estimated).
                        out.append(self._usage_chunk(new_id, model, chat.usage))
                    out.append(DONE)
                elif not event.usage_only or include_usage:
                    usage_sent = usage_sent or event.usage is not None
                    data = event.data
                    if data is not None and isinstance(data.get("model"), str):
                        model = data["model"]
                    out.append(
                        sse({**data, "id": new_id})
                        if data is not None and data.get("id") != new_id
                        else event.raw
                    )
                if out and not chat.buffered:
                    yield out[0] if len(out) == 1 else b"".join(out)
                    out = []
        except UpstreamError as exc:
            out.append(
                sse({"error": {"message": exc.message, "type": "api_error", "param": None, "code": exc.code}})
            )
            yield b"".join(out)
        finally:
            await self.aclose()

    @staticmethod
    def _usage_chunk(decision_id: str, model: str, usage: Any) -> bytes:
        chunk = {
            "id": decision_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [],
            "usage": usage.as_openai(),
        }
        return sse(chunk)

    async def aclose(self) -> None:
        """End the call: close the upstream (a caller that left cancels it), then record it."""
        if self._recorded:
            return
        if self._hit is not None:
            self._finish_hit()
            return
        self._recorded = True
        chat = self._chat
        try:
            await chat.aclose()
        finally:
            # Also when closing is cancelled (a caller leaving while a shutdown closes the stream):
            # the outcome is known once closing starts, and the flight's followers wait for it.
            result: CallResult = chat.result
            entry = self.gateway.cache_entry(result, self.decision) if result is not None else None
            if self._flight is not None:
                self._flight.done(entry)
            if entry is not None and self.cache is not CacheResult.BYPASS:
                self.gateway.cache.put_soon(self.key, entry)
            if result is not None:
                self.gateway.record_call(
                    self.decision,
                    self.upstream,
                    self.key,
                    self.start,
                    result=result,
                    mode=self.cache,
                    stream=True,
                )
