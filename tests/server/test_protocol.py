"""The server's HTTP/1.1 protocol: a deadline on request headers, and the writes of one loop
iteration leaving together."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from promptops.server import protocol, run
from promptops.server.protocol import BoundedHttpToolsProtocol, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def make_protocol(app: Any, loop: asyncio.AbstractEventLoop) -> BoundedHttpToolsProtocol:
    config = run.uvicorn_config(app)
    config.load()
    return BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)


def test_a_response_head_and_body_leave_in_one_write():
    async def scenario() -> RecordingTransport:
        proto = make_protocol(hello, asyncio.get_running_loop())
        transport = RecordingTransport()
        proto.connection_made(transport)
        proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        assert proto.timeout_keep_alive_task is not None  # the keep-alive timer after the answer
        proto.timeout_keep_alive_task.cancel()
        return transport

    transport = asyncio.run(scenario())
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(
        b"\r\n\r\nhello"
    )


def test_a_complete_head_ends_the_deadline_and_the_next_request_starts_one():
    async def scenario() -> None:
        proto = make_protocol(hello, asyncio.get_running_loop())
        proto.connection_made(RecordingTransport())
        opened = proto.timeout_keep_alive_task
        assert opened is not None
        proto.data_received(b"GET / HTTP/1.1\r\nHo")
        assert proto.timeout_keep_alive_task is opened and not opened.cancelled()
        proto.data_received(b"st: x\r\n\r\n")
        assert opened.cancelled()
        for _ in range(20):
            await asyncio.sleep(0)
        idle = proto.timeout_keep_alive_task  # uvicorn's keep-alive timer
        assert idle is not None and idle is not opened
        proto.data_received(b"GE")  # the next request's first bytes
        head = proto.timeout_keep_alive_task
        assert idle.cancelled() and head is not None and head is not idle and not head.cancelled()
        head.cancel()

    asyncio.run(scenario())


def test_writes_of_one_iteration_leave_together_and_close_sends_what_is_held():
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        t = CoalescingTransport(inner, asyncio.get_running_loop())
        t.write(b"a")
        t.write(b"")
        t.writelines([b"b", b"c"])
        assert inner.writes == [] and t.get_write_buffer_size() == 3
        await asyncio.sleep(0)
        t.write(b"d")
        t.close()
        return inner

    inner = asyncio.run(scenario())
    assert inner.writes == [b"abc", b"d"] and inner.closed


def test_headers_that_never_finish_lose_the_connection(monkeypatch):
    monkeypatch.setattr(protocol, "HEADER_SECONDS", 0.3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = uvicorn.Server(run.uvicorn_config(hello))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [s]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60  # generous: a deadline, not a timing assertion
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"hello"):
                    answer += c.recv(1000)
                assert answer.startswith(b"HTTP/1.1 200")
                c.sendall(b"GET / HTTP/1.1\r\nHo")  # and never the rest, only a byte now and then
                c.settimeout(0.1)
                closed = False
                while not closed and time.monotonic() < deadline:
                    try:
                        closed = c.recv(1000) == b""
                    except TimeoutError:
                        try:
                            c.sendall(b"s")
                        except OSError:  # reset by the server
                            closed = True
                    except OSError:
                        closed = True
                assert closed, "the connection stayed open"
        finally:
            server.should_exit = True
            thread.join(30)
