"""`promptops serve`: migrate, sync the prompts folder, refuse unsafe binds, run uvicorn."""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import Any

from promptops.config import Settings, mask_url
from promptops.errors import ConfigError, InvalidPromptFile
from promptops.server.protocol import BoundedHttpToolsProtocol
from promptops.server.runtime import server_ops
from promptops.services.facade import PromptOps

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
    """uvicorn's settings: quiet logs, the header deadline and coalesced writes (protocol.py), and
    the keep-alive limit above."""
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
