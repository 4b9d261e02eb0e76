"""The batched writer: a row the database refuses is isolated (the rest are stored and the writer
moves on), while an unreachable database keeps the rows for later; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from promptops.db.models import CallRow, DecisionRow, FeedbackRow
from promptops.errors import InvalidInput, Unavailable
from promptops.services.decisions import DecisionToken
from promptops.services.recorder import FeedbackItem, decision_row
from promptops.services.writer import BatchWriter

PROMPT = """\
name: triage
messages:
  - {role: user, content: "Hello"}
variants:
  terse:
    messages:
      - {role: user, content: "Hi"}
experiment:
  metric: resolved
  reward: binary
  arms: [main, terse]
"""


@pytest.fixture
def writer(ops, prompts_dir: Path):
    (prompts_dir / "triage.yaml").write_text(PROMPT, encoding="utf-8")
    ops.sync()
    w = BatchWriter(ops.serving.recorder, max_batch=50)  # not started: the test flushes
    ops.serving.writer = w
    return w


def _dialect(ops) -> str:
    return str(ops.ctx.engine.dialect.name)


def bad_decisions(ops, clock) -> list[dict[str, Any]]:
    """Decision rows the database refuses: a prompt that does not exist; on PostgreSQL also
    a NUL in the unit id (the services refuse it, so it is injected behind their back)."""
    orphan = DecisionToken(
        prompt_id=999_999, version_id=1, experiment_id=None, arm=None, epoch=None, decided_at=clock()
    )
    rows = [decision_row("d_orphan", orphan)]
    if _dialect(ops) == "postgresql":
        good = ops.serving.codec.verify(ops.serve("triage", {}).decision_id)
        ops.serving.writer._decisions.pop()  # that serve's own row stays out of the test
        rows.append(decision_row("d_nul", good, unit_id="a\x00b"))
    return rows


def stored_ids(ops) -> set[str]:
    with ops.ctx.tx() as s:
        return set(s.scalars(select(DecisionRow.id)))


def test_a_refused_decision_is_dropped_and_the_rest_are_stored(ops, clock, writer):
    good = [ops.serve("triage", {}).decision_id for _ in range(120)]
    bad = bad_decisions(ops, clock)
    for i, row in enumerate(bad):  # in the middle of the first batch and of a later one
        writer._decisions.insert(10 + 60 * i, row)
    writer.flush()
    assert stored_ids(ops) == set(good)
    assert (writer.rejected, writer.pending, writer.failures, writer.healthy) == (len(bad), 0, 0, True)
    exp = ops.experiments.get(1)
    assert sum(a.decisions for a in exp.arms) == 120  # counted once each, nothing lost
    later = ops.serve("triage", {}).decision_id  # the writer has moved on
    writer.flush()
    assert later in stored_ids(ops) and writer.pending == 0


def test_decisions_queued_behind_a_refused_one_survive_shutdown(ops, clock, writer):
    writer.start()
    for row in bad_decisions(ops, clock):
        writer.add_decision(row)
    good = [ops.serve("triage", {}).decision_id for _ in range(30)]
    writer.stop()
    assert stored_ids(ops) == set(good)
    assert writer.pending == 0


def _item(
    ops,
    decision_id: str,
    *,
    metric: str = "resolved",
    reward: float = 1.0,
    token: DecisionToken | None = None,
) -> FeedbackItem:
    item = ops.serving.prepare_feedback(decision_id, reward)
    return FeedbackItem(
        decision_id=decision_id,
        token=token or item.token,
        metric=metric,
        reward=reward,
        received_at=item.received_at,
        counts_for=item.counts_for,
    )


def test_a_refused_feedback_fails_alone(ops, clock, writer):
    ids = [ops.serve("triage", {}).decision_id for _ in range(40)]
    writer.flush()
    orphan = DecisionToken(
        prompt_id=999_999, version_id=1, experiment_id=None, arm=None, epoch=None, decided_at=clock()
    )
    bad = [
        FeedbackItem(
            decision_id="d_orphan",
            token=orphan,
            metric="reward",
            reward=1.0,
            received_at=clock(),
            counts_for=None,
        )
    ]
    if _dialect(ops) == "postgresql":
        bad.append(_item(ops, ids[0], metric="re\x00solved"))
    futures = [writer.submit_feedback(_item(ops, d)) for d in ids[:20]]
    bad_futures = [writer.submit_feedback(b) for b in bad]
    futures += [writer.submit_feedback(_item(ops, d)) for d in ids[20:]]
    writer.flush()
    assert [f.result(timeout=0) for f in futures] == ["recorded"] * 40
    for f in bad_futures:
        assert isinstance(f.exception(timeout=0), InvalidInput)
        assert "NUL" not in str(f.exception()) and "INSERT" not in str(f.exception())
    assert (writer.rejected, writer.failures, writer.healthy) == (len(bad), 0, True)
    with ops.ctx.tx() as s:
        assert set(s.scalars(select(FeedbackRow.decision_id))) == set(ids)
    assert sum(a.feedback for a in ops.experiments.get(1).arms) == 40


def test_a_refused_feedback_fails_alone_for_async_callers(ops, clock, writer):
    did = ops.serve("triage", {}).decision_id
    orphan = DecisionToken(
        prompt_id=999_999, version_id=1, experiment_id=None, arm=None, epoch=None, decided_at=clock()
    )

    async def main() -> list[Any]:
        good = writer.submit_feedback_async(_item(ops, did))
        bad = writer.submit_feedback_async(
            FeedbackItem(
                decision_id="d_orphan",
                token=orphan,
                metric="reward",
                reward=1.0,
                received_at=clock(),
                counts_for=None,
            )
        )
        await asyncio.get_running_loop().run_in_executor(None, writer.flush)
        return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = asyncio.run(main())
    assert good == "recorded" and isinstance(bad, InvalidInput)


def test_an_unreachable_database_keeps_decisions_for_later(ops, clock, writer, monkeypatch):
    good = [ops.serve("triage", {}).decision_id for _ in range(70)]
    record = writer.recorder.record_decisions
    calls = []

    def down(rows: list[dict[str, Any]]) -> int:
        calls.append(len(rows))
        raise Unavailable("database unavailable: connection refused")

    monkeypatch.setattr(writer.recorder, "record_decisions", down)
    fut = writer.submit_feedback(_item(ops, good[0]))
    monkeypatch.setattr(
        writer.recorder,
        "record_feedback",
        lambda items: (_ for _ in ()).throw(Unavailable("database unavailable: connection refused")),
    )
    clock.advance(5)
    writer.flush()
    assert calls == [50]  # not split: the rows are not at fault
    assert isinstance(fut.exception(timeout=0), Unavailable)
    assert (writer.pending, writer.healthy, writer.rejected) == (70, False, 0)
    assert writer.failures == 2 and writer.last_failure_at == clock()
    assert writer.oldest_pending_at is not None and writer.oldest_pending_at < clock()
    writer.flush()
    assert writer.pending == 70 and writer.failures == 3
    monkeypatch.setattr(writer.recorder, "record_decisions", record)
    writer.flush()
    assert stored_ids(ops) == set(good)
    assert (writer.pending, writer.healthy, writer.oldest_pending_at) == (0, True, None)


def test_the_backlog_stays_bounded_while_the_database_is_down(ops, clock, writer, monkeypatch):
    writer.max_pending = 60
    for _ in range(60):
        ops.serve("triage", {})

    def down(rows: list[dict[str, Any]]) -> int:
        for _ in range(30):  # serves go on while the write is attempted
            ops.serve("triage", {})
        raise Unavailable("database unavailable: connection refused")

    monkeypatch.setattr(writer.recorder, "record_decisions", down)
    writer.flush()
    assert writer.pending == 60 and writer.dropped == 30


def call_row(ops, decision_id: str, **changes: Any) -> dict[str, Any]:
    """A gateway call row for a served decision, as the gateway queues it."""
    t = ops.serving.codec.verify(decision_id)
    row = {
        "decision_id": decision_id,
        "prompt_id": t.prompt_id,
        "version_id": t.version_id,
        "experiment_id": t.experiment_id,
        "arm": t.arm,
        "epoch": t.epoch,
        "created_at": t.decided_at,
        "status": "ok",
        "http_status": 200,
        "provider": "fake",
        "model": "m",
        "cache": "bypass",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "tokens_estimated": False,
        "cost_usd": None,
        "input_per_mtok": None,
        "output_per_mtok": None,
        "latency_ms": 20.0,
        "ttft_ms": None,
        "stream": False,
        "error": None,
        "request_key": None,
        "variables": None,
        "output": None,
    }
    return {**row, **changes}


def stored_calls(ops) -> set[str]:
    with ops.ctx.tx() as s:
        return set(s.scalars(select(CallRow.decision_id)))


def test_decisions_and_their_calls_are_stored_in_one_commit(ops, writer):
    ids = [ops.serve("triage", {}).decision_id for _ in range(70)]  # two batches of decisions
    for decision_id in ids[:40]:  # made calls; the other decisions are serves
        writer.add_call(call_row(ops, decision_id))
    commits: list[int] = []

    def count(conn: Any) -> None:
        commits.append(1)

    event.listen(ops.ctx.engine, "commit", count)
    writer.flush()
    event.remove(ops.ctx.engine, "commit", count)
    assert len(commits) == 2  # one per batch of decisions, the calls with the last one
    assert stored_ids(ops) == set(ids) and stored_calls(ops) == set(ids[:40])
    assert writer.pending == 0 and writer.pending_calls == 0
    assert sum(a.calls for a in ops.experiments.get(1).arms) == 40


def test_a_refused_call_is_dropped_and_its_decision_and_the_other_calls_are_stored(ops, writer):
    ids = [ops.serve("triage", {}).decision_id for _ in range(5)]
    for i, decision_id in enumerate(ids):
        writer.add_call(call_row(ops, decision_id, latency_ms=None if i == 2 else 20.0))
    writer.flush()
    assert stored_ids(ops) == set(ids)
    assert stored_calls(ops) == set(ids) - {ids[2]}
    assert (writer.pending, writer.pending_calls, writer.rejected, writer.healthy) == (0, 0, 1, True)


def test_calls_wait_for_their_decisions_while_the_database_is_down(ops, writer, monkeypatch):
    ids = [ops.serve("triage", {}).decision_id for _ in range(3)]
    for decision_id in ids:
        writer.add_call(call_row(ops, decision_id))

    def down(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("database unavailable: connection refused")

    monkeypatch.setattr(writer.recorder.ctx, "tx", down)
    monkeypatch.setattr(writer.recorder.ctx, "conn", down)  # decisions are written on a bare connection
    writer.flush()
    assert (writer.pending, writer.pending_calls, writer.healthy) == (3, 3, False)
    monkeypatch.undo()
    writer.flush()
    assert stored_ids(ops) == set(ids) and stored_calls(ops) == set(ids)
    assert (writer.pending, writer.pending_calls, writer.healthy) == (0, 0, True)


def test_a_flush_from_another_thread_waits_for_the_one_under_way(ops, writer, monkeypatch):
    """Tests (and `stop`) flush while the writer thread may be flushing: the second flush waits
    for the first (two at once could pop a queue another emptied between its check and its pop,
    or store a call before the other committed its decision), and every row is stored once."""
    import threading

    writer.max_batch = 1
    for _ in range(4):
        ops.serve("triage", {})
    errors: list[BaseException] = []
    other: list[threading.Thread] = []
    real = writer.recorder.record_decisions

    def flush_elsewhere() -> None:
        try:
            writer.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def record(rows: list[dict[str, Any]]) -> Any:
        if not other:  # in the middle of the first flush, a second one starts
            other.append(threading.Thread(target=flush_elsewhere))
            other[0].start()
        return real(rows)

    monkeypatch.setattr(writer.recorder, "record_decisions", record)
    writer.flush()
    other[0].join(60)
    assert not other[0].is_alive() and errors == []
    assert len(stored_ids(ops)) == 4 and writer.pending == 0
