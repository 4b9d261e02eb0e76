"""Starting the server: the port, the banner, and connection time limits."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from typing import Any

import pytest

from promptops.errors import ConfigError
from promptops.server import metrics as metrics_module
from promptops.server import run
from promptops.server.runtime import server_ops


def test_a_taken_port_is_one_clear_error_and_no_banner(settings, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: "):
            run.run_server(replace(settings, port=port, sync_on_start=False))
    assert "promptops on" not in capsys.readouterr().err


def test_the_banner_comes_after_the_bind_and_masks_the_password(settings, capsys, monkeypatch):
    import uvicorn

    seen: dict[str, Any] = {}

    def fake_run(server: Any, sockets: list[socket.socket]) -> None:
        seen["banner"] = capsys.readouterr().err
        seen["port"] = sockets[0].getsockname()[1]
        seen["protocol"] = server.config.http

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(run, "prepare", lambda s: server_ops(replace(s, database_url=settings.database_url)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shown = replace(
        settings, port=port, sync_on_start=False, database_url="postgresql+psycopg://po:hunter2@db.example/po"
    )
    run.run_server(shown)
    assert seen["port"] == port and seen["protocol"] is run.BoundedHttpToolsProtocol
    assert f"promptops on http://127.0.0.1:{port}" in seen["banner"]
    assert "hunter2" not in seen["banner"] and "po:***@db.example" in seen["banner"]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.written = b""
        self.writes: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        if self.closed:
            raise AssertionError("written after close")
        self.written += bytes(data)
        self.writes.append(bytes(data))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_trickled_headers_do_not_reset_the_deadline():
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async def scenario() -> None:
        config = run.uvicorn_config(app)
        config.load()
        proto = run.BoundedHttpToolsProtocol(
            config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
        )
        proto.connection_made(FakeTransport())
        deadline = proto.timeout_keep_alive_task
        assert deadline is not None
        proto.data_received(b"GET / HT")
        proto.data_received(b"TP/1.1\r\nHo")
        assert proto.timeout_keep_alive_task is deadline and not deadline.cancelled()
        deadline.cancel()

    asyncio.run(scenario())


def bounded_protocol(app: Any) -> Any:
    from uvicorn.server import ServerState

    config = run.uvicorn_config(app)
    config.load()
    return run.BoundedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )


def test_the_head_deadline_ends_with_the_head_and_restarts_with_the_next_request():
    answered = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        answered.set()

    async def scenario() -> None:
        proto = bounded_protocol(app)
        proto.connection_made(FakeTransport())
        first = proto.timeout_keep_alive_task
        proto.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
        # The head is complete: a slow body or a slow answer is not cut by the head deadline.
        assert first.cancelled() and proto.timeout_keep_alive_task is None
        proto.data_received(b"abc")
        await asyncio.wait_for(answered.wait(), 10)
        idle = proto.timeout_keep_alive_task  # uvicorn's keep-alive idle timer
        assert idle is not None and not idle.cancelled()
        proto.data_received(b"GET / HT")  # the next request's first bytes start a new deadline
        second = proto.timeout_keep_alive_task
        assert idle.cancelled() and second is not None and second is not first
        proto.data_received(b"TP/1.1\r\nHo")
        assert proto.timeout_keep_alive_task is second and not second.cancelled()
        proto.connection_lost(None)
        assert second.cancelled()

    asyncio.run(scenario())


def test_a_head_too_large_is_refused_but_a_large_body_is_not():
    bodies: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message["body"], message["more_body"]
        bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        proto = bounded_protocol(app)
        transport = FakeTransport()
        proto.connection_made(transport)
        proto.data_received(b"GET / HTTP/1.1\r\n")
        for _ in range(run.MAX_HEAD_BYTES // 1000 + 1):
            if transport.closed:
                break
            proto.data_received(b"X-Filler: " + b"a" * 988 + b"\r\n")
        assert transport.closed and transport.written.startswith(b"HTTP/1.1 400 ")
        assert run.HEAD_TOO_LARGE.encode() in transport.written

        proto = bounded_protocol(app)
        transport = FakeTransport()
        proto.connection_made(transport)
        size = 4 * run.MAX_HEAD_BYTES
        proto.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 1024):
            proto.data_received(b"b" * 1024)
        for _ in range(1000):
            if transport.written:
                break
            await asyncio.sleep(0.01)
        assert not transport.closed and transport.written.startswith(b"HTTP/1.1 200 ")
        assert bodies == [b"b" * size]

    asyncio.run(scenario())


def test_a_response_leaves_in_one_write():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        proto = bounded_protocol(app)
        transport = FakeTransport()
        proto.connection_made(transport)
        for _ in range(2):  # and again on the kept-alive connection
            before = len(transport.writes)
            proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(1000):
                if len(transport.writes) > before:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)
            (answer,) = transport.writes[before:]
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
        proto.connection_lost(None)

    asyncio.run(scenario())


def test_a_streamed_response_leaves_in_order_turn_by_turn():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)  # as a stream waiting for its upstream
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        proto = bounded_protocol(app)
        transport = FakeTransport()
        proto.connection_made(transport)
        proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(1000):
            if transport.written.endswith(b"0\r\n\r\n"):
                break
            await asyncio.sleep(0.001)
        head, _, body = transport.written.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
        assert body == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n"
        # Each part left in the turn it was sent (the head with the first), none waited for the end.
        assert len(transport.writes) == 4
        proto.connection_lost(None)

    asyncio.run(scenario())


def test_turn_writes_keep_order_and_flow():
    async def scenario() -> None:
        transport = FakeTransport()
        writes = run.TurnWrites(transport, asyncio.get_running_loop())
        writes.write(b"head ")
        writes.write(b"body")
        assert transport.writes == []  # held until the end of this turn
        await asyncio.sleep(0)
        assert transport.writes == [b"head body"]
        writes.write(b"a")
        writes.write(b"b" * run.TURN_WRITE_BYTES)  # a large body goes at once (flow control sees it)
        assert transport.writes[1:] == [b"a" + b"b" * run.TURN_WRITE_BYTES]
        writes.write(b"last")
        writes.close()  # what is held goes before the close
        assert transport.writes[2:] == [b"last"] and transport.closed and writes.is_closing()
        writes.write(b"late")
        await asyncio.sleep(0)  # nothing is written to a closed connection
        assert transport.writes[3:] == []

    asyncio.run(scenario())


def test_a_body_that_never_finishes_gets_408(monkeypatch):
    monkeypatch.setattr(metrics_module, "BODY_SECONDS", 0.01)
    sent: list[dict[str, Any]] = []
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        reached.append(message["type"])

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    mw = metrics_module.TimingMiddleware(app, metrics=metrics_module.Metrics(), max_body=100)
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(mw(scope, never, send))
    assert sent[0]["status"] == 408 and reached == ["http.disconnect"]


def test_receive_within_returns_what_is_there_and_waits_under_the_deadline():
    receive_within = metrics_module.receive_within
    message = {"type": "http.request", "body": b"x", "more_body": False}

    async def ready() -> dict[str, Any]:
        return message

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert await receive_within(ready, loop.time() - 1) is message  # there already: no deadline

        arrived: asyncio.Future[dict[str, Any]] = loop.create_future()

        async def later() -> dict[str, Any]:
            return await arrived

        loop.call_later(0.01, arrived.set_result, message)
        assert await receive_within(later, loop.time() + 30) is message

        cleaned: list[str] = []

        async def never() -> dict[str, Any]:
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append("never")
            raise AssertionError

        with pytest.raises(TimeoutError):
            await receive_within(never, loop.time() + 0.01)
        task = asyncio.ensure_future(receive_within(never, loop.time() + 30))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["never", "never"]  # the waiting receive saw both ends

    asyncio.run(scenario())
