"""The epoch update: maturation, statistics, new weights, and the automatic end of an experiment.

It runs off the request path (a background loop in the server, or `tick()` called by tests and the
CLI) and holds the experiment's row lock for its whole transaction; an end goes through
`Experiments.finish` (or `enter_holdout`), a conditional update, so it happens once even with
several servers.

The data rules are the ones the simulator uses, from `promptops.stats`: `matured_values` decides what
a matured decision counts, `fold_units` moves a unit's mean between cells as its values arrive,
`should_start_epoch` closes epochs, `step` runs the policy and `holdout_step` the guarded rollout.
A unit (a `unit_id`, else the decision itself) is filed under the arm and epoch of its first
exposure; `assigned` counts new units per (arm, epoch) when an epoch closes, for the SRM check.
Secondary and guardrail metrics are summed per decision (not per unit), capped at a quantile fixed
from their first values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import (
    ArmEpochRow,
    ArmMetricRow,
    ArmRow,
    CallStatsRow,
    DecisionRow,
    EpochRow,
    ExperimentRow,
    FeedbackRow,
    UnitRow,
    VersionRow,
)
from promptops.db.queries import bump_change_seq, rowcount
from promptops.domain import (
    BUILTIN_METRICS,
    LIVE_STATUSES,
    ExperimentStatus,
    HoldoutAction,
    MissingFeedback,
    Policy,
    StatsAction,
    parse_policy,
)
from promptops.errors import ExperimentStateError
from promptops.services.context import Context
from promptops.services.experiments import Experiments

Cells = dict[tuple[int, int], list[float]]
"""Increments of (n, sum, sum of squares) per (arm, epoch) cell."""
SYSTEM_ACTOR = "promptops"
MATURITY_GRACE_SECONDS = 2.0
_CHUNK = 500


def tracked_metrics(exp: ExperimentRow, policy: Policy) -> list[str]:
    """The metrics summed per arm and epoch besides the primary one: the declared secondary
    metrics, the guardrail metrics and the built-ins, each once."""
    names = [*(exp.metrics or []), *(g.metric for g in policy.guardrails), *BUILTIN_METRICS]
    return [m for m in dict.fromkeys(names) if m != exp.metric]


class EpochUpdater:
    """Folds matured outcomes into live experiments and runs their epoch boundaries."""

    def __init__(self, ctx: Context, experiments: Experiments) -> None:
        self.ctx = ctx
        self.experiments = experiments
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
            new = self._mature(s, exp, policy, now)
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
                return due and self._holdout(s, exp, policy, now, decisions_total)
            names = self._arm_names(s, arms)
            if not (due or at_limit):
                if new:
                    data = self._epoch_data(s, exp, len(arms), policy, now)
                    summary = stats.summarize(data, control=exp.control_arm, policy=policy)
                    exp.snapshot = self._snapshot(
                        exp,
                        summary,
                        data,
                        policy,
                        names,
                        reason=(exp.snapshot or {}).get("reason", "collecting outcomes"),
                        result=None,
                    )
                return False
            self._count_assigned(s, exp)
            data = self._epoch_data(s, exp, len(arms), policy, now)
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
            exp.snapshot = self._snapshot(
                exp, result.summary, data, policy, names, reason=result.reason, result=result
            )
            if (
                result.action == StatsAction.PROMOTE
                and result.winner is not None
                and (result.winner != exp.control_arm and policy.holdout_share > 0)
            ):
                old = self._previous_production(s, exp, arms)
                if old != result.winner:
                    self.experiments.enter_holdout(
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
            self._next_epoch(
                s,
                exp,
                now,
                result.weights,
                {
                    "p_best": _floats(result.summary.p_best),
                    "mean": _floats(result.summary.mean),
                    "checked": result.checked,
                },
            )
            return True

    def _next_epoch(
        self, s: Session, exp: ExperimentRow, now: float, weights: Any, summary: dict[str, Any]
    ) -> None:
        exp.epoch += 1
        exp.epoch_started_at = now
        exp.weights = [float(x) for x in weights]
        s.add(
            EpochRow(
                experiment_id=exp.id,
                idx=exp.epoch,
                started_at=now,
                weights=exp.weights,
                matured_at_start=exp.matured_total,
                summary=summary,
            )
        )
        bump_change_seq(s)

    @staticmethod
    def _previous_production(s: Session, exp: ExperimentRow, arms: list[ArmRow]) -> int:
        """The arm holding production when the experiment started (the control otherwise)."""
        if exp.production_version_at_start is not None:
            numbers = dict(
                s.execute(
                    select(VersionRow.id, VersionRow.number).where(
                        VersionRow.id.in_([a.version_id for a in arms])
                    )
                ).all()
            )
            for a in arms:
                if numbers.get(a.version_id) == exp.production_version_at_start:
                    return a.idx
        return exp.control_arm

    # -- the guarded rollout -----------------------------------------------------------------
    @staticmethod
    def _matured_values(
        s: Session, exp: ExperimentRow, policy: Policy, *, arm: int, since: float | None, limit: int
    ) -> list[float]:
        """One arm's most recent counted outcomes (newest first), as maturation values them."""
        window = policy.attribution_window_hours * 3600
        fb = FeedbackRow
        where = [
            DecisionRow.experiment_id == exp.id,
            DecisionRow.counted_in > 0,
            DecisionRow.arm == arm,
        ]
        if since is not None:
            where.append(DecisionRow.decided_at >= since)
        rows = s.execute(
            select(fb.reward)
            .select_from(DecisionRow)
            .outerjoin(
                fb,
                (fb.decision_id == DecisionRow.id)
                & (fb.metric == exp.metric)
                & (fb.received_at <= DecisionRow.decided_at + window),
            )
            .where(*where)
            .order_by(DecisionRow.decided_at.desc())
            .limit(limit)
        ).all()
        counted, value = stats.matured_values(
            [r[0] is not None for r in rows],
            [0.0 if r[0] is None else float(r[0]) for r in rows],
            reward_kind=exp.reward,
            policy=policy,
        )
        return [float(v) for c, v in zip(counted, value, strict=True) if c]

    def _holdout(
        self, s: Session, exp: ExperimentRow, policy: Policy, now: float, decisions_total: int
    ) -> bool:
        """At an epoch boundary of the holdout: roll back, end it, or keep going."""
        hold = exp.holdout or {}
        new, old = int(hold["new"]), int(hold["old"])
        # As the simulator does (stats.rollout): the previous production's own most recent
        # matured outcomes, before the promotion included, against the new version's most recent
        # holdout outcomes over each window of the scan.
        scan = stats.rollback_scan(policy)
        old_values = self._matured_values(
            s, exp, policy, arm=old, since=None, limit=stats.rollback_window(policy)
        )
        new_values = self._matured_values(
            s, exp, policy, arm=new, since=float(hold["started_at"]), limit=scan[0]
        )
        scans = [_sums(new_values[:size]) for size in scan]
        old_sums = _sums(old_values)
        sums = [scans[0], old_sums]
        verdict = stats.holdout_step(
            n=(scans[0][0], old_sums[0]),
            s=(scans[0][1], old_sums[1]),
            ss=(scans[0][2], old_sums[2]),
            decisions=decisions_total - int(hold.get("decisions_at_start", 0)),
            hours=(now - float(hold["started_at"])) / 3600,
            policy=policy,
            recent=tuple(scans[1:]),
        )
        evidence = {
            **(exp.snapshot or {}),
            "holdout": {
                "p_old_better": _float(verdict.p_old_better),
                "reason": verdict.reason,
                "window": {"new": _cell(sums[0]), "old": _cell(sums[1])},
                "at": now,
            },
        }
        exp.snapshot = evidence
        if verdict.action == HoldoutAction.ROLLBACK:
            self.experiments.finish(
                s,
                exp,
                status=ExperimentStatus.ROLLED_BACK,
                winner=new,
                production=old,
                actor=SYSTEM_ACTOR,
                reason=verdict.reason,
                evidence=evidence,
            )
            return True
        if verdict.action == HoldoutAction.END_HOLDOUT:
            self.experiments.finish(
                s,
                exp,
                status=ExperimentStatus.COMPLETED,
                winner=new,
                actor=SYSTEM_ACTOR,
                reason=verdict.reason,
                evidence=evidence,
            )
            return True
        self._next_epoch(s, exp, now, exp.weights, {"holdout": True, "p_old_better": verdict.p_old_better})
        return True

    # -- maturation --------------------------------------------------------------------------
    def _mature(self, s: Session, exp: ExperimentRow, policy: Policy, now: float) -> int:
        """Mark decisions whose attribution window closed and fold them into the sums."""
        window = policy.attribution_window_hours * 3600
        seq = exp.update_seq + 1
        # Wait a little past the window: a feedback stamped inside it may still be in a commit
        # batch, or come from a replica whose clock runs slightly behind.
        res = s.execute(
            update(DecisionRow)
            .where(
                DecisionRow.experiment_id == exp.id,
                DecisionRow.counted_in == 0,
                DecisionRow.decided_at <= now - window - MATURITY_GRACE_SECONDS,
            )
            .values(counted_in=seq)
            .execution_options(synchronize_session=False)
        )
        if not rowcount(res):
            return 0
        exp.update_seq = seq
        cells: Cells = {}
        total = self._fold_decisions(s, exp, policy, seq, window, cells)
        total += self._fold_units(s, exp, policy, seq, window, cells)
        self._add_cells(s, exp, cells)
        self._fold_metrics(s, exp, policy, seq, window)
        exp.matured_total += total
        return total

    def _batch(self, exp: ExperimentRow, seq: int, window: float, *, units: bool) -> Any:
        """Matured decisions of batch `seq` with their on-time primary feedback, grouped per
        (arm, epoch) for decisions without a unit, per unit otherwise."""
        fb = FeedbackRow
        joined = (
            (fb.decision_id == DecisionRow.id)
            & (fb.metric == exp.metric)
            & (fb.received_at <= DecisionRow.decided_at + window)
        )
        aggregates = (
            func.count(DecisionRow.id),
            func.count(fb.id),
            func.coalesce(func.sum(fb.reward), 0.0),
            func.coalesce(func.sum(fb.reward * fb.reward), 0.0),
        )
        where = (
            DecisionRow.experiment_id == exp.id,
            DecisionRow.counted_in == seq,
            DecisionRow.unit_id.is_not(None) if units else DecisionRow.unit_id.is_(None),
        )
        if units:
            return (
                select(
                    DecisionRow.unit_id, func.min(DecisionRow.arm), func.min(DecisionRow.epoch), *aggregates
                )
                .outerjoin(fb, joined)
                .where(*where)
                .group_by(DecisionRow.unit_id)
            )
        return (
            select(DecisionRow.arm, DecisionRow.epoch, *aggregates)
            .outerjoin(fb, joined)
            .where(*where)
            .group_by(DecisionRow.arm, DecisionRow.epoch)
        )

    def _fold_decisions(
        self, s: Session, exp: ExperimentRow, policy: Policy, seq: int, window: float, cells: Cells
    ) -> int:
        """Each decision without a unit is its own unit: its value enters its cell once."""
        zero = policy.missing_feedback_for(exp.reward) == MissingFeedback.ZERO
        total = 0
        for arm, epoch, count, with_fb, ssum, ssq in s.execute(
            self._batch(exp, seq, window, units=False)
        ).all():
            _add(cells, (arm, epoch), (count if zero else with_fb, ssum, ssq))
            total += int(count)
        return total

    def _fold_units(
        self, s: Session, exp: ExperimentRow, policy: Policy, seq: int, window: float, cells: Cells
    ) -> int:
        """Units move their mean between values: `fold_units` gives the cell increments."""
        rows = s.execute(self._batch(exp, seq, window, units=True)).all()
        if not rows:
            return 0
        zero = policy.missing_feedback_for(exp.reward) == MissingFeedback.ZERO
        k, epochs = len(exp.weights), exp.epoch + 1
        stored: dict[str, UnitRow] = {}
        ids = sorted(r[0] for r in rows)
        for i in range(0, len(ids), _CHUNK):
            for u in s.scalars(
                select(UnitRow)
                .where(UnitRow.experiment_id == exp.id, UnitRow.unit_id.in_(ids[i : i + _CHUNK]))
                .with_for_update()
            ):
                stored[u.unit_id] = u
        total = 0
        arm, first, c0, s0, add_c, add_s = [], [], [], [], [], []
        for unit_id, min_arm, min_epoch, count, with_fb, ssum, _ in rows:
            found = stored.get(unit_id)
            if found is not None:
                u = found
            else:  # its serve-time row was lost: its matured decisions stand in for it
                u = UnitRow(
                    experiment_id=exp.id,
                    unit_id=unit_id,
                    arm=int(min_arm),
                    first_epoch=int(min_epoch),
                    decisions=0,
                    count=0,
                    total=0.0,
                )
                s.add(u)
            total += int(count)
            if not (0 <= u.arm < k and 0 <= u.first_epoch < epochs):
                continue
            arm.append(u.arm)
            first.append(u.first_epoch)
            c0.append(u.count)
            s0.append(u.total)
            add = int(count if zero else with_fb)
            add_c.append(add)
            add_s.append(float(ssum))
            u.decisions += int(count)
            u.count += add
            u.total += float(ssum)
        if arm:
            dn, ds, dss = stats.fold_units(
                arms=k,
                epochs=epochs,
                arm=arm,
                first_epoch=first,
                old_count=c0,
                old_sum=s0,
                add_count=add_c,
                add_sum=add_s,
            )
            for key in set(zip(arm, first, strict=True)):
                a, e = key
                _add(cells, key, (float(dn[a, e]), float(ds[a, e]), float(dss[a, e])))
        return total

    @staticmethod
    def _add_cells(s: Session, exp: ExperimentRow, cells: Cells) -> None:
        existing: dict[Any, ArmEpochRow] = {
            (r.arm, r.epoch): r
            for r in s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))
        }
        for (arm, epoch), (dn, ds, dss) in sorted(cells.items()):
            row = existing.get((arm, epoch))
            if row is None:
                row = ArmEpochRow(experiment_id=exp.id, arm=arm, epoch=epoch, assigned=0, n=0, s=0.0, ss=0.0)
                s.add(row)
            row.n += int(round(dn))
            row.s += float(ds)
            row.ss += float(dss)

    def _fold_metrics(self, s: Session, exp: ExperimentRow, policy: Policy, seq: int, window: float) -> None:
        """Per-arm, per-epoch sums of every tracked metric over the batch's decisions, each value
        capped at the quantile fixed from the metric's first values (`stats.metric_cap`)."""
        names = tracked_metrics(exp, policy)
        if not names:
            return
        state = dict(exp.policy_state or {})
        caps: dict[str, float | None] = dict(state.get("metric_caps") or {})
        fb = FeedbackRow
        on = fb.decision_id == DecisionRow.id
        batch = (
            DecisionRow.experiment_id == exp.id,
            DecisionRow.counted_in == seq,
            fb.received_at <= DecisionRow.decided_at + window,
        )
        missing = [m for m in names if caps.get(m) is None]
        if missing:
            first: dict[str, list[float]] = {}
            for metric, raw in s.execute(
                select(fb.metric, fb.reward).join(DecisionRow, on).where(*batch, fb.metric.in_(missing))
            ).all():
                first.setdefault(metric, []).append(float(raw))
            for metric, values in first.items():
                caps[metric] = stats.metric_cap(values)
            state["metric_caps"] = caps
            exp.policy_state = state
        existing: dict[Any, ArmMetricRow] = {
            (r.metric, r.arm, r.epoch): r
            for r in s.scalars(select(ArmMetricRow).where(ArmMetricRow.experiment_id == exp.id))
        }
        for metric in names:
            cap = caps.get(metric)
            value: Any = fb.reward if cap is None else case((fb.reward > cap, cap), else_=fb.reward)
            q = (
                select(
                    DecisionRow.arm,
                    DecisionRow.epoch,
                    func.count(fb.id),
                    func.coalesce(func.sum(value), 0.0),
                    func.coalesce(func.sum(value * value), 0.0),
                )
                .join(fb, on)
                .where(*batch, fb.metric == metric)
                .group_by(DecisionRow.arm, DecisionRow.epoch)
            )
            for arm, epoch, n, total, squares in s.execute(q).all():
                row = existing.get((metric, arm, epoch))
                if row is None:
                    row = ArmMetricRow(
                        experiment_id=exp.id, metric=metric, arm=arm, epoch=epoch, n=0, s=0.0, ss=0.0
                    )
                    s.add(row)
                    existing[(metric, arm, epoch)] = row
                row.n += int(n)
                row.s += float(total)
                row.ss += float(squares)

    @staticmethod
    def _count_assigned(s: Session, exp: ExperimentRow) -> None:
        """New units per arm of the current and the previous epoch, counted at serve time as the
        SRM check needs (the previous one again for decisions the batched writer stored late):
        decisions without a unit, and units by their first epoch."""
        epochs = [e for e in (exp.epoch - 1, exp.epoch) if e >= 0]
        counts: dict[tuple[int, int], int] = {}
        for arm, epoch, n in s.execute(
            select(DecisionRow.arm, DecisionRow.epoch, func.count(DecisionRow.id))
            .where(
                DecisionRow.experiment_id == exp.id,
                DecisionRow.epoch.in_(epochs),
                DecisionRow.unit_id.is_(None),
            )
            .group_by(DecisionRow.arm, DecisionRow.epoch)
        ).all():
            if arm is not None and epoch is not None:
                counts[(arm, epoch)] = counts.get((arm, epoch), 0) + int(n)
        for arm, epoch, n in s.execute(
            select(UnitRow.arm, UnitRow.first_epoch, func.count())
            .where(UnitRow.experiment_id == exp.id, UnitRow.first_epoch.in_(epochs))
            .group_by(UnitRow.arm, UnitRow.first_epoch)
        ).all():
            counts[(arm, epoch)] = counts.get((arm, epoch), 0) + int(n)
        rows = {
            (r.arm, r.epoch): r
            for r in s.scalars(
                select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id, ArmEpochRow.epoch.in_(epochs))
            )
        }
        for key in set(counts) | set(rows):
            row = rows.get(key)
            if row is None:
                row = ArmEpochRow(
                    experiment_id=exp.id, arm=key[0], epoch=key[1], assigned=0, n=0, s=0.0, ss=0.0
                )
                s.add(row)
            row.assigned = counts.get(key, 0)
        s.flush()

    # -- the data the policy reads ------------------------------------------------------------
    def _epoch_data(
        self, s: Session, exp: ExperimentRow, k: int, policy: Policy, now: float
    ) -> stats.EpochData:
        e = exp.epoch + 1
        cells = [
            (r.arm, r.epoch, r.n, r.s, r.ss, r.assigned)
            for r in s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))
        ]
        weights = [
            (ep.idx, ep.weights) for ep in s.scalars(select(EpochRow).where(EpochRow.experiment_id == exp.id))
        ]
        base = stats.EpochData.from_cells(k, e, cells, weights)
        caps = (exp.policy_state or {}).get("metric_caps") or {}
        metrics: dict[str, stats.MetricData] = {}
        calls = self._call_sums(s, exp)
        for metric in tracked_metrics(exp, policy):
            rows = [
                (r.arm, r.epoch, r.n, r.s, r.ss, 0)
                for r in s.scalars(
                    select(ArmMetricRow).where(
                        ArmMetricRow.experiment_id == exp.id, ArmMetricRow.metric == metric
                    )
                )
            ]
            merged: dict[tuple[int, int], list[float]] = {}
            for arm, epoch, cn, cs, css, _ in [*rows, *calls.get(metric, [])]:
                _add(merged, (arm, epoch), (cn, cs, css))
            sums = stats.EpochData.from_cells(
                k, e, [(a, ep, v[0], v[1], v[2], 0.0) for (a, ep), v in merged.items()], []
            )
            if sums.n.sum() > 0:
                metrics[metric] = stats.MetricData(n=sums.n, s=sums.s, ss=sums.ss, cap=caps.get(metric))
        return stats.EpochData(
            n=base.n,
            s=base.s,
            ss=base.ss,
            assigned=base.assigned,
            weights=base.weights,
            feedback=self._feedback_counts(s, exp, k, policy, now),
            metrics=metrics or None,
        )

    @staticmethod
    def _call_sums(s: Session, exp: ExperimentRow) -> dict[str, list[tuple[Any, ...]]]:
        """The built-in metrics of the gateway's own calls, from its per-arm, per-epoch sums
        (`calls.py`): they join the sums of the same metrics sent as feedback."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        for r in s.scalars(select(CallStatsRow).where(CallStatsRow.experiment_id == exp.id)):
            out.setdefault("cost_usd", []).append((r.arm, r.epoch, r.cost_n, r.cost_sum, r.cost_ss, 0))
            out.setdefault("latency_ms", []).append((r.arm, r.epoch, r.calls, r.latency_sum, r.latency_ss, 0))
            out.setdefault("error", []).append((r.arm, r.epoch, r.calls, r.errors, r.errors, 0))
        return out

    @staticmethod
    def _feedback_counts(
        s: Session, exp: ExperimentRow, k: int, policy: Policy, now: float
    ) -> stats.FeedbackCounts:
        """Per arm, over decisions two windows old: how many, how many got their primary
        feedback within the window, and how many only after it."""
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

    def _arm_names(self, s: Session, arms: list[ArmRow]) -> list[str]:
        rows = {
            v.id: v
            for v in s.scalars(select(VersionRow).where(VersionRow.id.in_([a.version_id for a in arms])))
        }
        return [f"v{rows[a.version_id].number} ({rows[a.version_id].variant})" for a in arms]

    def _snapshot(
        self,
        exp: ExperimentRow,
        summary: Any,
        data: stats.EpochData,
        policy: Policy,
        names: Sequence[str],
        *,
        reason: str,
        result: Any,
    ) -> dict[str, Any]:
        units = data.n.sum(axis=1)
        new_units = data.assigned.sum(axis=1)
        arms = []
        for i in range(len(summary.mean)):
            arms.append(
                {
                    "mean": _float(summary.mean[i]),
                    "ci_low": _float(summary.ci_low[i]),
                    "ci_high": _float(summary.ci_high[i]),
                    "p_best": _float(summary.p_best[i]),
                    "expected_loss": _float(summary.expected_loss[i]),
                    "p_beats_control": _float(summary.p_beats_control[i]),
                    "sd": _float(summary.sd[i]),
                    "units": int(units[i]) if i < units.size else 0,
                    "new_units": int(new_units[i]) if i < new_units.size else 0,
                }
            )
        state = result.state if result is not None else stats.PolicyState.from_dict(exp.policy_state or {})
        # A report figure, not a stopping input: a fixed seed keeps it stable between refreshes.
        remaining = stats.value_remaining(summary.mean, summary.sd, rng=stats.new_rng(exp.id))
        return {
            "arms": arms,
            "reason": reason,
            "srm_p": _float(summary.srm_p),
            "value_remaining": _float(remaining),
            "srm_alarm": bool(state.srm_alarm),
            "checks_done": int(state.checks_done),
            "flags": safety_flags(state, summary, data, names),
            "metrics": metric_report(data),
            "guardrails": (
                _guardrails(result.guardrails)
                if result is not None
                else (exp.snapshot or {}).get("guardrails", [])
            ),
            "stop_reason": (
                None if result is None or result.stop_reason is None else str(result.stop_reason)
            ),
            "threshold": None if result is None else _float(result.threshold),
            "at": self.ctx.now(),
        }


def safety_flags(
    state: stats.PolicyState, summary: Any, data: stats.EpochData, names: Sequence[str]
) -> list[dict[str, Any]]:
    """The raised safety flags, each with its sentence and the counts behind it."""
    out: list[dict[str, Any]] = []
    if state.srm_alarm:
        out.append(
            {
                "flag": "srm",
                "sentence": (
                    "sample ratio mismatch: new units per arm do not match the weights in force; "
                    "promotion is frozen (check that every arm's decisions are recorded)"
                ),
                "evidence": {
                    "p_value": _float(summary.srm_p),
                    "new_units": {
                        names[i] if i < len(names) else str(i): int(v)
                        for i, v in enumerate(data.assigned.sum(axis=1))
                    },
                },
            }
        )
    if state.feedback_alarm:
        fb = data.feedback
        evidence: dict[str, Any] = {}
        if fb is not None:
            for i in range(len(fb.eligible)):
                evidence[names[i] if i < len(names) else str(i)] = {
                    "decisions": int(fb.eligible[i]),
                    "on_time": int(fb.on_time[i]),
                    "late": int(fb.late[i]),
                }
        out.append({"flag": "feedback", "sentence": state.feedback_reason, "evidence": evidence})
    return out


def metric_report(data: stats.EpochData) -> dict[str, list[dict[str, Any]]]:
    """Per metric, per arm: {mean, ci_low, ci_high, n}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for metric, md in sorted((data.metrics or {}).items()):
        out[metric] = [
            {"mean": _float(e.mean), "ci_low": _float(e.ci_low), "ci_high": _float(e.ci_high), "n": e.n}
            for e in stats.metric_estimates(md)
        ]
    return out


def _guardrails(verdicts: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "arm": v.arm,
            "metric": v.metric,
            "state": str(v.state),
            "diff": _float(v.diff),
            "diff_low": _float(v.diff_low),
            "diff_high": _float(v.diff_high),
            "relative": v.relative,
            "sentence": v.sentence,
        }
        for v in verdicts
    ]


def _add(cells: Cells, key: tuple[int, int], values: tuple[float, float, float]) -> None:
    cell = cells.setdefault(key, [0.0, 0.0, 0.0])
    for i, v in enumerate(values):
        cell[i] += float(v)


def _cell(t: tuple[float, float, float]) -> dict[str, float | None]:
    n, sm, _ = t
    return {"n": n, "mean": _float(sm / n) if n else None}


def _float(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _floats(xs: Any) -> list[float | None]:
    return [_float(x) for x in xs]


def _sums(values: Sequence[float]) -> tuple[float, float, float]:
    """Count, sum and sum of squares."""
    return float(len(values)), float(sum(values)), float(sum(v * v for v in values))
