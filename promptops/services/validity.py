"""Feedback-validity counts, kept per arm and folded in at each update like the outcome sums.

The safety check (`stats.feedback_finding`) reads, per arm, over the decisions two windows old
(`stats.feedback_cohort_cutoff`): how many there are, how many got their primary feedback within
the attribution window, and how many got it after. Recounting them over every decision at every
update costs a scan of the whole decision log; instead each update adds what changed since the
previous one, and the counts are always equal to that recount:

- Decisions enter the counts once matured (`maturation`, which marks each with its update's
  sequence number) and old enough. The experiment row remembers the last cutoff and sequence
  folded (`validity_cutoff`, `validity_seq`): the decisions to add are those old enough now and
  not already counted, either matured since (stored late by the batched writer, say) or matured
  before and old enough only now. `validity_low` is the oldest update with a decision not yet old
  enough, so the query reads the index from there, about one window of traffic, never the log.
- On-time feedback is read with the decision when it enters (it came within the window, a window
  before the decision is old enough).
- Late feedback can come at any time, also long after its decision entered the counts: the
  feedback path queues each late primary feedback (`LateFeedbackRow`) in the transaction that
  stores it, and an update counts and removes the queued ones whose decision is old enough.

A decision two windows old has matured (its window closed a window ago, well past the maturity
grace), so counting matured decisions only is the same as counting every decision that old.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import ArmFeedbackRow, DecisionRow, ExperimentRow, FeedbackRow, LateFeedbackRow
from promptops.domain import Policy

CHUNK = 500
"""Queued late feedback removed per statement."""


def cohort_cutoff(policy: Policy, now: float) -> float:
    """Decisions made at or before this time are old enough for the counts."""
    # the rule's offset in seconds, added to now: converting now itself to hours and back
    # would round a decision at the edge out of the cohort
    return now + stats.feedback_cohort_cutoff(0.0, policy) * 3600


def fold(s: Session, exp: ExperimentRow, policy: Policy, now: float) -> None:
    """Add the decisions that became old enough, and the queued late feedback of old-enough
    decisions, to the experiment's per-arm counts (call after `maturation.mature`)."""
    window = policy.attribution_window_hours * 3600
    prev = exp.validity_cutoff
    # a replica whose clock runs behind never moves the cutoff back
    cutoff = cohort_cutoff(policy, now) if prev is None else max(prev, cohort_cutoff(policy, now))
    seq = exp.update_seq
    adds: dict[int, list[int]] = {}
    if seq >= exp.validity_low:
        d, fb = DecisionRow, FeedbackRow
        new = [d.experiment_id == exp.id, d.counted_in >= exp.validity_low, d.decided_at <= cutoff]
        if prev is not None:
            new.append(~((d.counted_in <= exp.validity_seq) & (d.decided_at <= prev)))
        in_time = fb.received_at <= d.decided_at + window
        in_time = (fb.decision_id == d.id) & (fb.metric == exp.metric) & in_time
        for arm, count, on_time in s.execute(
            select(d.arm, func.count(d.id), func.count(fb.id))
            .outerjoin(fb, in_time)
            .where(*new)
            .group_by(d.arm)
        ).all():
            if arm is not None:
                cell = adds.setdefault(int(arm), [0, 0, 0])
                cell[0] += int(count)
                cell[1] += int(on_time)
        oldest = s.scalar(
            select(func.min(d.counted_in)).where(
                d.experiment_id == exp.id, d.counted_in >= exp.validity_low, d.decided_at > cutoff
            )
        )
        exp.validity_low = seq + 1 if oldest is None else int(oldest)
    late = LateFeedbackRow
    waiting = s.execute(
        select(late.id, late.arm).where(late.experiment_id == exp.id, late.decided_at <= cutoff)
    ).all()
    for _, arm in waiting:
        adds.setdefault(int(arm), [0, 0, 0])[2] += 1
    ids = sorted(row_id for row_id, _ in waiting)
    for i in range(0, len(ids), CHUNK):
        s.execute(
            delete(late).where(late.id.in_(ids[i : i + CHUNK])).execution_options(synchronize_session=False)
        )
    exp.validity_cutoff, exp.validity_seq = cutoff, seq
    if not adds:
        return
    rows = {r.arm: r for r in s.scalars(select(ArmFeedbackRow).where(ArmFeedbackRow.experiment_id == exp.id))}
    for arm, (eligible, on_time, after) in sorted(adds.items()):
        row = rows.get(arm)
        if row is None:
            row = ArmFeedbackRow(experiment_id=exp.id, arm=arm, eligible=0, on_time=0, late=0)
            s.add(row)
        row.eligible += eligible
        row.on_time += on_time
        row.late += after


def counts(s: Session, exp: ExperimentRow, k: int) -> stats.FeedbackCounts:
    """The experiment's feedback-validity counts as of its last fold."""
    out = stats.FeedbackCounts.empty(k)
    for r in s.scalars(select(ArmFeedbackRow).where(ArmFeedbackRow.experiment_id == exp.id)):
        if 0 <= r.arm < k:
            out.eligible[r.arm], out.on_time[r.arm], out.late[r.arm] = r.eligible, r.on_time, r.late
    return out
