"""Helpers for the production tests: `promptops serve` as real subprocesses over one database.

`spawn` starts a server (migrate + sync + uvicorn) and waits for `/healthz` by polling; every server
started through it is stopped when the test ends. `wait_for` polls a condition with a generous
deadline: these tests never assert on durations, only on outcomes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Engine, create_engine

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 90.0  # a deadline for polling, never an assertion on how long startup took
DEADLINE_SECONDS = 120.0

# Small enough that burn-in ends after a hundred decisions; checks every 100 matured outcomes.
# The attribution window is 3.6 seconds, not 0: feedback counts only if it arrives within the
# window, so with 0 every outcome would mature as a zero.
SMALL_POLICY = {
    "min_hours": 0,
    "attribution_window_hours": 0.001,
    "min_samples_per_arm": 50,
    "update_every": 50,
    "min_update_minutes": 0,
    "max_decisions": 10000,
    "max_checks": 100,
    # These tests check that a promotion happens once and production follows it; the
    # guarded rollout after it has its own tests (tests/services/test_rollout.py).
    "holdout_share": 0,
}

GREET = """\
name: greet
description: Greet someone; the experiment learns which greeting gets clicked.
variables:
  who: {type: string, required: true, max_length: 100}
template: "Hello {{ who }}."
variants:
  warm:
    template: "Warmest greetings, {{ who }}!"
experiment:
  metric: clicked
  reward: binary
  arms: [main, warm]
  policy: {%(policy)s}
"""

STEADY = """\
name: steady
description: A fixed 50/50 split that never ends by itself (no automatic promotion).
variables:
  who: {type: string, required: true, max_length: 100}
template: "Dear {{ who }},"
variants:
  casual:
    template: "Hi {{ who }},"
experiment:
  metric: replied
  reward: binary
  strategy: fixed
  weights: [0.5, 0.5]
  arms: [main, casual]
"""

PLAIN = """\
name: plain
description: A production prompt without an experiment; version 2 is a variant.
variables:
  who: {type: string, required: true, max_length: 100}
template: "Plain hello {{ who }}."
variants:
  v2:
    template: "Plain hello again {{ who }}."
"""


def write_prompts(folder: Path, *, policy: dict[str, Any] | None = None) -> Path:
    """A prompts folder: `greet` (Thompson, small policy), `steady` (fixed split), `plain`."""
    folder.mkdir(parents=True, exist_ok=True)
    pol = ", ".join(f"{k}: {v}" for k, v in (policy or SMALL_POLICY).items())
    (folder / "greet.yaml").write_text(GREET % {"policy": pol})
    (folder / "steady.yaml").write_text(STEADY)
    (folder / "plain.yaml").write_text(PLAIN)
    return folder


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(
    check: Callable[[], T], *, what: str, timeout: float = DEADLINE_SECONDS, interval: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.TransportError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Server:
    """One `promptops serve` subprocess."""

    def __init__(
        self,
        *,
        database_url: str,
        prompts_dir: Path,
        log_path: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.database_url = database_url
        self.args = args
        self.prompts_dir = prompts_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> Server:
        """Start the process (appending to its log); wait until /healthz answers 200 if asked."""
        env = {
            **os.environ,
            "PROMPTOPS_DATABASE_URL": self.database_url,
            "PROMPTOPS_PROMPTS_DIR": str(self.prompts_dir),
            "PROMPTOPS_CACHE_REFRESH": "0.2",
            "PROMPTOPS_UPDATE_INTERVAL": "0.2",
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "promptops.cli", "serve", "--port", str(self.port), *self.args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll /healthz until it answers 200; fail early if the process died."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with httpx.Client(timeout=5) as c:
                return c.get(f"{self.url}/healthz").status_code == 200

        poll(ready, what=f"server on port {self.port} to be ready", timeout=STARTUP_SECONDS, interval=0.1)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client bound to this server (closed when the server is stopped)."""
        c = httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)
        with self._lock:
            self._clients.append(c)
        return c

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """`kill -9`: no shutdown hook runs, buffered writes are gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """Close the clients; terminate politely, then kill if it does not go."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def experiment(self, prompt: str) -> dict[str, Any]:
        """The newest experiment of a prompt, as the API shows it."""
        with httpx.Client(base_url=self.url, timeout=30) as c:
            r = c.get("/v1/experiments", params={"prompt": prompt})
        assert r.status_code == 200, r.text
        exps = r.json()["experiments"]
        assert exps, f"no experiment for {prompt}"
        return exps[0]  # type: ignore[no-any-return]

    def audit(self, experiment_id: int) -> list[dict[str, Any]]:
        """Audit entries of one experiment, oldest first."""
        with httpx.Client(base_url=self.url, timeout=30) as c:
            r = c.get("/v1/audit", params={"experiment_id": experiment_id, "limit": 1000})
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["entries"]))

    def log(self) -> str:
        """The server's output so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `promptops serve` processes; all of them are stopped when the test ends."""
    started: list[Server] = []

    def _spawn(
        database_url: str,
        *,
        prompts_dir: Path | None = None,
        port: int | None = None,
        name: str | None = None,
        wait: bool = True,
        args: tuple[str, ...] = (),
    ) -> Server:
        folder = prompts_dir or tmp_path / "prompts"
        if not folder.exists():
            write_prompts(folder)
        server = Server(
            database_url=database_url,
            prompts_dir=folder,
            port=port,
            log_path=tmp_path / f"{name or f'server-{len(started)}'}.log",
            args=args,
        )
        started.append(server)
        return server.start(wait=wait)

    try:
        yield _spawn
    finally:
        for server in started:
            server.stop()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """`wait_for(check, what=...)`: poll until `check()` is truthy, fail after a deadline."""
    return poll


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in the test's folder."""
    return f"sqlite:///{tmp_path / 'promptops.db'}"


@pytest.fixture
def db_engine() -> Iterator[Callable[[str], Engine]]:
    """Open engines on a database URL (for checks behind the API); disposed at the end."""
    engines: list[Engine] = []

    def _open(url: str) -> Engine:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        engine = create_engine(url)
        engines.append(engine)
        return engine

    try:
        yield _open
    finally:
        for engine in engines:
            engine.dispose()
