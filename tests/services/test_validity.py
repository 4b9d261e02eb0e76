"""Feedback-validity counts are folded in at each update, never recounted over the decision log,
and stay equal to the recount: random traffic with on-time, late, missing and repeated feedback,
decisions the writer stores late, and updates at random moments."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import case, func, select

from promptops import stats
from promptops.db.models import DecisionRow, ExperimentRow, FeedbackRow
from promptops.domain import parse_policy
from promptops.services import validity
from tests.samples import triage
from tests.services.test_experiments import setup

POLICY = (
    "{min_hours: 0, min_samples_per_arm: 100000, update_every: 300, min_update_minutes: 0, "
    "attribution_window_hours: 0.25, max_decisions: 1000000, holdout_share: 0}"
)


def recount(s: Any, exp: ExperimentRow, k: int, now: float) -> stats.FeedbackCounts:
    """The counts over every decision two windows old and all its primary feedback."""
    policy = parse_policy(exp.policy)
    window = policy.attribution_window_hours * 3600
    cutoff = now + stats.feedback_cohort_cutoff(0.0, policy) * 3600
    fb = FeedbackRow
    in_time = fb.received_at <= DecisionRow.decided_at + window
    q = (
        select(
            DecisionRow.arm,
            func.count(DecisionRow.id),
            func.coalesce(func.sum(case((fb.id.is_not(None) & in_time, 1), else_=0)), 0),
            func.coalesce(func.sum(case((fb.id.is_not(None) & ~in_time, 1), else_=0)), 0),
        )
        .outerjoin(fb, (fb.decision_id == DecisionRow.id) & (fb.metric == exp.metric))
        .where(DecisionRow.experiment_id == exp.id, DecisionRow.decided_at <= cutoff)
        .group_by(DecisionRow.arm)
    )
    counts = stats.FeedbackCounts.empty(k)
    for arm, count, ok, after in s.execute(q).all():
        counts.eligible[arm], counts.on_time[arm], counts.late[arm] = count, ok, after
    return counts


class HeldBack:
    """A decision sink that stores decisions only when `release` says their time came (a slow
    batched writer, or one whose database was away for a while)."""

    def __init__(self, ops: Any, rng: random.Random, window: float) -> None:
        self.ops, self.rng, self.window = ops, rng, window
        self.rows: list[tuple[float, dict[str, Any]]] = []

    def add_decision(self, row: dict[str, Any]) -> None:
        delay = self.rng.uniform(1, 60) if self.rng.random() < 0.6 else self.rng.uniform(1, 3) * self.window
        self.rows.append((row["decided_at"] + delay, row))

    def release(self, now: float) -> None:
        ready = [row for at, row in self.rows if at <= now]
        self.rows = [(at, row) for at, row in self.rows if at > now]
        if ready:
            self.ops.serving.recorder.record_decisions(ready)

    def add_call(self, row: dict[str, Any]) -> None:
        raise AssertionError("no gateway calls here")


def test_the_folded_counts_equal_the_recount_on_random_traffic(ops, prompts_dir: Path, clock):
    exp = setup(ops, prompts_dir, triage(POLICY))
    rng = random.Random(4)
    ops.ctx.rng.seed(5)
    window = 0.25 * 3600
    held = HeldBack(ops, rng, window)
    due: list[tuple[float, str]] = []  # (when, decision id) of feedback still to send
    compared = late_seen = 0
    for i in range(3000):
        holding = rng.random() < 0.05
        ops.serving.writer = held if holding else None
        d = ops.serve("triage", {"message": "x"})
        ops.serving.writer = None
        arm = d.version - 1
        roll = rng.random()
        if roll < 0.5:  # on time
            due.append((clock() + rng.uniform(0, 0.9 * window), d.decision_id))
        elif roll < 0.5 + (0.35 if arm == 1 else 0.05):  # late, mostly on the second arm
            due.append((clock() + rng.uniform(1.01 * window, 4 * window), d.decision_id))
        clock.advance(rng.uniform(0.5, 3.0))
        held.release(clock())
        due.sort()
        while due and due[0][0] <= clock():
            _, decision_id = due.pop(0)
            ops.feedback(decision_id, rng.choice([0, 1]))
            if rng.random() < 0.1:
                ops.feedback(decision_id, 1)  # a repeat counts once
        if rng.random() < 0.02:
            ops.tick()
            with ops.ctx.tx() as s:
                row = s.get(ExperimentRow, exp.id)
                assert row is not None
                mine = validity.counts(s, row, 2)
                truth = recount(s, row, 2, clock())
            for name in ("eligible", "on_time", "late"):
                assert np.array_equal(getattr(mine, name), getattr(truth, name)), (i, name, mine, truth)
            compared += 1
            late_seen = max(late_seen, int(truth.late.sum()))
    assert compared > 30 and late_seen > 100
    assert ops.experiments.get(exp.id).status == "running"


def test_an_update_reads_about_a_window_of_decisions_not_the_log(ops, prompts_dir: Path, clock):
    exp = setup(ops, prompts_dir, triage(POLICY))
    for i in range(2000):
        ops.serve("triage", {"message": "x"})
        clock.advance(3.6)  # 1,000 an hour: 250 decisions per window
        if i % 50 == 49:
            ops.tick()
    with ops.ctx.tx() as s:
        row = s.get(ExperimentRow, exp.id)
        assert row is not None
        low = row.validity_low
        left = s.scalar(
            select(func.count(DecisionRow.id)).where(
                DecisionRow.experiment_id == exp.id, DecisionRow.counted_in >= low
            )
        )
        counted = validity.counts(s, row, 2).eligible.sum()
    assert counted > 1300
    assert left is not None and left < 400  # what the next update reads
