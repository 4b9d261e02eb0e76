"""Feedback validity counts: per arm, over decisions two windows old, how many there are, how many
got their primary feedback within the attribution window and how many only after it."""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import DecisionRow, ExperimentRow, FeedbackRow
from promptops.domain import Policy


def recount(s: Session, exp: ExperimentRow, k: int, policy: Policy, now: float) -> stats.FeedbackCounts:
    """The counts recomputed from every decision and feedback."""
    window = policy.attribution_window_hours * 3600
    # the rule's offset in seconds, added to now: converting now itself to hours and back
    # would round a decision at the edge out of the cohort
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
        if arm is not None and 0 <= arm < k:
            counts.eligible[arm], counts.on_time[arm], counts.late[arm] = count, ok, after
    return counts
