"""Retention removes raw rows of long-ended experiments; their figures stay readable."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from sqlalchemy import func, select

from promptops.db.models import DecisionRow, FeedbackRow
from promptops.errors import InvalidInput
from tests.samples import triage

PROMPT = triage("{min_hours: 0, attribution_window_hours: 0.001, min_update_minutes: 0}")


def count(ops, table) -> int:
    with ops.ctx.tx() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_gc_keeps_statistics_and_removes_raw_rows(ops, prompts_dir, clock):
    (prompts_dir / "triage.yaml").write_text(PROMPT)
    ops.sync()
    for i in range(50):
        d = ops.serve("triage", {"message": "x"})
        ops.feedback(d.decision_id, i % 2)
        clock.advance(1)
    ops.tick()
    before = ops.experiments.get(1)
    ops.experiments.stop(1, actor="t")
    assert ops.retention.gc(older_than_days=1).decisions == 0  # ended too recently
    clock.advance(hours=49)
    dry = ops.retention.gc(older_than_days=1, dry_run=True)
    assert (dry.decisions, dry.feedback) == (50, 50)
    assert count(ops, DecisionRow) == 50
    done = ops.retention.gc(older_than_days=1)
    assert (done.decisions, done.feedback) == (50, 50)
    assert count(ops, DecisionRow) == 0 and count(ops, FeedbackRow) == 0
    after = ops.experiments.get(1)
    strip = ("status", "ended_at", "end_reason", "reason")
    assert [(a.decisions, a.feedback, a.n, a.mean) for a in after.arms] == [
        (a.decisions, a.feedback, a.n, a.mean) for a in before.arms
    ]
    assert {k: v for k, v in asdict(after).items() if k not in strip and k != "arms"}.keys()
    assert ops.experiments.history(1)


def test_gc_spares_running_experiments(ops, prompts_dir, clock):
    (prompts_dir / "triage.yaml").write_text(PROMPT)
    ops.sync()
    ops.serve("triage", {"message": "x"})
    clock.advance(hours=24 * 30)
    assert ops.retention.gc(older_than_days=0).decisions == 0
    assert count(ops, DecisionRow) == 1


def test_a_replayed_feedback_after_gc_is_not_counted_again(ops, prompts_dir, clock):
    from promptops.errors import DecisionNotFound

    (prompts_dir / "triage.yaml").write_text(PROMPT)
    ops.sync()
    d = ops.serve("triage", {"message": "x"})
    assert ops.feedback(d.decision_id, 1) == "recorded"
    ops.experiments.stop(1, actor="t")
    clock.advance(hours=49)
    ops.retention.gc(older_than_days=1)
    ops.serving.live.refresh()
    before = ops.experiments.get(1).arms
    try:
        ops.feedback(d.decision_id, 1)
        raise AssertionError("a removed decision took feedback again")
    except DecisionNotFound:
        pass
    assert ops.experiments.get(1).arms == before


@pytest.mark.parametrize("days", [-1.0, float("nan"), float("inf"), float("-inf")])
def test_gc_refuses_a_negative_or_non_finite_age(ops, days):
    with pytest.raises(InvalidInput, match="older-than must be a finite number of days"):
        ops.retention.gc(older_than_days=days)
