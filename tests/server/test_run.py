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
from promptops.server.protocol import BoundedHttpToolsProtocol
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
    assert seen["port"] == port and seen["protocol"] is BoundedHttpToolsProtocol
    assert f"promptops on http://127.0.0.1:{port}" in seen["banner"]
    assert "hunter2" not in seen["banner"] and "po:***@db.example" in seen["banner"]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        pass


def test_trickled_headers_do_not_reset_the_deadline():
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async def scenario() -> None:
        config = run.uvicorn_config(app)
        config.load()
        proto = BoundedHttpToolsProtocol(
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
