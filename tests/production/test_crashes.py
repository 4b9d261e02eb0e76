"""`kill -9` of a server under feedback load, on SQLite and on PostgreSQL.

After a restart on the same database: every acknowledged feedback is stored and a resend is a
duplicate; counters agree with the raw rows (nothing half-written); epochs and promotion go on.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from promptops.db.models import (
    ArmEpochRow,
    ArmRow,
    DecisionRow,
    EpochRow,
    ExperimentRow,
    FeedbackRow,
    LabelRow,
)

if TYPE_CHECKING:
    from tests.production.conftest import Server

CLIENTS = 6


def check_consistent(engine: Engine) -> None:
    """Every stored counter agrees with the raw rows it summarises (read in one snapshot, since
    the restarted server keeps updating while we look)."""
    conn_ctx = engine.connect()
    if engine.dialect.name == "postgresql":
        conn_ctx = conn_ctx.execution_options(isolation_level="REPEATABLE READ")
    with conn_ctx as conn, conn.begin():
        running: Counter[int] = Counter()
        for exp in conn.execute(select(ExperimentRow)).all():
            where = (DecisionRow.experiment_id == exp.id,)
            assert exp.status in (
                "draft",
                "running",
                "holdout",
                "completed",
                "inconclusive",
                "stopped",
                "rolled_back",
            )
            if exp.status == "running":
                running[exp.prompt_id] += 1
                assert exp.running_prompt_id == exp.prompt_id, exp
            else:
                assert exp.running_prompt_id is None, exp
            if exp.status == "completed" and exp.winner_arm is not None:
                winner = conn.scalar(
                    select(ArmRow.version_id).where(
                        ArmRow.experiment_id == exp.id, ArmRow.idx == exp.winner_arm
                    )
                )
                production = conn.scalar(
                    select(LabelRow.version_id).where(
                        LabelRow.prompt_id == exp.prompt_id, LabelRow.name == "production"
                    )
                )
                assert production == winner, f"experiment {exp.id} won but production differs"
            for arm in conn.execute(select(ArmRow).where(ArmRow.experiment_id == exp.id)).all():
                decisions = conn.scalar(
                    select(func.count()).select_from(DecisionRow).where(*where, DecisionRow.arm == arm.idx)
                )
                fb, total = conn.execute(
                    select(func.count(FeedbackRow.id), func.coalesce(func.sum(FeedbackRow.reward), 0.0))
                    .join(DecisionRow, DecisionRow.id == FeedbackRow.decision_id)
                    .where(*where, DecisionRow.arm == arm.idx, FeedbackRow.metric == exp.metric)
                ).one()
                assert (arm.decisions, arm.feedback, arm.reward_sum) == (decisions, fb, float(total)), (
                    f"experiment {exp.id} arm {arm.idx}"
                )
            epochs = list(
                conn.scalars(
                    select(EpochRow.idx).where(EpochRow.experiment_id == exp.id).order_by(EpochRow.idx)
                )
            )
            if exp.status != "draft":
                assert epochs == list(range(exp.epoch + 1)), (exp.epoch, epochs)
            # `assigned` counts new units at serve time (for the sample-ratio check), refreshed
            # when an epoch closes, so it is bounded by the stored decisions rather than equal to
            # the matured ones; the matured total must equal the decisions counted in.
            assigned = conn.scalar(
                select(func.coalesce(func.sum(ArmEpochRow.assigned), 0)).where(
                    ArmEpochRow.experiment_id == exp.id
                )
            )
            counted = conn.scalar(
                select(func.count()).select_from(DecisionRow).where(*where, DecisionRow.counted_in > 0)
            )
            stored = conn.scalar(select(func.count()).select_from(DecisionRow).where(*where))
            assert exp.matured_total == counted, (exp.id, exp.matured_total, counted)
            assert assigned <= stored, (exp.id, assigned, stored)
        assert all(n == 1 for n in running.values()), running


def test_kill_9_under_feedback_load_loses_nothing_acknowledged(
    database_url: str,
    spawn: Callable[..., Server],
    db_engine: Callable[[str], Engine],
    wait_for: Callable[..., Any],
) -> None:
    first = spawn(database_url, name="before-crash")
    exp = first.experiment("greet")
    warm = next(a["version"] for a in exp["arms"] if a["variant"] == "warm")
    acked: dict[str, float] = {}
    unacked: dict[str, float] = {}
    per_arm: Counter[int] = Counter()
    lock = threading.Lock()
    killed = threading.Event()
    errors: list[BaseException] = []

    def client(i: int) -> None:
        c = first.client(timeout=10)
        while True:
            try:
                s = c.post("/v1/prompts/greet/serve", json={"variables": {"who": f"c{i}"}})
            except httpx.TransportError:
                if killed.is_set():
                    return
                raise
            assert s.status_code == 200, s.text
            out = s.json()
            with lock:  # both arms get the same 0, 1, 0, 1 ... rewards: no winner before the crash
                per_arm[out["version"]] += 1
                reward = float(per_arm[out["version"]] % 2)
            try:
                f = c.post("/v1/feedback", json={"decision_id": out["decision_id"], "reward": reward})
            except httpx.TransportError:
                if not killed.is_set():
                    raise
                unacked[out["decision_id"]] = reward
                return
            assert f.status_code == 200, f.text
            assert f.json()["status"] == "recorded", f.text
            acked[out["decision_id"]] = reward

    def run(i: int) -> None:
        try:
            client(i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        # Kill once epochs are turning over and plenty of feedback has been acknowledged.
        def built_up() -> bool:
            if errors:
                pytest.fail(f"a client failed before the crash: {errors[0]!r}")
            return len(acked) >= 300 and first.experiment("greet")["epoch"] >= 2

        wait_for(built_up, what="load to build up", interval=0.1)
    finally:
        killed.set()
        first.kill()
        for t in threads:
            t.join()
    assert not errors, errors
    acknowledged = dict(acked)

    second = spawn(database_url, port=first.port, name="after-crash")
    engine = db_engine(database_url)
    check_consistent(engine)

    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(FeedbackRow.decision_id, FeedbackRow.reward).where(
                    FeedbackRow.decision_id.in_(list(acknowledged))
                )
            ).all()
        )
    assert stored == acknowledged
    c = second.client()
    for did, reward in acknowledged.items():
        r = c.post("/v1/feedback", json={"decision_id": did, "reward": reward})
        assert (r.status_code, r.json().get("status")) == (200, "duplicate"), r.text
    for did, reward in unacked.items():  # cut off mid-request: stored or not, a resend is safe
        r = c.post("/v1/feedback", json={"decision_id": did, "reward": reward})
        assert r.status_code == 200 and r.json()["status"] in ("recorded", "duplicate"), r.text

    resumed = second.experiment("greet")
    assert (resumed["id"], resumed["status"]) == (exp["id"], "running"), resumed
    epoch_at_restart = resumed["epoch"]

    # Epoch and promotion work resume: now the warm greeting always wins.
    def drive() -> bool:
        for _ in range(20):
            out = c.post("/v1/prompts/greet/serve", json={"variables": {"who": "x"}}).json()
            if out["experiment_id"] is None:
                return True
            f = c.post(
                "/v1/feedback",
                json={"decision_id": out["decision_id"], "reward": int(out["version"] == warm)},
            )
            assert f.status_code == 200, f.text
        return second.experiment("greet")["status"] != "running"

    wait_for(drive, what="the experiment to end after the restart", interval=0)
    final = second.client().get(f"/v1/experiments/{exp['id']}").json()
    assert (final["status"], final["winner"]) == ("completed", warm), final["reason"]
    assert final["epoch"] >= epoch_at_restart
    ends = [
        (e["action"], e["actor"])
        for e in second.audit(exp["id"])
        if e["action"] in ("experiment.completed", "experiment.inconclusive", "experiment.stopped")
    ]
    assert ends == [("experiment.completed", "promptops")]  # by the epoch update, once
    check_consistent(engine)
