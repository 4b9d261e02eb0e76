"""The epoch update: maturation, statistics, new weights, and the automatic end of an experiment.

It runs off the request path (a background loop in the server, or `tick()` called by tests and the
CLI) and holds the experiment's row lock for its whole transaction; an end goes through
`Experiments.finish`, a conditional update, so it happens once even with several servers.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import (
    ArmEpochRow,
    ArmRow,
    DecisionRow,
    EpochRow,
    ExperimentRow,
    FeedbackRow,
    VersionRow,
)
from promptops.db.queries import bump_change_seq, rowcount
from promptops.domain import Policy, parse_policy
from promptops.errors import ExperimentStateError
from promptops.services.context import Context
from promptops.services.experiments import Experiments

SYSTEM_ACTOR = "promptops"
MATURITY_GRACE_SECONDS = 2.0


class EpochUpdater:
    """Folds matured outcomes into running experiments and runs their epoch boundaries."""

    def __init__(self, ctx: Context, experiments: Experiments) -> None:
        self.ctx = ctx
        self.experiments = experiments
        self._rng = stats.new_rng()

    def tick(self) -> list[int]:
        """Run the update of every running experiment; returns the ids that changed epoch or ended."""
        with self.ctx.tx() as s:
            ids = list(s.scalars(select(ExperimentRow.id).where(ExperimentRow.status == "running")))
        changed = []
        for exp_id in ids:
            try:
                if self.update(exp_id):
                    changed.append(exp_id)
            except ExperimentStateError:
                continue  # another server ended it between our read and our update
        return changed

    def update(self, experiment_id: int) -> bool:
        """Fold newly matured outcomes in, and at an epoch boundary re-weight and check stopping."""
        with self.ctx.tx() as s:
            exp = self.experiments.row(s, experiment_id, lock=True)
            if exp.status != "running":
                return False
            now = self.ctx.now()
            policy = parse_policy(exp.policy)
            arms = self.experiments.arms(s, exp.id)
            new = self._mature(s, exp, policy, now)
            data = self._epoch_data(s, exp, len(arms))
            hours = (now - (exp.started_at or now)) / 3600
            decisions_total = sum(a.decisions for a in arms)
            epoch_row = s.scalar(select(EpochRow).where(EpochRow.experiment_id == exp.id,
                                                        EpochRow.idx == exp.epoch))
            matured_in_epoch = exp.matured_total - (epoch_row.matured_at_start if epoch_row else 0)
            minutes = (now - (exp.epoch_started_at or now)) / 60
            at_limit = decisions_total >= policy.max_decisions or hours >= policy.max_days * 24
            due = stats.should_start_epoch(matured_in_epoch=matured_in_epoch,
                                           minutes_in_epoch=minutes, policy=policy)
            exp.last_update_at = now
            if not (due or at_limit):
                if new:
                    summary = stats.summarize(data, control=exp.control_arm, policy=policy)
                    exp.snapshot = self._snapshot(exp, summary, reason=(exp.snapshot or {}).get(
                        "reason", "collecting outcomes"), state=None)
                return False
            result = stats.step(
                data, control=exp.control_arm,
                state=stats.PolicyState.from_dict(exp.policy_state or {}), policy=policy,
                rng=self._rng, hours_elapsed=hours, decisions_total=decisions_total,
                strategy=exp.strategy,
                fixed_weights=exp.fixed_weights or None, auto_promote=exp.auto_promote,
                names=self._arm_names(s, arms))
            exp.policy_state = result.state.to_dict()
            exp.snapshot = self._snapshot(exp, result.summary, reason=result.reason,
                                          state=result.state)
            if result.action in ("promote", "keep_control"):
                self.experiments.finish(s, exp, status="completed", winner=result.winner,
                             actor=SYSTEM_ACTOR, reason=result.reason, evidence=exp.snapshot)
                return True
            if result.action == "inconclusive":
                self.experiments.finish(s, exp, status="inconclusive", winner=None, actor=SYSTEM_ACTOR,
                             reason=result.reason, evidence=exp.snapshot)
                return True
            exp.epoch += 1
            exp.epoch_started_at = now
            exp.weights = [float(x) for x in result.weights]
            s.add(EpochRow(experiment_id=exp.id, idx=exp.epoch, started_at=now,
                           weights=exp.weights, matured_at_start=exp.matured_total,
                           summary={"p_best": _floats(result.summary.p_best),
                                    "mean": _floats(result.summary.mean),
                                    "checked": result.checked}))
            bump_change_seq(s)
            return True

    def _mature(self, s: Session, exp: ExperimentRow, policy: Policy, now: float) -> int:
        """Mark decisions whose attribution window closed and add them to the epoch sums."""
        window = policy.attribution_window_hours * 3600
        seq = exp.update_seq + 1
        # Wait a little past the window: a feedback stamped inside it may still be in a commit
        # batch, or come from a replica whose clock runs slightly behind.
        res = s.execute(update(DecisionRow).where(
            DecisionRow.experiment_id == exp.id, DecisionRow.counted_in == 0,
            DecisionRow.decided_at <= now - window - MATURITY_GRACE_SECONDS).values(counted_in=seq)
            .execution_options(synchronize_session=False))
        if not rowcount(res):
            return 0
        exp.update_seq = seq
        zero = policy.missing_feedback_for(exp.reward) == "zero"
        reward = FeedbackRow.reward
        q = (select(DecisionRow.arm, DecisionRow.epoch, func.count(DecisionRow.id),
                    func.count(FeedbackRow.id), func.coalesce(func.sum(reward), 0.0),
                    func.coalesce(func.sum(reward * reward), 0.0))
             .outerjoin(FeedbackRow, (FeedbackRow.decision_id == DecisionRow.id)
                        & (FeedbackRow.metric == exp.metric)
                        & (FeedbackRow.received_at <= DecisionRow.decided_at + window))
             .where(DecisionRow.experiment_id == exp.id, DecisionRow.counted_in == seq)
             .group_by(DecisionRow.arm, DecisionRow.epoch))
        existing: dict[Any, ArmEpochRow] = {(r.arm, r.epoch): r for r in s.scalars(
            select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))}
        total = 0
        for arm, epoch, count, with_fb, ssum, ssq in s.execute(q).all():
            row = existing.get((arm, epoch))
            if row is None:
                row = ArmEpochRow(experiment_id=exp.id, arm=arm, epoch=epoch, assigned=0, n=0,
                                  s=0.0, ss=0.0)
                s.add(row)
            row.assigned += int(count)
            row.n += int(count if zero else with_fb)
            row.s += float(ssum)
            row.ss += float(ssq)
            total += int(count)
        exp.matured_total += total
        return total

    def _epoch_data(self, s: Session, exp: ExperimentRow, k: int) -> stats.EpochData:
        cells = [(r.arm, r.epoch, r.n, r.s, r.ss, r.assigned) for r in s.scalars(
            select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))]
        weights = [(ep.idx, ep.weights) for ep in s.scalars(
            select(EpochRow).where(EpochRow.experiment_id == exp.id))]
        return stats.EpochData.from_cells(k, exp.epoch + 1, cells, weights)

    def _arm_names(self, s: Session, arms: list[ArmRow]) -> list[str]:
        rows = {v.id: v for v in s.scalars(select(VersionRow).where(
            VersionRow.id.in_([a.version_id for a in arms])))}
        return [f"v{rows[a.version_id].number} ({rows[a.version_id].variant})" for a in arms]

    def _snapshot(self, exp: ExperimentRow, summary: Any, *, reason: str,
                  state: Any) -> dict[str, Any]:
        arms = []
        for i in range(len(summary.mean)):
            arms.append({
                "mean": _float(summary.mean[i]), "ci_low": _float(summary.ci_low[i]),
                "ci_high": _float(summary.ci_high[i]), "p_best": _float(summary.p_best[i]),
                "expected_loss": _float(summary.expected_loss[i]),
                "p_beats_control": _float(summary.p_beats_control[i])})
        prev_state = exp.policy_state or {}
        # A report figure, not a stopping input: a fixed seed keeps it stable between refreshes.
        remaining = stats.value_remaining(summary.mean, summary.sd, rng=stats.new_rng(exp.id))
        return {"arms": arms, "reason": reason, "srm_p": _float(summary.srm_p),
                "value_remaining": _float(remaining),
                "srm_alarm": bool(state.srm_alarm if state is not None
                                  else prev_state.get("srm_alarm", False)),
                "checks_done": int(state.checks_done if state is not None
                                   else prev_state.get("checks_done", 0)),
                "at": self.ctx.now()}


def _float(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _floats(xs: Any) -> list[float | None]:
    return [_float(x) for x in xs]
