"""PostgreSQL stopped under a running server, then started again.

The test runs its own throwaway cluster (`initdb` + `pg_ctl` in a temporary folder, on a free port),
never the machine's shared one. While the database is down, production prompts are still served
from the cache, feedback is refused with 503 (never acknowledged, so nothing acknowledged can be
lost) and `/healthz` reports the outage; when the database returns, the server recovers by itself.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, func, select

from promptops.db.models import DecisionRow, FeedbackRow

if TYPE_CHECKING:
    from tests.production.conftest import Server

pytestmark = pytest.mark.postgres

OUTAGE_SECONDS = 3.0  # how long traffic runs against the stopped database (not an assertion)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder (run as `postgres` when root)."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="promptops-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0  # PostgreSQL refuses to run as root
        if self.as_root:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.skip("running as root and there is no postgres user to run initdb")
            os.chown(self.root, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the cluster's `postgres` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / tool), *args]
        if not self.as_root:
            return cmd
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", "postgres", "--", *cmd]
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            self._command(tool, *args), cwd=self.root, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{tool} failed:\n{done.stdout}\n{done.stderr}"

    def init(self) -> None:
        """Create the cluster (trust auth, superuser `postgres`)."""
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs and delete the folder."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                self._command("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                cwd=self.root,
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A running throwaway cluster (skipped when initdb is not installed)."""
    initdb = _pg_bin("initdb")
    if initdb is None or _pg_bin("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl not found")
    c = Cluster(Path(initdb).parent, _free_port())
    try:
        c.init()
        c.start()
        yield c
    finally:
        c.destroy()


def test_database_outage_is_survived_and_nothing_acknowledged_is_lost(
    cluster: Cluster,
    spawn: Callable[..., Server],
    db_engine: Callable[[str], Engine],
    wait_for: Callable[..., Any],
) -> None:
    server = spawn(cluster.url)
    c = server.client(timeout=30)
    who = {"variables": {"who": "x"}}
    served = 0

    def serve(name: str) -> dict[str, Any]:
        nonlocal served
        r = c.post(f"/v1/prompts/{name}/serve", json=who)
        assert r.status_code == 200, r.text
        served += 1
        return r.json()  # type: ignore[no-any-return]

    def feedback(decision_id: str) -> Any:
        return c.post("/v1/feedback", json={"decision_id": decision_id, "reward": 1})

    before = [serve("greet")["decision_id"] for _ in range(5)]
    acked = before[:3]
    for did in acked:
        assert feedback(did).json()["status"] == "recorded"

    cluster.stop()

    def health_down() -> bool:
        h = c.get("/healthz")
        return h.status_code == 503 and h.json()["database"] == "unreachable"

    wait_for(health_down, what="/healthz to report the outage")
    assert c.get("/healthz").json()["status"] == "degraded"

    # For a few seconds of traffic: production and running experiments are served from the
    # cache; feedback is refused, never acknowledged.
    refused = before[3:]
    for did in refused:
        r = feedback(did)
        assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable"), r.text
    end = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < end:
        p = serve("plain")
        assert (p["version"], p["experiment_id"]) == (1, None), p
        d = serve("greet")
        assert d["experiment_id"] is not None, d
        refused.append(d["decision_id"])
        r = feedback(d["decision_id"])
        assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable"), r.text
        rendered = c.post("/v1/prompts/plain/render", json=who)
        assert (rendered.status_code, rendered.json()["version"]) == (200, 1), rendered.text
    # Reads that need the database answer 503, not 500.
    r = c.get("/v1/prompts")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable"), r.text

    cluster.start()
    wait_for(lambda: c.get("/healthz").status_code == 200, what="/healthz to recover by itself")

    # Decisions served during the outage were buffered and are all written now.
    engine = db_engine(cluster.url)

    def all_stored() -> bool:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(DecisionRow)) == served

    wait_for(all_stored, what="every served decision to be stored")
    # Nothing refused was stored behind the client's back; everything acknowledged was.
    for did in acked:
        assert feedback(did).json()["status"] == "duplicate"
    for did in refused:
        r = feedback(did)
        assert (r.status_code, r.json()["status"]) == (200, "recorded"), r.text
    with engine.connect() as conn:
        stored = set(conn.scalars(select(FeedbackRow.decision_id)))
    assert stored == set(acked) | set(refused)
    health = c.get("/healthz").json()
    assert (health["status"], health["dropped_decisions"]) == ("ok", 0), health

    # The background refresh is back too: a label moved by another process reaches this server.
    moved = subprocess.run(
        [sys.executable, "-m", "promptops.cli", "label", "plain", "2", "production"],
        env={**os.environ, "PROMPTOPS_DATABASE_URL": cluster.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert moved.returncode == 0, moved.stderr
    wait_for(lambda: serve("plain")["version"] == 2, what="the moved label to be served")
