"""`promptops serve`: migrate, sync the prompts folder, refuse unsafe binds, run uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from promptops.config import Settings, mask_url
from promptops.errors import ConfigError, InvalidPromptFile
from promptops.server.runtime import server_ops
from promptops.services.facade import PromptOps

# A client gets this long to send a request's headers, from connecting or from the first byte
# after a kept-alive idle; bodies are bounded by metrics.BODY_SECONDS.
HEADER_SECONDS = 10.0
# The most a request's line and headers may take (h11, uvicorn's other parser, allows 16 KiB).
# Counted per read from the read after the head's first byte, so a head still incomplete past
# this is refused, and what is buffered stays under this plus one read.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = "Request head too large."
# What a response may hold back to write in one go at the end of an event loop turn (TurnWrites).
TURN_WRITE_BYTES = 64 * 1024
# How long an idle kept-alive connection stays open (uvicorn's default).
KEEP_ALIVE_SECONDS = 5


def prepare(settings: Settings) -> PromptOps:
    """Migrate and sync; raise ConfigError for a public bind without any API key."""
    ops = server_ops(settings)
    if settings.sync_on_start:
        if settings.prompts_dir.is_dir():
            try:
                report = ops.sync([settings.prompts_dir], actor="serve")
            except InvalidPromptFile as exc:
                # A bad file must not take serving down: nothing from it is written, and the
                # registry keeps serving what it had; `promptops validate` shows the same lines.
                for problem in exc.problems:
                    print(str(problem), file=sys.stderr)
                print(
                    "sync skipped: fix the files above and run `promptops sync`; serving the "
                    "registry as it is",
                    file=sys.stderr,
                )
            else:
                for line in report.changes:
                    print(f"sync: {line}", file=sys.stderr)
        else:
            print(f"note: prompts folder {settings.prompts_dir} not found; nothing synced", file=sys.stderr)
    if not settings.is_loopback and not ops.keys.any():
        raise ConfigError(
            f"refusing to serve on {settings.host} without an API key; create one with "
            "`promptops keys create --role admin` or bind to 127.0.0.1"
        )
    return ops


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap on request heads: uvicorn
    stops its idle timer at the first byte of a request, so a client trickling headers held a
    connection for ever, and llhttp buffers a head of any size.

    The deadline runs from the connection's opening, or from the first byte of the next request
    on a kept-alive connection, until the head is complete; bodies are bounded by
    metrics.BODY_SECONDS. (httptools rather than h11: h11 parses in Python, a third of a serve's
    CPU time under bench/http.py.)"""

    _head_armed = False
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline as the connection opens."""
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        """Feed llhttp; refuse a head that grows past MAX_HEAD_BYTES before it is complete."""
        if self._head_armed:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_armed and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self.send_400_response(HEAD_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the head deadline with the connection."""
        self._head_armed = False
        super()._unset_keepalive_if_required()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """The first byte of a request: its head must be complete within HEADER_SECONDS."""
        if not self._head_armed:
            self._arm_head_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """The head is complete: the deadline ends (uvicorn's own timers take over), and the
        request's response is written through `TurnWrites`."""
        self._head_armed = False
        self._unset_keepalive_if_required()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:
            self.cycle.transport = TurnWrites(self.transport, self.loop)  # type: ignore[assignment]

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this on every byte received; the head deadline stays until the head ends.
        if not self._head_armed:
            super()._unset_keepalive_if_required()

    def _arm_head_deadline(self) -> None:
        super()._unset_keepalive_if_required()  # the idle timer of a kept-alive connection
        self.timeout_keep_alive_task = self.loop.call_later(HEADER_SECONDS, self.timeout_keep_alive_handler)
        self._head_armed = True
        self._head_bytes = 0


class TurnWrites:
    """A response's way to its connection: what it writes in one turn of the event loop leaves in
    one write at the end of that turn (or at once past `TURN_WRITE_BYTES`, so that the transport's
    flow control still sees a large body). uvicorn writes a response's head and its body
    separately: two system calls, and on loopback two segments whose delivery the sender's CPU
    pays (about a tenth of the server's CPU per serve under bench/http.py). Order is kept:
    everything of the response goes through here, and the connection's next request is read in a
    later turn."""

    __slots__ = ("_transport", "_loop", "_held", "_size")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        """Hold `data` until the end of this turn."""
        if self._held is None:
            self._held = [data]
            self._size = len(data)
            self._loop.call_soon(self._flush)
        else:
            self._held.append(data)
            self._size += len(data)
        if self._size > TURN_WRITE_BYTES:
            self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        """Whether the connection is closing."""
        return self._transport.is_closing()

    def close(self) -> None:
        """Write what is held, then close the connection."""
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def bind(settings: Settings) -> socket.socket:
    """A listening socket on the configured address, or ConfigError in one line (port taken)."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any) -> Any:
    """uvicorn's settings: quiet logs and the connection time limits above."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        http=BoundedHttpToolsProtocol,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


def run_server(settings: Settings, *, workers: int = 1) -> None:
    """Serve until interrupted; the banner is printed once the port is ours.

    With `workers` > 1 the socket is bound once and shared by that many forked processes, each
    with its own runtime (cache, writer, background loop); epoch updates and promotions stay
    exactly-once because they are claimed in the database. On SQLite every process writes to one
    file, one writer at a time: more workers add CPU for serving, not write throughput.
    """
    import uvicorn

    from promptops.server.app import create_app

    sock = bind(settings)
    try:
        ops = prepare(settings)
        if workers > 1:
            ops.close()  # each worker opens its own connections after the fork
            print(
                f"promptops on http://{settings.host}:{settings.port}  ({workers} workers; "
                f"database {mask_url(settings.database_url)})",
                file=sys.stderr,
            )
            _run_workers(settings, sock, workers)
            return
        app = create_app(settings, ops=ops)
        auth = "off (no API key; loopback only)" if app.state.runtime.auth_off else "on"
        print(
            f"promptops on http://{settings.host}:{settings.port}  (dashboard /, API docs /docs;"
            f" auth {auth}; database {mask_url(settings.database_url)})",
            file=sys.stderr,
        )
        uvicorn.Server(uvicorn_config(app)).run(sockets=[sock])
    finally:
        sock.close()


def _run_workers(settings: Settings, sock: Any, workers: int) -> None:
    """Fork the workers over the shared socket; stop them all when one is interrupted."""
    import os
    import signal

    import uvicorn

    from promptops.server.app import create_app

    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker
            code = 0
            try:
                uvicorn.Server(uvicorn_config(create_app(settings))).run(sockets=[sock])
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def stop(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
