"""`promptops serve --workers 2`: two forked processes share one port and one database.

Each answer is traced to the worker process that sent it (the server side of its TCP connection,
found in /proc), so the test knows that both workers served and took feedback. Decisions from
both must land, and the experiment must be promoted exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import func, select

from promptops.db.models import DecisionRow

if TYPE_CHECKING:
    from tests.production.conftest import Server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="traces connections to processes through /proc"
)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    """The workers' database: a SQLite file, or a fresh PostgreSQL schema when configured."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def worker_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return sorted(found)


def _start_time(pid: int) -> str | None:
    """When a process started (in clock ticks since boot), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the loopback connection from `client_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return fields[9]
    return None


def answered_by(response: httpx.Response, server_port: int, workers: list[int]) -> int | None:
    """The worker whose socket holds the (still open) connection of a response."""
    stream = response.extensions.get("network_stream")
    client_port = stream.get_extra_info("client_addr")[1] if stream is not None else None
    inode = _socket_inode(server_port, client_port) if client_port is not None else None
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in workers:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


class Traced:
    """Requests on new connections (so the kernel hands them to either worker), each traced to
    the worker that answered it."""

    def __init__(self, server: Server, workers: list[int]) -> None:
        self.server = server
        self.workers = workers
        self.client = httpx.Client(
            base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """The JSON answer (200 asserted) and the worker that sent it."""
        with self.client.stream("POST", path, json=body) as r:
            worker = answered_by(r, self.server.port, self.workers)
            r.read()
        assert r.status_code == 200, r.text
        return r.json(), worker

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def traced(
    database: str, spawn: Callable[..., Server], wait_for: Callable[..., Any]
) -> Iterator[tuple[Server, Traced]]:
    """`promptops serve --workers 2` over the database, and a traced client."""
    server = spawn(database, name="workers", args=("--workers", "2"))
    workers = wait_for(
        lambda: (w := worker_pids(server.pid)) and len(w) == 2 and w, what="two worker processes"
    )
    started = {pid: _start_time(pid) for pid in workers}
    client = Traced(server, workers)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()
        for pid, start in started.items():  # the parent stops its workers; never leave one behind
            if start is not None and _start_time(pid) == start:  # still that process, not a reused id
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_two_workers_serve_and_take_feedback_and_promote_once(
    traced: tuple[Server, Traced],
    database: str,
    db_engine: Callable[[str], Any],
    wait_for: Callable[..., Any],
) -> None:
    server, client = traced
    exp = server.experiment("greet")
    warm = next(arm["version"] for arm in exp["arms"] if arm["variant"] == "warm")
    served_by: dict[int, int] = {}  # worker -> decisions it served
    feedback_by: dict[int, int] = {}  # worker -> feedback it took
    decisions: list[str] = []  # every decision served, the batched production ones included

    def one_round() -> bool:
        out, worker = client.post("/v1/prompts/greet/serve", {"variables": {"who": "w"}})
        decisions.append(out["decision_id"])
        if worker is not None:
            served_by[worker] = served_by.get(worker, 0) + 1
        if out["experiment_id"] == exp["id"]:
            body = {"decision_id": out["decision_id"], "reward": int(out["version"] == warm)}
            answer, worker = client.post("/v1/feedback", body)
            assert answer["status"] == "recorded"
            if worker is not None:
                feedback_by[worker] = feedback_by.get(worker, 0) + 1
        p, _ = client.post("/v1/prompts/plain/serve", {"variables": {"who": "p"}})
        decisions.append(p["decision_id"])
        ended = server.experiment("greet")["status"] != "running"
        return ended and len(served_by) == 2 and len(feedback_by) == 2

    wait_for(
        one_round,
        what="both workers to serve and take feedback until the experiment ends",
        timeout=300,
        interval=0,
    )
    assert set(served_by) == set(feedback_by) == set(client.workers), (served_by, feedback_by)

    final = server.client().get(f"/v1/experiments/{exp['id']}").json()
    assert (final["status"], final["winner"]) == ("completed", warm), final.get("reason")
    entries = server.audit(exp["id"])
    ends = [
        e["action"]
        for e in entries
        if e["action"] in ("experiment.completed", "experiment.inconclusive", "experiment.stopped")
    ]
    assert ends == ["experiment.completed"], entries
    moves = [(e["details"]["label"], e["details"]["to"]) for e in entries if e["action"] == "label.move"]
    assert moves == [("production", warm)], entries

    # Every decision of both workers lands, the batched ones without feedback included.
    engine = db_engine(database)

    def all_stored() -> bool:
        with engine.connect() as conn:
            n = conn.scalar(
                select(func.count()).select_from(DecisionRow).where(DecisionRow.id.in_(decisions))
            )
        return n == len(decisions)

    wait_for(all_stored, what="every decision of both workers to be stored")

    # Both workers now serve the winner as production.
    seen: set[int] = set()

    def serves_winner() -> bool:
        out, worker = client.post("/v1/prompts/greet/serve", {"variables": {"who": "z"}})
        if out["version"] == warm and out["experiment_id"] is None and worker is not None:
            seen.add(worker)
        return seen == set(client.workers)

    wait_for(serves_winner, what="both workers to serve the promoted version", interval=0)
