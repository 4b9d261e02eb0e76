"""The server's HTTP/1.1 connections: uvicorn's httptools protocol with a deadline on request
headers, and response writes coalesced per event-loop iteration.

httptools (llhttp, in C) parses a request for a fraction of what the pure-Python h11 costs, which
was a sixth of the event loop's time on a gateway call. uvicorn restarts its idle timer on every
byte received, so a client trickling headers could hold a connection for ever: here the headers
of each request must be complete within HEADER_SECONDS of its first byte (or of the connection
opening). uvicorn writes a response's head and its body with two writes, each a system call that
wakes the client; the writes of one loop iteration now leave together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_SECONDS = 10.0
"""A client gets this long to send a request's headers, from connecting or from the first byte
after a kept-alive idle; bodies are bounded by metrics.BODY_SECONDS."""


class CoalescingTransport:
    """A transport whose writes within one event-loop iteration leave in one write: a response's
    head and body (or a stream's head and first event) become one packet for the client."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue data; it is written at the end of this loop iteration."""
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def writelines(self, chunks: Any) -> None:
        """Queue several chunks."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is queued now."""
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Write what is queued, then close."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is queued."""
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent, queued here included."""
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline and coalesced writes."""

    _head_armed = False
    _feeding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Wrap the transport and start the header deadline as the connection opens."""
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; only a complete request head ends the deadline."""
        if not self._head_armed:  # the first bytes of the next request on a kept-alive connection
            self._arm_head_deadline()
        self._feeding = True  # uvicorn cancels its timer on every byte: not this one
        try:
            super().data_received(data)
        finally:
            self._feeding = False

    def on_headers_complete(self) -> None:
        """The head is complete: the deadline is met."""
        self._feeding = False
        self._unset_keepalive_if_required()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """uvicorn's keep-alive idle timer runs until the next request's first byte."""
        super().on_response_complete()
        self._head_armed = False

    def _unset_keepalive_if_required(self) -> None:
        if not self._feeding:
            super()._unset_keepalive_if_required()

    def _arm_head_deadline(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(HEADER_SECONDS, self.timeout_keep_alive_handler)
        self._head_armed = True
