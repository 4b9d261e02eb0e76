"""Two `promptops serve` replicas on one PostgreSQL database, driven at once by many clients.

Every feedback goes twice, concurrently, through different replicas: exactly one of the two is
recorded. Counters, promotion and label moves must come out the same as with a single server.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import func, select

from promptops.db.models import DecisionRow, PromptRow

if TYPE_CHECKING:
    from tests.production.conftest import Server

pytestmark = pytest.mark.postgres

CLIENTS = 8
ROUNDS = 40


@pytest.fixture
def replicas(pg_url: str, spawn: Callable[..., Server]) -> tuple[Server, Server]:
    """Two servers started at the same moment on one fresh PostgreSQL schema."""
    a = spawn(pg_url, name="replica-a", wait=False)
    b = spawn(pg_url, name="replica-b", wait=False)
    a.wait_ready()
    b.wait_ready()
    return a, b


class Clients:
    """Client threads running `target(i)`; a failure in any of them fails the test."""

    def __init__(self, target: Callable[[int], None], n: int = CLIENTS) -> None:
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(target, i)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, target: Callable[[int], None], i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported by the main thread
            self.errors.append(exc)

    def check(self) -> None:
        """Fail if a client failed."""
        if self.errors:
            trace = "".join(traceback.format_exception(self.errors[0]))
            pytest.fail(f"a client failed:\n{trace}")

    def join(self) -> None:
        """Wait for every client, then fail if one failed."""
        for t in self.threads:
            t.join()
        self.check()


def _feedback_twice(first: httpx.Client, second: httpx.Client, body: dict[str, Any]) -> list[str]:
    """Send one feedback through two replicas at the same time; both statuses."""
    answers: list[httpx.Response] = []

    def other() -> None:
        answers.append(second.post("/v1/feedback", json=body))

    t = threading.Thread(target=other)
    t.start()
    answers.append(first.post("/v1/feedback", json=body))
    t.join()
    assert len(answers) == 2, "a feedback request failed without an answer"
    for r in answers:
        assert r.status_code == 200, r.text
    return sorted(r.json()["status"] for r in answers)


def test_totals_are_exact_and_promotion_happens_once(
    replicas: tuple[Server, Server],
    pg_url: str,
    db_engine: Callable[[str], Any],
    wait_for: Callable[..., Any],
) -> None:
    a, b = replicas
    served: Counter[int] = Counter()  # decisions per version of `steady`
    rewards: defaultdict[int, float] = defaultdict(float)
    plain_serves = 0
    pairs: list[list[str]] = []
    lock = threading.Lock()
    exp_id = a.experiment("steady")["id"]

    def client(i: int) -> None:
        nonlocal plain_serves
        clients = (a.client(), b.client())
        for r in range(ROUNDS):
            one, other = clients[(i + r) % 2], clients[(i + r + 1) % 2]
            s = one.post("/v1/prompts/steady/serve", json={"variables": {"who": f"c{i}"}})
            assert s.status_code == 200, s.text
            out = s.json()
            assert out["experiment_id"] == exp_id
            reward = float((i * 7 + r) % 3 == 0)
            statuses = _feedback_twice(one, other, {"decision_id": out["decision_id"], "reward": reward})
            p = other.post("/v1/prompts/plain/serve", json={"variables": {"who": "x"}})
            assert p.status_code == 200, p.text
            with lock:
                served[out["version"]] += 1
                rewards[out["version"]] += reward
                pairs.append(statuses)
                plain_serves += 1

    Clients(client).join()

    assert all(p == ["duplicate", "recorded"] for p in pairs), Counter(map(tuple, pairs))
    # Feedback is durable before its 200 and stores its decision first: no waiting needed.
    for server in (a, b):
        exp = server.client().get(f"/v1/experiments/{exp_id}").json()
        got = {arm["version"]: (arm["decisions"], arm["feedback"], arm["reward_sum"]) for arm in exp["arms"]}
        assert got == {v: (served[v], served[v], rewards[v]) for v in got}, got
    assert sum(served.values()) == CLIENTS * ROUNDS

    # Plain serves are batched; they all arrive.
    engine = db_engine(pg_url)

    def plain_rows() -> bool:
        with engine.connect() as conn:
            pid = conn.scalar(select(PromptRow.id).where(PromptRow.name == "plain"))
            n = conn.scalar(select(func.count()).select_from(DecisionRow).where(DecisionRow.prompt_id == pid))
        assert n <= plain_serves, f"{n} stored, {plain_serves} served"
        return n == plain_serves

    wait_for(plain_rows, what="every production decision to be stored")

    # Concurrent promote calls through both replicas: exactly one wins.
    casual = next(arm["version"] for arm in exp["arms"] if arm["variant"] == "casual")
    barrier = threading.Barrier(CLIENTS)
    answers: list[httpx.Response] = []

    def promote(i: int) -> None:
        c = (a, b)[i % 2].client()
        barrier.wait()
        r = c.post(f"/v1/experiments/{exp_id}/promote", json={"version": casual})
        with lock:
            answers.append(r)

    Clients(promote).join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] + [409] * (CLIENTS - 1), [r.text for r in answers]
    assert all(r.json()["error"]["code"] for r in answers if r.status_code == 409)

    entries = a.audit(exp_id)
    ends = [
        e
        for e in entries
        if e["action"].startswith("experiment.")
        and e["action"] not in ("experiment.create", "experiment.start")
    ]
    assert [e["action"] for e in ends] == ["experiment.completed"], ends
    moves = [e for e in entries if e["action"] == "label.move"]
    assert [(m["details"]["label"], m["details"]["to"]) for m in moves] == [("production", casual)]
    final = a.client().get(f"/v1/experiments/{exp_id}").json()
    assert (final["status"], final["winner"]) == ("completed", casual)

    # Both replicas now serve the winner as production.
    for server in (a, b):
        c = server.client()

        def serves_winner(c: httpx.Client = c) -> bool:
            out = c.post("/v1/prompts/steady/serve", json={"variables": {"who": "z"}}).json()
            return out["version"] == casual and out["experiment_id"] is None

        wait_for(serves_winner, what=f"{server.url} to serve the promoted version")


def test_label_moved_through_one_replica_is_served_by_the_other(
    replicas: tuple[Server, Server], wait_for: Callable[..., Any]
) -> None:
    a, b = replicas
    ca, cb = a.client(), b.client()

    def serves(c: httpx.Client, version: int) -> Callable[[], bool]:
        def check() -> bool:
            r = c.post("/v1/prompts/plain/serve", json={"variables": {"who": "y"}})
            assert r.status_code == 200, r.text
            return r.json()["version"] == version

        return check

    assert serves(cb, 1)()
    r = ca.post("/v1/prompts/plain/labels/production", json={"version": 2})
    assert r.status_code == 200, r.text
    assert serves(ca, 2)()  # the replica that moved it refreshes at once
    wait_for(serves(cb, 2), what="replica B to serve the label moved through replica A")

    r = cb.post("/v1/prompts/plain/labels/production", json={"version": 1})  # rollback
    assert r.status_code == 200, r.text
    wait_for(serves(ca, 1), what="replica A to serve the rollback made through replica B")
    rendered = ca.post("/v1/prompts/plain/render", json={"variables": {"who": "y"}})
    assert rendered.json()["version"] == 1


def test_automatic_promotion_happens_once_with_two_replicas(
    replicas: tuple[Server, Server], wait_for: Callable[..., Any]
) -> None:
    a, b = replicas
    exp = a.experiment("greet")
    warm = next(arm["version"] for arm in exp["arms"] if arm["variant"] == "warm")
    done = threading.Event()

    def client(i: int) -> None:
        clients = (a.client(), b.client())
        r = 0
        while not done.is_set():
            one, other = clients[(i + r) % 2], clients[(i + r + 1) % 2]
            r += 1
            s = one.post("/v1/prompts/greet/serve", json={"variables": {"who": f"c{i}"}})
            assert s.status_code == 200, s.text
            out = s.json()
            if out["experiment_id"] != exp["id"]:
                continue
            f = other.post(
                "/v1/feedback",
                json={"decision_id": out["decision_id"], "reward": int(out["version"] == warm)},
            )
            assert f.status_code == 200, f.text

    load = Clients(client, 4)

    def ended() -> bool:
        load.check()
        return a.experiment("greet")["status"] != "running"

    try:
        wait_for(ended, what="the experiment to end by itself", interval=0.2)
    finally:
        done.set()
        load.join()

    final = a.client().get(f"/v1/experiments/{exp['id']}").json()
    assert (final["status"], final["winner"]) == ("completed", warm), final["reason"]
    entries = b.audit(exp["id"])
    ends = [
        e["action"]
        for e in entries
        if e["action"] in ("experiment.completed", "experiment.inconclusive", "experiment.stopped")
    ]
    assert ends == ["experiment.completed"], entries
    moves = [(e["details"]["label"], e["details"]["to"]) for e in entries if e["action"] == "label.move"]
    assert moves == [("production", warm)], entries
    for server in (a, b):
        c = server.client()

        def serves_winner(c: httpx.Client = c) -> bool:
            out = c.post("/v1/prompts/greet/serve", json={"variables": {"who": "z"}}).json()
            return out["version"] == warm and out["experiment_id"] is None

        wait_for(serves_winner, what=f"{server.url} to serve the promoted version")
