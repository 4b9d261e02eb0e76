"""The guarded rollout: after a challenger's promotion the previous production keeps a holdout
share; at each epoch boundary of the holdout, `stats.holdout_step` rolls production back, ends the
holdout or keeps it going.

Entering the holdout is a conditional update from `running`, like every end of an experiment, so
it happens once even with several servers; the rollback and the end go through
`Experiments.finish`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import ArmRow, DecisionRow, ExperimentRow, FeedbackRow, PromptRow, VersionRow
from promptops.db.queries import rowcount
from promptops.domain import PRODUCTION, ExperimentStatus, HoldoutAction, Policy
from promptops.errors import ExperimentStateError
from promptops.services.context import Context
from promptops.services.experiments import Experiments, open_epoch
from promptops.services.registry import write_audit


class GuardedRollout:
    """Enters, tests and ends the holdout phase of an experiment."""

    def __init__(self, ctx: Context, experiments: Experiments) -> None:
        self.ctx = ctx
        self.experiments = experiments

    def enter(
        self,
        s: Session,
        exp: ExperimentRow,
        *,
        winner: int,
        old: int,
        weights: Sequence[float],
        actor: str,
        reason: str,
        evidence: dict[str, Any],
    ) -> None:
        """Promote a challenger into the guarded rollout once: production moves to it, the
        previous production keeps its holdout share, and the experiment keeps routing."""
        now = self.ctx.now()
        ex = self.experiments
        arms = ex.arms(s, exp.id)
        holdout = {
            "new": winner,
            "old": old,
            "started_at": now,
            "decisions_at_start": sum(a.decisions for a in arms),
        }
        res = s.execute(
            update(ExperimentRow)
            .where(ExperimentRow.id == exp.id, ExperimentRow.status == ExperimentStatus.RUNNING)
            .values(status=ExperimentStatus.HOLDOUT, winner_arm=winner, holdout=holdout, end_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) != 1:
            raise ExperimentStateError(f"experiment {exp.id} is no longer running")
        s.refresh(exp)
        p = s.get(PromptRow, exp.prompt_id)
        version = s.get(VersionRow, arms[winner].version_id)
        assert p is not None and version is not None
        write_audit(
            s,
            at=now,
            actor=actor,
            action="experiment.holdout",
            prompt_id=p.id,
            experiment_id=exp.id,
            message=(
                f"experiment {exp.id} promoted v{version.number}: {reason}; "
                f"v{ex.number(s, arms[old].version_id)} keeps a holdout share"
            ),
            details={
                "reason": reason,
                "winner_version": version.number,
                "evidence": evidence,
                "holdout": holdout,
            },
        )
        ex.registry.set_label(
            s,
            p,
            version,
            PRODUCTION,
            actor=actor,
            reason=f"experiment {exp.id}: {reason}",
            experiment_id=exp.id,
            details={"evidence": evidence},
        )
        open_epoch(s, exp, now, weights, {"holdout": True})

    @staticmethod
    def previous_production(s: Session, exp: ExperimentRow, arms: list[ArmRow]) -> int:
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

    def step(
        self, s: Session, exp: ExperimentRow, policy: Policy, now: float, *, decisions_total: int, actor: str
    ) -> bool:
        """At an epoch boundary of the holdout: roll back, end it, or keep going."""
        hold = exp.holdout or {}
        new, old = int(hold["new"]), int(hold["old"])
        # As the simulator does (stats.rollout): the previous production's own most recent
        # matured outcomes, before the promotion included, against the new version's most recent
        # holdout outcomes over each window of the scan.
        scan = stats.rollback_scan(policy)
        old_values = matured_values(s, exp, policy, arm=old, since=None, limit=stats.rollback_window(policy))
        new_values = matured_values(s, exp, policy, arm=new, since=float(hold["started_at"]), limit=scan[0])
        scans = [_sums(new_values[:size]) for size in scan]
        old_sums = _sums(old_values)
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
                "window": {"new": _cell(scans[0]), "old": _cell(old_sums)},
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
                actor=actor,
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
                actor=actor,
                reason=verdict.reason,
                evidence=evidence,
            )
            return True
        open_epoch(s, exp, now, exp.weights, {"holdout": True, "p_old_better": verdict.p_old_better})
        return True


def matured_values(
    s: Session, exp: ExperimentRow, policy: Policy, *, arm: int, since: float | None, limit: int
) -> list[float]:
    """One arm's most recent counted outcomes (newest first), as maturation values them."""
    window = policy.attribution_window_hours * 3600
    fb = FeedbackRow
    where = [DecisionRow.experiment_id == exp.id, DecisionRow.counted_in > 0, DecisionRow.arm == arm]
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


def _cell(t: tuple[float, float, float]) -> dict[str, float | None]:
    n, sm, _ = t
    return {"n": n, "mean": _float(sm / n) if n else None}


def _float(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _sums(values: Sequence[float]) -> tuple[float, float, float]:
    """Count, sum and sum of squares."""
    return float(len(values)), float(sum(values)), float(sum(v * v for v in values))
