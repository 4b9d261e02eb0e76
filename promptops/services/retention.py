"""Retention: remove raw decisions and feedback that no statistic needs any more.

An ended experiment's statistics live in its epoch sums, arm counters and snapshot; its raw decision
log is only needed to rebuild them. `gc` deletes the raw rows of experiments that ended more than
`older_than_days` ago, and of plain production serves older than that, in bounded batches so the
tables are never locked for long. Experiment pages and APIs keep working from the aggregates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from promptops.db.models import DecisionRow, ExperimentRow, FeedbackRow, LateFeedbackRow
from promptops.db.queries import RETENTION_CUTOFF, bump_change_seq, get_meta, set_meta
from promptops.domain import ENDED_STATUSES
from promptops.errors import InvalidInput
from promptops.services.context import Context

BATCH = 5000


@dataclass(frozen=True, slots=True)
class GcReport:
    """What `gc` deleted (or, with `dry_run`, would delete): raw decisions and feedback rows, and
    how many experiments had ended long enough ago to be purged."""

    experiments: int
    decisions: int
    feedback: int
    dry_run: bool


class Retention:
    """Deletes raw rows that are no longer needed."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def gc(self, *, older_than_days: float, dry_run: bool = False) -> GcReport:
        """Delete raw decisions and feedback of long-ended experiments and old production serves."""
        if not math.isfinite(older_than_days) or older_than_days < 0:
            # NaN compared false with everything and deleted nothing, silently
            raise InvalidInput(f"older-than must be a finite number of days >= 0 (got {older_than_days})")
        cutoff = self.ctx.now() - older_than_days * 86400
        with self.ctx.tx() as s:
            ended = list(
                s.scalars(
                    select(ExperimentRow.id).where(
                        ExperimentRow.status.in_(sorted(ENDED_STATUSES)),
                        ExperimentRow.ended_at.is_not(None),
                        ExperimentRow.ended_at <= cutoff,
                    )
                )
            )
        decisions = feedback = 0
        for exp_id in ended:
            d, f = self._purge(DecisionRow.experiment_id == exp_id, dry_run=dry_run)
            if not dry_run:
                with self.ctx.tx() as s:  # late feedback still queued for the validity counts
                    s.execute(delete(LateFeedbackRow).where(LateFeedbackRow.experiment_id == exp_id))
            decisions += d
            feedback += f
            if not dry_run and d:
                with self.ctx.tx() as s:
                    exp = s.get(ExperimentRow, exp_id)
                    if exp is not None:
                        snap = dict(exp.snapshot or {})
                        prior = (snap.get("retention") or {}).get("decisions_deleted", 0)
                        snap["retention"] = {"raw_deleted_at": self.ctx.now(), "decisions_deleted": prior + d}
                        exp.snapshot = snap
        d, f = self._purge(
            (DecisionRow.experiment_id.is_(None)) & (DecisionRow.decided_at <= cutoff), dry_run=dry_run
        )
        decisions += d
        feedback += f
        if not dry_run and decisions:
            # Decision ids are self-signed: remember the cutoff so a replayed feedback for a
            # removed decision is refused instead of being counted a second time.
            with self.ctx.tx() as s:
                before = float(get_meta(s, RETENTION_CUTOFF) or 0.0)
                set_meta(s, RETENTION_CUTOFF, repr(max(before, cutoff)))
                bump_change_seq(s)
        return GcReport(experiments=len(ended), decisions=decisions, feedback=feedback, dry_run=dry_run)

    def _purge(self, where: Any, *, dry_run: bool) -> tuple[int, int]:
        decisions = feedback = 0
        while True:
            with self.ctx.tx() as s:
                ids = list(
                    s.scalars(
                        select(DecisionRow.id).where(where).limit(BATCH).offset(decisions if dry_run else 0)
                    )
                )
                if not ids:
                    return decisions, feedback
                fb = s.scalars(select(FeedbackRow.id).where(FeedbackRow.decision_id.in_(ids)))
                n_fb = len(list(fb))
                if not dry_run:
                    s.execute(delete(FeedbackRow).where(FeedbackRow.decision_id.in_(ids)))
                    s.execute(delete(DecisionRow).where(DecisionRow.id.in_(ids)))
                decisions += len(ids)
                feedback += n_fb
