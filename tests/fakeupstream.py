"""A fake OpenAI-compatible server on a real loopback socket, for tests of anything that calls a provider.

It speaks HTTP/1.1 with keep-alive over plain asyncio streams, in a thread of its own, so a test on
any event loop (or none: a FastAPI TestClient) can call it. It answers:

- `POST /v1/chat/completions`: by default the assistant echoes the last user message (`echo: TEXT`),
  with usage; with `"stream": true`, as server-sent events, one chunk per word, a final usage chunk
  when `stream_options.include_usage` is set, then `data: [DONE]`.
- `POST /v1/embeddings`: deterministic 16-dimensional vectors from the words of each input (texts
  that share words point the same way), with usage.
- `GET /v1/models`.

How it answers is a `Reply`. `fake.reply` is the default; `fake.enqueue(r1, r2, ...)` sets the
next answers, one per request, before the default applies again. A request's model name can also
pick a reply registered with `fake.models["name"] = Reply(...)`, so a prompt file can choose its
failure. Every request is recorded in `fake.requests` (`fake.count` is their number).

    with FakeUpstream() as fake:                   # or the `fake_upstream` fixture
        fake.enqueue(Reply(status=429, headers={"Retry-After": "1"}), Reply())
        ... call f"{fake.base_url}/chat/completions" ...
        assert fake.count == 2
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request."""

    status: int = 200
    content: str | None = None  # the assistant's text; None echoes the last user message
    latency: float = 0.0  # seconds before the status line (real waiting: keep it small)
    usage: bool = True  # non-stream: include usage (streams follow stream_options.include_usage)
    stream_usage: bool = True  # False: never send the usage chunk, as llama.cpp does
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None  # a raw body instead of the normal one (malformed JSON, an error...)
    error: str | None = None  # for status >= 400 without `body`: the OpenAI error message
    break_after: int | None = None  # streams: drop the connection after this many chunks
    stall_after: int | None = None  # streams: after this many chunks, wait for the client to leave
    hang: bool = False  # never answer; the connection stays open until the client gives up
    huge: int | None = None  # bytes of a (never-ending JSON) body, sent without waiting to be read
    length_header: bool = True  # huge: False sends no Content-Length, the body ends when it closes
    finish_reason: str = "stop"
    events: tuple[bytes, ...] | None = None  # streams: these raw SSE events instead of the normal ones


@dataclass(frozen=True)
class Received:
    """One request the fake received."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def _words(text: str) -> list[str]:
    return [w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split() if w]


def embedding(text: str, dimensions: int = 16) -> list[float]:
    """The fake's embedding of a text: hashed word counts, normalised (shared words, close vectors)."""
    vector = [0.0] * dimensions
    for word in _words(text):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dimensions] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _tokens(text: str) -> int:
    return max(1, len(_words(text)))


