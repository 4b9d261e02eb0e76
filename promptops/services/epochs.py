"""The epoch update: maturation, statistics, new weights, and the automatic end of an experiment.

It runs off the request path (a background loop in the server, or `tick()` called by tests and the
CLI) and holds the experiment's row lock for its whole transaction; an end goes through
`Experiments.finish` (or `GuardedRollout.enter`), a conditional update, so it happens once even
with several servers.

Each update folds newly matured outcomes in (`maturation`); when `stats.should_start_epoch` says
the epoch is over (or at the limit), `stats.step` runs the policy on the stored sums (`snapshots`)
and the experiment ends, enters the guarded rollout (`rollout`) or starts a new epoch. During the
holdout, `GuardedRollout.step` runs at each boundary instead.
"""

from __future__ import annotations

from sqlalchemy import select

from promptops import stats
from promptops.db.models import EpochRow, ExperimentRow
from promptops.domain import LIVE_STATUSES, ExperimentStatus, StatsAction, parse_policy
from promptops.errors import ExperimentStateError
from promptops.services import maturation, snapshots, validity
from promptops.services.context import Context
from promptops.services.experiments import Experiments, open_epoch
from promptops.services.rollout import GuardedRollout

SYSTEM_ACTOR = "promptops"


class EpochUpdater:
    """Folds matured outcomes into live experiments and runs their epoch boundaries."""

    def __init__(self, ctx: Context, experiments: Experiments) -> None:
        self.ctx = ctx
        self.experiments = experiments
        self.rollout = GuardedRollout(ctx, experiments)
        self._rng = stats.new_rng()

    def tick(self) -> list[int]:
        """Run the update of every live experiment; returns the ids that changed epoch or ended."""
        with self.ctx.tx() as s:
            ids = list(s.scalars(select(ExperimentRow.id).where(ExperimentRow.status.in_(LIVE_STATUSES))))
        changed = []
        for exp_id in ids:
            try:
                if self.update(exp_id):
                    changed.append(exp_id)
            except ExperimentStateError:
                continue  # another server ended it between our read and our update
        return changed

    def update(self, experiment_id: int) -> bool:
        """Fold newly matured outcomes in, and at an epoch boundary re-weight and check stopping
        (or, in a holdout, test for a rollback)."""
        with self.ctx.tx() as s:
            exp = self.experiments.row(s, experiment_id, lock=True)
            if exp.status not in LIVE_STATUSES:
                return False
            now = self.ctx.now()
            policy = parse_policy(exp.policy)
            arms = self.experiments.arms(s, exp.id)
            new = maturation.mature(s, exp, policy, now)
            validity.fold(s, exp, policy, now)
            hours = (now - (exp.started_at or now)) / 3600
            decisions_total = sum(a.decisions for a in arms)
            epoch_row = s.scalar(
                select(EpochRow).where(EpochRow.experiment_id == exp.id, EpochRow.idx == exp.epoch)
            )
            matured_in_epoch = exp.matured_total - (epoch_row.matured_at_start if epoch_row else 0)
            minutes = (now - (exp.epoch_started_at or now)) / 60
            at_limit = decisions_total >= policy.max_decisions or hours >= policy.max_days * 24
            due = stats.should_start_epoch(
                matured_in_epoch=matured_in_epoch, minutes_in_epoch=minutes, policy=policy
            )
            exp.last_update_at = now
            if exp.status == ExperimentStatus.HOLDOUT:
                return due and self.rollout.step(
                    s, exp, policy, now, decisions_total=decisions_total, actor=SYSTEM_ACTOR
                )
            names = snapshots.arm_names(s, arms)
            if not (due or at_limit):
                if new:
                    data = snapshots.epoch_data(s, exp, len(arms), policy, now)
                    summary = stats.summarize(data, control=exp.control_arm, policy=policy)
                    exp.snapshot = snapshots.snapshot(
                        exp,
                        summary,
                        data,
                        names,
                        reason=(exp.snapshot or {}).get("reason", "collecting outcomes"),
                        result=None,
                        at=now,
                    )
                return False
            maturation.count_assigned(s, exp)
            data = snapshots.epoch_data(s, exp, len(arms), policy, now)
            result = stats.step(
                data,
                control=exp.control_arm,
                state=stats.PolicyState.from_dict(exp.policy_state or {}),
                policy=policy,
                rng=self._rng,
                hours_elapsed=hours,
                decisions_total=decisions_total,
                strategy=exp.strategy,
                fixed_weights=exp.fixed_weights or None,
                auto_promote=exp.auto_promote,
                names=names,
                reward_kind=exp.reward,
                matured_decisions=float(exp.matured_total),
            )
            exp.policy_state = {**(exp.policy_state or {}), **result.state.to_dict()}
            exp.snapshot = snapshots.snapshot(
                exp, result.summary, data, names, reason=result.reason, result=result, at=now
            )
            if (
                result.action == StatsAction.PROMOTE
                and result.winner is not None
                and (result.winner != exp.control_arm and policy.holdout_share > 0)
            ):
                old = self.rollout.previous_production(s, exp, arms)
                if old != result.winner:
                    self.rollout.enter(
                        s,
                        exp,
                        winner=result.winner,
                        old=old,
                        weights=[
                            float(x)
                            for x in stats.holdout_weights(
                                len(arms), new=result.winner, old=old, policy=policy
                            )
                        ],
                        actor=SYSTEM_ACTOR,
                        reason=result.reason,
                        evidence=exp.snapshot,
                    )
                    return True
            if result.action in (StatsAction.PROMOTE, StatsAction.KEEP_CONTROL):
                self.experiments.finish(
                    s,
                    exp,
                    status=ExperimentStatus.COMPLETED,
                    winner=result.winner,
                    actor=SYSTEM_ACTOR,
                    reason=result.reason,
                    evidence=exp.snapshot,
                )
                return True
            if result.action == StatsAction.INCONCLUSIVE:
                self.experiments.finish(
                    s,
                    exp,
                    status=ExperimentStatus.INCONCLUSIVE,
                    winner=None,
                    actor=SYSTEM_ACTOR,
                    reason=result.reason,
                    evidence=exp.snapshot,
                )
                return True
            open_epoch(
                s,
                exp,
                now,
                result.weights,
                {
                    "p_best": snapshots.floats(result.summary.p_best),
                    "mean": snapshots.floats(result.summary.mean),
                    "checked": result.checked,
                },
            )
            return True