class FakeUpstream:
    """The fake server: start it (or use it as a context manager), then point a provider at base_url."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply or Reply()
        self.models: dict[str, Reply] = {}
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests handled at once
        self.disconnects = 0  # connections the client closed before the answer was complete
        self.connections = 0  # TCP connections accepted (keep-alive reuses them)
        self.left = threading.Event()  # set whenever a client leaves an unfinished answer
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in /v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        """How many requests arrived."""
        return len(self.requests)

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> FakeUpstream:
        """Listen on a free loopback port in a background thread."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(60)
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _pick(self, body: Any) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        model = body.get("model") if isinstance(body, dict) else None
        return self.models.get(model, self.reply) if isinstance(model, str) else self.reply

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        self.requests.append(Received(method, path, headers, body))
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = None
        reply = self._pick(parsed)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(reader, writer, method, path, parsed, reply)
        finally:
            self.in_flight -= 1

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: Any,
        reply: Reply,
    ) -> bool:
        if reply.latency:
            await asyncio.sleep(reply.latency)
        if reply.hang:
            await self._wait_for_leave(reader)
            return False
        if reply.huge is not None:
            return await self._huge(writer, reply)
        if reply.body is not None or reply.status >= 400:
            raw = (
                reply.body
                if reply.body is not None
                else json.dumps(
                    {
                        "error": {
                            "message": reply.error or f"fake error {reply.status}",
                            "type": "fake",
                            "param": None,
                            "code": None,
                        }
                    }
                ).encode()
            )
            await self._send(writer, reply.status, raw, reply.headers)
            return True
        if path.endswith("/models") and method == "GET":
            data = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
            await self._send(writer, 200, json.dumps(data).encode(), reply.headers)
            return True
        if path.endswith("/embeddings"):
            return await self._embeddings(writer, body, reply)
        if not path.endswith("/chat/completions") or not isinstance(body, dict):
            await self._send(
                writer,
                404 if isinstance(body, dict) else 400,
                b'{"error": {"message": "not found or not JSON"}}',
                {},
            )
            return True
        messages = body.get("messages") or []
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        last_user = next(
            (
                str(m.get("content", ""))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        content = reply.content if reply.content is not None else f"echo: {last_user}"
        usage = {
            "prompt_tokens": _tokens(prompt),
            "completion_tokens": _tokens(content),
            "total_tokens": _tokens(prompt) + _tokens(content),
        }
        model = str(body.get("model", "fake-model"))
        if body.get("stream"):
            options = body.get("stream_options") or {}
            with_usage = reply.stream_usage and bool(options.get("include_usage"))
            return await self._stream(reader, writer, reply, model, content, usage if with_usage else None)
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage:
            answer["usage"] = usage
        await self._send(writer, 200, json.dumps(answer).encode(), reply.headers)
        return True

    async def _embeddings(self, writer: asyncio.StreamWriter, body: Any, reply: Reply) -> bool:
        inputs = body.get("input") if isinstance(body, dict) else None
        texts = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
        data = {
            "object": "list",
            "model": body.get("model") if isinstance(body, dict) else None,
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding(str(t))}
                for i, t in enumerate(texts)
            ],
        }
        if reply.usage:
            tokens = sum(_tokens(str(t)) for t in texts)
            data["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        await self._send(writer, 200, json.dumps(data).encode(), reply.headers)
        return True

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, headers: Mapping[str, str]
    ) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
            + body
        )
        await writer.drain()

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reply: Reply,
        model: str,
        content: str,
        usage: dict[str, int] | None,
    ) -> bool:
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {reply.status} Fake\r\nContent-Type: text/event-stream\r\n"
            f"Transfer-Encoding: chunked\r\n{extra}\r\n".encode()
        )
        events = (
            list(reply.events) if reply.events is not None else self._events(reply, model, content, usage)
        )
        for sent, event in enumerate(events):
            if reply.break_after is not None and sent >= reply.break_after:
                writer.transport.abort()  # mid-body: the client sees an incomplete chunked answer
                return False
            if reply.stall_after is not None and sent >= reply.stall_after:
                await self._wait_for_leave(reader)
                return False
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    def _events(reply: Reply, model: str, content: str, usage: dict[str, int] | None) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None, **more: Any) -> bytes:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **more,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        words = content.split(" ")
        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(words)]
        events.append(chunk({}, reply.finish_reason))
        if usage is not None:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            events.append(b"data: " + json.dumps(data).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    async def _wait_for_leave(self, reader: asyncio.StreamReader) -> None:
        await reader.read()  # returns when the client closes the connection
        self._left()

    def _left(self) -> None:
        self.disconnects += 1
        self.left.set()

    async def _huge(self, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        size = reply.huge or 0
        length = f"Content-Length: {size}" if reply.length_header else "Connection: close"
        writer.write(f"HTTP/1.1 200 Fake\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode())
        piece = b'{"pad": "' + b"x" * 65_536
        sent = 0
        while sent < size and not writer.is_closing():
            part = piece[: size - sent]
            writer.write(part)
            sent += len(part)
            try:
                await writer.drain()
            except ConnectionError:
                self._left()
                return False
        return reply.length_header


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A running FakeUpstream, stopped after the test."""
    with FakeUpstream() as fake:
        yield fake
